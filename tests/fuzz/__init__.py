"""fuzz tests."""
