"""``python -m ztunnel.workers``: one ztunnel worker process (started by ztunnel ``--workers N``)."""

from __future__ import annotations

import sys


def run() -> None:
    """Starts a worker without ``rich``, as ``ztunnel`` itself starts (see :mod:`ztunnel.__main__`)."""
    sys.modules.setdefault("rich", None)  # type: ignore[arg-type]  # None: "import rich" fails
    from ztunnel.workers.process import main  # noqa: PLC0415 (after the line above, on purpose)

    sys.exit(main())


if __name__ == "__main__":
    run()
