"""The lab's typed errors: each says what is wrong and what to do next."""

from __future__ import annotations

from mesh.errors import ConfigError, MeshError

__all__ = ["CniError", "LabError", "LabNetworkError", "LabNotRunningError", "LabObjectError"]


class LabError(MeshError):
    """Something about the lab as a whole went wrong (state, daemon, timeouts)."""


class LabNotRunningError(LabError):
    """A command needs a running lab and there is none."""

    def __init__(self, state_dir: str) -> None:
        super().__init__(
            f"no lab is running with state directory {state_dir}",
            hint="start one with 'meshctl lab up' (or pass --state / MESH_LAB_STATE for another lab)",
        )


class LabObjectError(ConfigError):
    """An object given to the lab is invalid: names the file, the object and the field."""

    def __init__(self, *, source: str, obj: str, field: str, problem: str, hint: str = "") -> None:
        self.source = source
        self.obj = obj
        self.field = field
        self.problem = problem
        where = f"{source}: {obj}" if obj else source
        field_part = f": field {field}" if field else ""
        super().__init__(f"{where}{field_part}: {problem}", hint=hint)


class LabNetworkError(LabError):
    """A network command (ip, iptables-restore, sysctl) failed."""


class CniError(LabError):
    """A chained CNI plugin failed; the pod stays Pending and is retried with backoff."""

    def __init__(self, *, plugin: str, command: str, code: int, msg: str) -> None:
        self.plugin = plugin
        self.command = command
        self.code = code
        self.msg = msg
        super().__init__(
            f"CNI plugin {plugin!r} failed {command} (code {code}): {msg}",
            hint="fix the plugin or its config in <state>/cni/; the lab retries with backoff",
        )
