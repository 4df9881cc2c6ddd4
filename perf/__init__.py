"""Benchmarks: side by side against the direct path and Envoy, reported as ratios."""
