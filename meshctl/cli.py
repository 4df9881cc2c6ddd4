"""The ``meshctl`` command line.

Each command lives in its own module with a ``register(subparsers)`` function that adds its
subparser and sets ``func`` (``args -> exit code``). Add a command by listing its module in
:data:`COMMAND_MODULES` (e.g. ``meshctl.proxy_status``, ``meshctl.ztunnel_config``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from mesh.errors import MeshError

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

COMMAND_MODULES: tuple[str, ...] = (
    "meshctl.lab.cli",
    "meshctl.ztunnel_config",
    "meshctl.proxy_status",
    "meshctl.waypoint",
    "meshctl.proxy_config",
    "meshctl.dashboard.cli",
    "meshctl.canary",
    "meshctl.analyze",
    "meshctl.install",
)


def build_parser(modules: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    """The ``meshctl`` parser with every command module registered."""
    parser = argparse.ArgumentParser(
        prog="meshctl", description="Operate the ambient mesh and its local lab."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in modules:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``meshctl`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except MeshError as exc:
        print(f"meshctl: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a path that is not what the command expects, or missing permissions
        where = f" ({exc.filename})" if exc.filename else ""
        print(
            f"meshctl: error: {exc.strerror or exc}{where}; check the path (e.g. --state) and run as root",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("meshctl: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
