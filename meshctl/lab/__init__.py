"""The lab: a Kubernetes-shaped cluster on one machine, nodes and pods as network namespaces.

    from meshctl.lab import Lab, load_objects
    lab = Lab("/tmp/state", lab_id="t1")
    lab.up(load_objects("samples/cluster.yaml"))
    lab.exec_in_pod("demo/client", ["curl", "-s", "http://server/"])
    lab.down()

See docs/lab-state.md for the state directory, the lab's API to other components.
"""

from meshctl.lab._meta import pod_ready
from meshctl.lab.api import Lab, load_objects
from meshctl.lab.errors import CniError, LabError, LabNotRunningError, LabObjectError

__all__ = ["CniError", "Lab", "LabError", "LabNotRunningError", "LabObjectError", "load_objects", "pod_ready"]
