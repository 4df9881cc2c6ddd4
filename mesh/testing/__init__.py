"""Test kit: fake clock, builders, protocol pairs, in-process fakes. Production code never imports it."""
