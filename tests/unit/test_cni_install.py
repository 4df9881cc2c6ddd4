"""The CNI installer on real directories: which config is the primary one, what is written into it,
that nothing else is touched, that a malformed config is left alone with a clear error, and that
uninstalling gives back what was there."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from mesh.testing.clock import FakeClock
from meshctl.lab.cni import default_conflist, load_chain
from ztunnel.cni.cniconf import PLUGIN_TYPE, CniConfigError, plan_install, plan_uninstall, primary_config
from ztunnel.cni.install import SHEBANG, CniInstaller

SOCKET = "/var/run/ztunnel/pluginevent.sock"
OURS = {"type": PLUGIN_TYPE, "agent_socket": SOCKET}
CALICO = {"type": "calico", "ipam": {"type": "calico-ipam"}, "log_level": "info"}
PORTMAP = {"type": "portmap", "capabilities": {"portMappings": True}}
CONFLIST = {"cniVersion": "0.3.1", "name": "k8s-pod-network", "plugins": [CALICO, PORTMAP]}
BRIDGE_CONF = {"cniVersion": "0.4.0", "name": "mynet", "type": "bridge", "bridge": "cni0"}


def installer(tmp_path: Path, clock: FakeClock | None = None) -> CniInstaller:
    return CniInstaller(
        conf_dir=tmp_path / "net.d",
        bin_dir=tmp_path / "bin",
        agent_socket=SOCKET,
        clock=clock or FakeClock(),
        log=structlog.get_logger(),
    )


def write(tmp_path: Path, files: dict[str, Any], *, mode: int = 0o644) -> Path:
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir(exist_ok=True)
    (tmp_path / "bin").mkdir(exist_ok=True)
    for name, content in files.items():
        path = conf_dir / name
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        path.chmod(mode)
    return conf_dir


def contents(conf_dir: Path) -> dict[str, Any]:
    """Every file of the directory, parsed when it is JSON."""
    result: dict[str, Any] = {}
    for path in sorted(conf_dir.iterdir()):
        text = path.read_text()
        try:
            result[path.name] = json.loads(text)
        except ValueError:
            result[path.name] = text
    return result


@pytest.mark.parametrize(
    ("files", "after"),
    [
        pytest.param(
            {"10-calico.conflist": CONFLIST},
            {"10-calico.conflist": {**CONFLIST, "plugins": [CALICO, PORTMAP, OURS]}},
            id="appended-to-a-conflist",
        ),
        pytest.param(
            {"10-bridge.conf": BRIDGE_CONF},
            {"10-bridge.conflist": {"name": "mynet", "cniVersion": "0.4.0", "plugins": [BRIDGE_CONF, OURS]}},
            id="a-conf-becomes-a-conflist",
        ),
        pytest.param(
            {
                "10-calico.conflist": {
                    **CONFLIST,
                    "plugins": [CALICO, {**OURS, "agent_socket": "/old"}, PORTMAP],
                }
            },
            {"10-calico.conflist": {**CONFLIST, "plugins": [CALICO, PORTMAP, OURS]}},
            id="a-stale-entry-is-replaced",
        ),
        pytest.param(
            {"10-calico.conflist": {**CONFLIST, "plugins": [CALICO, OURS, PORTMAP, OURS]}},
            {"10-calico.conflist": {**CONFLIST, "plugins": [CALICO, PORTMAP, OURS]}},
            id="duplicates-become-one",
        ),
        pytest.param(
            {"20-b.conflist": CONFLIST, "10-a.conflist": CONFLIST, "15-c.conf": BRIDGE_CONF},
            {
                "10-a.conflist": {**CONFLIST, "plugins": [CALICO, PORTMAP, OURS]},
                "15-c.conf": BRIDGE_CONF,
                "20-b.conflist": CONFLIST,
            },
            id="the-first-file-by-name",
        ),
        pytest.param(
            {
                ".00-x.conflist.ztunnel-cni.tmp": CONFLIST,  # an installer's temporary file
                ".01-hidden.conflist": CONFLIST,
                "05-notes.conf.bak": BRIDGE_CONF,
                "30-k8s.conflist": CONFLIST,
            },
            {
                ".00-x.conflist.ztunnel-cni.tmp": CONFLIST,
                ".01-hidden.conflist": CONFLIST,
                "05-notes.conf.bak": BRIDGE_CONF,
                "30-k8s.conflist": {**CONFLIST, "plugins": [CALICO, PORTMAP, OURS]},
            },
            id="hidden-and-other-files-skipped",
        ),
        pytest.param(
            {"10-lab.conflist": default_conflist("lab7")},
            {"10-lab.conflist": {**default_conflist("lab7"), "plugins": [OURS]}},
            id="the-labs-empty-chain",
        ),
    ],
)
def test_install_chains_the_plugin_into_the_primary_config(
    tmp_path: Path, files: dict[str, Any], after: dict[str, Any]
) -> None:
    conf_dir = write(tmp_path, files, mode=0o600)
    inst = installer(tmp_path)
    assert inst.sync() is True
    assert contents(conf_dir) == after
    primary = conf_dir / str(inst.installed_in)
    assert stat.S_IMODE(primary.stat().st_mode) == 0o600  # the mode of the file it came from
    plugin = tmp_path / "bin" / PLUGIN_TYPE
    assert plugin.read_bytes().startswith(SHEBANG) and stat.S_IMODE(plugin.stat().st_mode) == 0o755

    written = {p.name: p.stat().st_mtime_ns for p in [*conf_dir.iterdir(), plugin]}
    assert inst.sync() is True  # idempotent: a second pass writes nothing
    assert {p.name: p.stat().st_mtime_ns for p in [*conf_dir.iterdir(), plugin]} == written


def test_the_labs_chain_reads_the_installed_entry(tmp_path: Path) -> None:
    write(tmp_path, {"10-lab.conflist": default_conflist("lab7")})
    installer(tmp_path).sync()
    assert load_chain(tmp_path / "net.d").plugins == (OURS,)


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("10-a.conflist", '{"name": "k8s", "plugins": [', "not valid JSON"),
        ("10-a.conflist", "[1, 2]", "not a JSON object but list"),
        ("10-a.conflist", '{"plugins": []}', "no 'name' string"),
        ("10-a.conflist", '{"name": "k8s", "plugins": {"type": "calico"}}', "no 'plugins' list"),
        (
            "10-a.conflist",
            '{"name": "k8s", "plugins": [{"type": "calico"}, {}]}',
            "plugins[1] is not an object",
        ),
        ("10-a.conf", json.dumps(CONFLIST), "no 'type' string (a .conf is one plugin; is it a .conflist?)"),
    ],
)
def test_a_malformed_config_is_left_untouched_with_a_clear_error(
    tmp_path: Path, name: str, text: str, problem: str
) -> None:
    conf_dir = write(tmp_path, {name: text, "20-b.conflist": CONFLIST})
    inst = installer(tmp_path)
    with capture_logs() as logs:
        assert inst.sync() is False
    assert contents(conf_dir) == {name: _parsed(text), "20-b.conflist": CONFLIST}  # neither file touched
    assert not inst.installed
    (event,) = [e for e in logs if e["event"] == "cni.config_invalid"]
    assert event["file"] == str(conf_dir / name) and problem in event["error"]
    assert event["log_level"] == "error" and "left as it is" in event["hint"]

    with pytest.raises(CniConfigError, match=rf"CNI config {name}: .*left as it is"):
        plan_install(name, text, OURS)


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def test_it_waits_for_the_primary_config_and_says_so(tmp_path: Path) -> None:
    clock = FakeClock()
    inst = installer(tmp_path, clock)
    write(tmp_path, {})
    with capture_logs() as logs:
        assert inst.sync() is False
        clock.advance(10)
        assert inst.sync() is False  # said once, then every 30 s
        clock.advance(25)
        assert inst.sync() is False
        write(tmp_path, {"10-calico.conflist": CONFLIST})
        assert inst.sync() is True
    assert [(e["event"], e.get("waited_s")) for e in logs if e["event"].startswith("cni.")] == [
        ("cni.plugin_installed", None),
        ("cni.waiting_for_config", 0.0),
        ("cni.waiting_for_config", 35.0),
        ("cni.config_chained", None),
        ("cni.installed", None),
    ]


def test_an_overwritten_config_gets_the_entry_back(tmp_path: Path) -> None:
    conf_dir = write(tmp_path, {"10-calico.conflist": CONFLIST})
    inst = installer(tmp_path)
    inst.sync()
    (conf_dir / "10-calico.conflist").write_text(json.dumps(CONFLIST))  # the primary CNI reinstalls itself
    (tmp_path / "bin" / PLUGIN_TYPE).unlink()
    with capture_logs() as logs:
        assert inst.sync() is True
    assert contents(conf_dir)["10-calico.conflist"]["plugins"] == [CALICO, PORTMAP, OURS]
    assert (tmp_path / "bin" / PLUGIN_TYPE).exists()
    assert {"cni.config_restored", "cni.plugin_installed"} <= {e["event"] for e in logs}


@pytest.mark.parametrize(
    ("files", "after"),
    [
        pytest.param({"10-calico.conflist": CONFLIST}, {"10-calico.conflist": CONFLIST}, id="conflist"),
        pytest.param(
            {"10-bridge.conf": BRIDGE_CONF},
            {"10-bridge.conflist": {"name": "mynet", "cniVersion": "0.4.0", "plugins": [BRIDGE_CONF]}},
            id="a-converted-conf-stays-a-conflist",
        ),
        pytest.param(
            {"10-lab.conflist": default_conflist("lab7")},
            {"10-lab.conflist": default_conflist("lab7")},
            id="the-labs-empty-chain",
        ),
    ],
)
def test_uninstall_gives_back_the_config_and_removes_the_plugin(
    tmp_path: Path, files: dict[str, Any], after: dict[str, Any]
) -> None:
    conf_dir = write(tmp_path, files)
    inst = installer(tmp_path)
    assert inst.sync() is True
    (conf_dir / "20-old.conflist").write_text(
        json.dumps({**CONFLIST, "plugins": [CALICO, OURS]})
    )  # earlier primary
    (conf_dir / "30-broken.conflist").write_text("{")
    with capture_logs() as logs:
        changed = inst.uninstall()
    assert changed == [*after, "20-old.conflist"]
    assert contents(conf_dir) == {
        **after,
        "20-old.conflist": {**CONFLIST, "plugins": [CALICO]},
        "30-broken.conflist": "{",
    }
    assert not (tmp_path / "bin" / PLUGIN_TYPE).exists() and not inst.installed
    skipped = [e for e in logs if e["event"] == "cni.uninstall_skipped"]
    assert [e["file"] for e in skipped] == [str(conf_dir / "30-broken.conflist")]
    assert not [p for p in conf_dir.iterdir() if p.name.endswith(".tmp")]

    assert inst.sync() is False  # a pass that was still running when the agent stopped puts nothing back
    assert contents(conf_dir)["20-old.conflist"]["plugins"] == [CALICO]
    assert not (tmp_path / "bin" / PLUGIN_TYPE).exists()


@pytest.mark.parametrize(
    ("names", "primary"),
    [
        ([], None),
        (["README", "10-a.conf.bak", "kubeconfig"], None),
        (["20-b.conflist", "10-a.conf"], "10-a.conf"),
        (["10-a.conflist", "10-a.conf"], "10-a.conf"),  # a .conf rewritten after its conversion wins
        ([".10-a.conflist.ztunnel-cni.tmp", "99-z.conflist"], "99-z.conflist"),
    ],
)
def test_primary_config(names: list[str], primary: str | None) -> None:
    assert primary_config(names) == primary


def test_plan_uninstall_leaves_a_config_without_the_entry_alone() -> None:
    assert plan_uninstall("10-calico.conflist", json.dumps(CONFLIST)) is None
    assert plan_uninstall("10-bridge.conf", json.dumps(BRIDGE_CONF)) is None


def test_a_write_racing_another_writer_is_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The primary CNI rewrote the file between the installer's read and its rename: the installer
    must not put the old content back; it drops its write and looks again on the next pass."""
    conf_dir = write(tmp_path, {"10-calico.conflist": CONFLIST})
    inst = installer(tmp_path)
    real_fsync = os.fsync
    newer = {**CONFLIST, "plugins": [CALICO]}

    def other_writer_meanwhile(fd: int) -> None:
        if "10-calico.conflist" in os.readlink(f"/proc/self/fd/{fd}"):  # the installer's temporary file
            (conf_dir / "10-calico.conflist").write_text(json.dumps(newer) + "\n" * 3)
            monkeypatch.setattr(os, "fsync", real_fsync)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", other_writer_meanwhile)
    assert inst.sync() is False
    assert contents(conf_dir) == {"10-calico.conflist": newer}
    assert not [p for p in conf_dir.iterdir() if p.name != "10-calico.conflist"]  # no temporary file left
    assert inst.sync() is True
    assert contents(conf_dir)["10-calico.conflist"]["plugins"] == [CALICO, OURS]


def test_a_bin_dir_it_cannot_write_is_reported_and_the_config_left_alone(tmp_path: Path) -> None:
    conf_dir = write(tmp_path, {"10-calico.conflist": CONFLIST})
    (tmp_path / "bin").rmdir()  # the host's /opt/cni/bin not mounted
    inst = installer(tmp_path)
    with capture_logs() as logs:
        assert inst.sync() is False
    assert contents(conf_dir) == {
        "10-calico.conflist": CONFLIST
    }  # no entry naming a plugin that is not there
    (event,) = [e for e in logs if e["event"] == "cni.install_failed"]
    assert event["bin_dir"] == str(tmp_path / "bin") and "mounted writable" in event["hint"]
    assert inst.problem.startswith("cannot install the CNI plugin: [Errno 2] No such file or directory")
