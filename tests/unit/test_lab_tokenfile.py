"""The lab token file: locked read-modify-write shared by every writer, read by istiod_lite."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from istiod_lite.ca.auth import load_lab_tokens
from meshctl.lab.errors import LabError
from meshctl.lab.tokenfile import (
    TokenEntries,
    drop_expired,
    drop_pod_tokens,
    ensure_lab_token_file,
    pod_token_entry,
    update_lab_tokens,
)

NOW = 1_800_000_000.0


def entry(uid: str, expires: float) -> dict[str, Any]:
    return pod_token_entry(
        pod="apps/web-1", uid=uid, node="node1", service_account="web", audience="istio-ca", expires=expires
    )


def test_writers_in_parallel_keep_each_others_tokens(tmp_path: Path) -> None:
    path = tmp_path / "mesh" / "tokens.yaml"

    def add(i: int) -> None:
        def change(entries: TokenEntries) -> bool:
            entries[f"tok-{i}"] = entry(f"uid-{i}", NOW + 600)
            return True

        update_lab_tokens(path, change)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(add, range(64)))
    parsed = load_lab_tokens(path, trust_domain="cluster.local")
    assert sorted(parsed) == sorted(f"tok-{i}" for i in range(64))
    caller, expires = parsed["tok-7"]
    assert (caller.identity.namespace, caller.identity.service_account, caller.node) == (
        "apps",
        "web",
        "node1",
    )
    assert expires == NOW + 600
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_no_change_no_write_and_a_bad_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    assert update_lab_tokens(path, lambda entries: False) is False
    assert not path.exists()
    path.write_text("[a list]\n")
    with pytest.raises(LabError, match="not a mapping"):
        update_lab_tokens(path, lambda entries: True)
    assert path.read_text() == "[a list]\n"


@pytest.mark.parametrize(
    ("entries", "left", "changed"),
    [
        (
            {"a": entry("u1", NOW), "b": entry("u2", NOW), "n": {"node": "n1", "identity": "x/y"}},
            ["b", "n"],
            True,
        ),
        ({"a": entry("u1", NOW), "b": entry("u1", NOW + 1)}, [], True),
        ({"n": {"node": "n1", "identity": "x/y"}}, ["n"], False),
    ],
)
def test_drop_pod_tokens(entries: TokenEntries, left: list[str], changed: bool) -> None:
    assert drop_pod_tokens(entries, "u1") is changed
    assert sorted(entries) == left


@pytest.mark.parametrize(
    ("expires", "gone"),
    [(NOW - 1, True), (NOW, True), (NOW + 1, False)],
)
def test_drop_expired_keeps_live_and_unexpiring_tokens(expires: float, gone: bool) -> None:
    entries: TokenEntries = {"pod": entry("u1", expires), "node": {"node": "n1", "identity": "x/y"}}
    assert drop_expired(entries, NOW) is gone
    assert sorted(entries) == (["node"] if gone else ["node", "pod"])


def test_the_token_file_exists_from_the_start_and_is_not_emptied_later(tmp_path: Path) -> None:
    path = tmp_path / "mesh" / "tokens.yaml"
    ensure_lab_token_file(path)
    assert yaml.safe_load(path.read_text()) == {} and path.stat().st_mode & 0o777 == 0o600
    update_lab_tokens(path, lambda entries: bool(entries.setdefault("t", {"node": "n", "identity": "a/b"})))
    ensure_lab_token_file(path)
    assert list(yaml.safe_load(path.read_text())) == ["t"]
