"""component tests."""
