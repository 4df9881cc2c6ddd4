"""mesh.hbone."""
