"""istiod_lite.translate."""
