"""meshctl.lab."""
