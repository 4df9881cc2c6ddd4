"""The shared core of the mesh: pure models, identity, policy and protocol engines (no I/O)."""
