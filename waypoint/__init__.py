"""waypoint."""
