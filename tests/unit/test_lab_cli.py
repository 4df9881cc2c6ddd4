"""The meshctl command line without a running lab: parsing, help, and readable errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshctl.cli import build_parser, main

BAD = """apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: demo}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: c, command: [sleep, 10]}]
"""


def test_every_lab_subcommand_is_registered() -> None:
    parser = build_parser()
    commands = [
        ["up", "-f", "x.yaml", "--nodes", "3"],
        ["apply", "-f", "x"],
        ["delete", "-f", "x"],
        ["status"],
        ["exec", "demo/client", "--", "curl", "-s", "http://server/"],
        ["logs", "-f", "p"],
        ["down"],
    ]
    for argv in commands:
        args = parser.parse_args(["lab", *argv, "--state", "/tmp/s"] if argv[0] != "exec" else ["lab", *argv])
        assert callable(args.func)
    args = parser.parse_args(["lab", "exec", "demo/client", "--", "curl", "-s"])
    assert args.command[-2:] == ["curl", "-s"]


def test_bad_yaml_is_reported_with_file_object_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    assert main(["lab", "up", "--state", str(tmp_path / "state"), "-f", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: Deployment demo/web (document 1): field spec.template.spec.containers[0].command" in err
    assert not (tmp_path / "state").exists()  # nothing was started


@pytest.mark.parametrize("command", [["status"], ["apply", "-f", "x.yaml"], ["logs", "p"]])
def test_commands_need_a_running_lab(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    (tmp_path / "x.yaml").write_text("")
    argv = [
        "lab",
        command[0],
        "--state",
        str(tmp_path),
        *[str(tmp_path / c) if c.endswith(".yaml") else c for c in command[1:]],
    ]
    assert main(argv) == 1
    assert "no lab is running" in capsys.readouterr().err


def test_a_state_path_that_is_a_file_gets_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    state.write_text("not a directory")
    assert main(["lab", "status", "--state", str(state)]) == 1
    err = capsys.readouterr().err
    assert "Not a directory" in err and "check the path (e.g. --state)" in err


def test_zc_level_outside_the_log_view_says_where_it_belongs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ztunnel-config", "workloads", "--level", "debug", "--admin", "127.0.0.1:1"]) == 1
    err = capsys.readouterr().err
    assert "--level goes with the log view, not workloads" in err and "meshctl zc log --level debug" in err


def test_zc_log_without_a_ztunnel_says_what_to_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ztunnel-config", "log", "--admin", "127.0.0.1:1"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the ztunnel admin endpoint 127.0.0.1:1" in err and "is ztunnel running there?" in err
