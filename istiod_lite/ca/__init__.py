"""istiod_lite.ca."""
