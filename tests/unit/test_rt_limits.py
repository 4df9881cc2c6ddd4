"""The open-files limit a proxy raises for itself at start."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    """In a child process (limits are per process) that starts with a low soft limit."""
    code = (
        "import json, resource\n"
        "from mesh.rt.limits import raise_open_files_limit\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "print(json.dumps([raise_open_files_limit(), hard, resource.getrlimit(resource.RLIMIT_NOFILE)[0]]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    (before, after), hard, now = json.loads(done.stdout)
    assert before == 256 and after == now
    assert hard in (now, -1)  # -1: RLIM_INFINITY, then the kernel's nr_open
    assert now > 256
