"""``meshctl analyze``: each seeded mistake in tests/fixtures/analyze is found with its code, and
nothing else; the base world and the samples are silent; the CLI's exit code and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mesh.errors import MeshError
from meshctl.analysis import analyze
from meshctl.analyze import load_files, overlay
from meshctl.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "analyze"
REPO = Path(__file__).resolve().parents[2]
CODES = sorted(p.stem for p in FIXTURES.glob("MSH*.yaml"))


def test_there_are_at_least_twelve_checks() -> None:
    assert len(CODES) >= 12


def test_the_base_world_and_the_samples_are_silent() -> None:
    assert analyze(load_files([str(FIXTURES / "base.yaml")])) == []
    assert analyze(load_files([str(REPO / "samples")])) == []


@pytest.mark.parametrize("code", CODES)
def test_each_seeded_mistake_is_found_with_its_code(code: str) -> None:
    findings = analyze(load_files([str(FIXTURES / "base.yaml"), str(FIXTURES / f"{code}.yaml")]))
    assert {f.code for f in findings} == {code}, [f.to_json() for f in findings]
    assert all(f.message and f.fix and f.resource for f in findings)


def test_the_cli_exits_1_on_errors_and_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            ["analyze", "-f", str(FIXTURES / "base.yaml"), "-f", str(FIXTURES / "MSH0104.yaml"), "-o", "json"]
        )
        == 1
    )
    (finding,) = json.loads(capsys.readouterr().out)
    assert (
        finding["code"] == "MSH0104" and finding["severity"] == "Error" and "waypoint apply" in finding["fix"]
    )
    assert (
        main(["analyze", "-f", str(FIXTURES / "base.yaml"), "-f", str(FIXTURES / "MSH0106.yaml")]) == 0
    )  # Info only
    assert "MSH0106" in capsys.readouterr().out


def test_a_file_that_is_not_yaml_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [unclosed\n")
    with pytest.raises(MeshError, match=r"bad\.yaml is not valid YAML"):
        load_files([str(bad)])


def test_live_objects_with_files_applied_on_top() -> None:
    """``--live -f``: a file's object replaces the live one of the same kind, namespace and name (a
    namespace-less namespaced object lands in ``default``, as kubectl applies it), or is added."""
    live = [
        {"kind": "Namespace", "metadata": {"name": "shop"}},
        {"kind": "PeerAuthentication", "metadata": {"name": "default", "namespace": "default"}, "spec": {}},
        {"kind": "Pod", "metadata": {"name": "web", "namespace": "shop"}},
    ]
    strict = {
        "kind": "PeerAuthentication",
        "metadata": {"name": "default"},
        "spec": {"mtls": {"mode": "STRICT"}},
    }
    labelled = {
        "kind": "Namespace",
        "metadata": {"name": "shop", "labels": {"istio.io/dataplane-mode": "ambient"}},
    }
    added = {"kind": "PeerAuthentication", "metadata": {"name": "default", "namespace": "shop"}, "spec": {}}
    assert overlay(live, [strict, labelled, added]) == [labelled, strict, live[2], added]


def test_a_kubectl_list_export_gives_its_items(tmp_path: Path) -> None:
    """``kubectl get ns,pods -A -o yaml`` writes one ``List``; analyze reads the objects in it."""
    exported = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"kind": "Namespace", "metadata": {"name": "shop"}},
            {"kind": "Pod", "metadata": {"name": "a"}},
        ],
    }
    (tmp_path / "live.yaml").write_text(yaml.safe_dump(exported))
    assert load_files([str(tmp_path / "live.yaml")]) == exported["items"]
