"""istiod_lite.sources."""
