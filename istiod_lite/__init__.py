"""istiod_lite."""
