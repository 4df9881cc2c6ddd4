"""``meshctl dashboard``: a service-graph web page on the mesh's standard metrics."""
