"""The Foundation demo (``make demo``): a real istiod_lite process issues a verified certificate."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from meshctl.demo import DemoError, IstiodProcess, foundation_demo, prepare_workspace


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_demo_prints_a_verified_certificate_and_cleans_up(tmp_path: Path) -> None:
    out = io.StringIO()
    await foundation_demo(out=out, workdir=tmp_path)
    text = out.getvalue()
    assert "SPIFFE identity : spiffe://cluster.local/ns/demo/sa/server" in text
    assert re.search(
        r"verified against the root [0-9A-F:]+\.\.\.: spiffe://cluster\.local/ns/demo/sa/server", text
    )
    assert re.search(r"serial\s+: [0-9a-f]+", text)
    assert "TTL             : 86400 s requested" in text
    assert "refused, as it must be: PERMISSION_DENIED" in text
    assert text.rstrip().endswith("== demo OK ==")
    stopped = re.search(r"stopped istiod-lite \(pid (\d+), exit status 0\)", text)
    assert stopped is not None
    assert not _alive(int(stopped.group(1)))
    assert not os.listdir(tmp_path), "the workspace is removed"


def test_the_ca_demo_command_stops_istiod_with_sigterm_not_sigkill() -> None:
    """``python -m meshctl.demo ca`` as a user runs it (under uvloop, whose TLS shutdown of the
    demo's closed channel lingers): istiod-lite must exit 0 on SIGTERM, not be killed (-9)."""
    done = subprocess.run(
        [sys.executable, "-m", "meshctl.demo", "ca"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"stopped istiod-lite \(pid \d+, exit status 0\)", done.stdout), done.stdout


async def test_a_server_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    ws = prepare_workspace(tmp_path)
    ws.tokens_file.write_text("- not a mapping\n", encoding="utf-8")
    istiod = IstiodProcess(ws, io.StringIO())
    await istiod.start()
    try:
        with pytest.raises(
            DemoError, match=r"exited with status 2 while starting(.|\n)*not a mapping"
        ) as caught:
            await istiod.wait_ready(deadline=20.0)
        assert "fix what the log names" in str(caught.value)
    finally:
        await istiod.stop()
    assert not _alive(istiod.pid)
