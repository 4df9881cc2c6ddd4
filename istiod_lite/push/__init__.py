"""istiod_lite.push."""
