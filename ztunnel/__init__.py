"""ztunnel."""
