"""The node agent (CNI role)."""
