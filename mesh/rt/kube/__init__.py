"""The Kubernetes API for the components that read it (istiod_lite, the node agent): list/watch
informers and the RBAC rules their calls need."""
