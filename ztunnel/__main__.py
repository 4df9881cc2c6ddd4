"""The ztunnel process entry (``ztunnel`` console script, ``python -m ztunnel``).

structlog imports ``rich``, when it is installed, for pretty console tracebacks; ztunnel logs JSON and
never uses them, and in a development install (``rich`` comes with import-linter) that import alone
costs the data plane about 5 MB of memory. The production image does not have ``rich``; this makes
every install behave like it. It must run before anything imports structlog.
"""

from __future__ import annotations

import sys


def run() -> None:
    """Starts ztunnel without ``rich`` (see the module docstring)."""
    sys.modules.setdefault("rich", None)  # type: ignore[arg-type]  # None: "import rich" fails
    from ztunnel.app import main  # noqa: PLC0415 (after the line above, on purpose)

    main()


if __name__ == "__main__":
    run()
