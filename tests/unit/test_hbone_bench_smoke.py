"""A short smoke of perf/bench_hbone_engine.py: both engine pairs move every byte and a table prints."""

from __future__ import annotations

import pytest

from perf import bench_hbone_engine as bench


@pytest.mark.parametrize("frame_size", [2**20, 16_384])
def test_both_engine_pairs_move_every_byte(frame_size: int) -> None:
    ours = bench.run_ours(3 * 2**20 + 17, frame_size=frame_size)
    theirs = bench.run_h2(2**20 + 17, frame_size=frame_size)
    assert ours.nbytes == 3 * 2**20 + 17 and theirs.nbytes == 2**20 + 17
    assert ours.mb_per_s > 0 and theirs.cpu_s_per_gb > 0


def test_the_benchmark_prints_its_table(capsys: pytest.CaptureFixture[str]) -> None:
    results = bench.main(["--mib", "1", "--repeats", "1"])
    assert set(results) == {"ours 1 MiB frames", "h2 1 MiB frames", "ours 16 KiB frames", "h2 16 KiB frames"}
    assert all(r.nbytes == 2**20 for r in results.values())
    out = capsys.readouterr().out
    assert "mesh.h2, 1 MiB frames" in out and "h2 4.x, 16 KiB frames" in out
