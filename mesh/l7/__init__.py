"""The waypoint's L7 decisions, pure, from Envoy v3 config (the ``xds-protos`` package's types), with
Envoy's semantics so the same config means the same thing to a real Envoy:

- ``compile_routes(RouteConfiguration) -> Router``; ``Router.route(Request, rng) -> RouteDecision |
  None`` (virtual host by authority, first matching route, weighted cluster pick, rewrite,
  redirect, direct response, timeout, retry policy, fault, header edits, mirrors);
- ``decide_fault(FaultConfig, rng) -> FaultDecision`` (delay and abort, each with its percentage);
- ``should_retry(RetryConfig, Outcome, retries_done)`` and ``backoff(...)``;
- ``pick_endpoint`` in ``balancing`` (round robin, least request, random).

Randomness comes from the caller's ``random.Random``; nothing here does I/O or reads a clock.
"""
