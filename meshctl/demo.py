"""The CA demo (``python -m meshctl.demo ca``) and the entry point of ``make demo``.

It starts istiod_lite as a real process on loopback with a temporary state directory, a lab state
directory holding one pod (``demo/server-0``, service account ``server``, on node ``demo-node``) and a
lab token for that node's ztunnel; then, as that node agent, it has a certificate issued over gRPC/TLS
for ``spiffe://cluster.local/ns/demo/sa/server`` by impersonation, verifies it against the root, prints
it, shows that a pod on another node is refused, and stops the server by its PID and cleans up.

``run_foundation_demo()`` is the entry point other demos compose; ``foundation_demo()`` is its async form.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from mesh.certs import IssuedCertificate
from mesh.errors import MeshError
from mesh.identity import WorkloadIdentity, load_pem_certificates, verify_workload_chain
from mesh.rt.ca_client import CaClient, CaError, CaRejected
from mesh.rt.loop import run
from meshctl.mesh_demo import run_mesh_demo

__all__ = [
    "DemoError",
    "IstiodProcess",
    "Workspace",
    "describe",
    "foundation_demo",
    "main",
    "prepare_workspace",
    "run_foundation_demo",
]

TRUST_DOMAIN = "cluster.local"
NODE = "demo-node"
OTHER_NODE = "other-node"
WORKLOAD = WorkloadIdentity(TRUST_DOMAIN, "demo", "server")
ELSEWHERE = WorkloadIdentity(TRUST_DOMAIN, "demo", "elsewhere")
TTL_SECONDS = 24 * 3600
_READY_DEADLINE = 30.0
_STOP_DEADLINE = 5.0


class DemoError(MeshError):
    """The demo could not complete; the message says which step failed and what to do."""


@dataclass(frozen=True, slots=True)
class Workspace:
    """The temporary directories and files the demo gives istiod_lite."""

    base: Path
    state_dir: Path
    lab_state: Path
    tokens_file: Path
    log_file: Path
    token: str

    @property
    def root_cert(self) -> Path:
        """Where istiod_lite persists its self-signed root."""
        return self.state_dir / "ca" / "root-cert.pem"


def prepare_workspace(base: Path) -> Workspace:
    """Writes the lab state (two pods on two nodes) and the node agent's token file under ``base``."""
    token = secrets.token_urlsafe(24)
    ws = Workspace(base, base / "istiod", base / "lab", base / "tokens.yaml", base / "istiod.log", token)
    ws.state_dir.mkdir(mode=0o700)
    _write_pod(ws.lab_state, name="server-0", service_account="server", node=NODE, ip="10.244.1.2")
    _write_pod(
        ws.lab_state, name="elsewhere-0", service_account="elsewhere", node="other-node", ip="10.244.2.2"
    )
    tokens = {token: {"node": NODE, "identity": "istio-system/ztunnel"}}
    ws.tokens_file.write_text(yaml.safe_dump(tokens), encoding="utf-8")
    ws.tokens_file.chmod(0o600)
    return ws


def _write_pod(lab_state: Path, *, name: str, service_account: str, node: str, ip: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "demo", "uid": f"uid-{name}", "resourceVersion": "1"},
        "spec": {"nodeName": node, "serviceAccountName": service_account},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }
    directory = lab_state / "objects" / "Pod" / "demo"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(pod), encoding="utf-8")


class IstiodProcess:
    """istiod_lite as a child process on loopback ephemeral ports, read from its JSON log."""

    def __init__(self, ws: Workspace, out: TextIO) -> None:
        self._ws = ws
        self._out = out
        self._proc: asyncio.subprocess.Process | None = None
        self.ca_port = 0
        self.readiness_port = 0

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._proc.pid if self._proc is not None else 0

    async def start(self) -> None:
        """Starts the child; its log goes to the workspace's log file."""
        args = [sys.executable, "-m", "istiod_lite.app", "--state-dir", str(self._ws.state_dir)]
        args += ["--lab-tokens", str(self._ws.tokens_file), "--lab-state", str(self._ws.lab_state)]
        args += ["--listen", "127.0.0.1:0", "--readiness-listen", "127.0.0.1:0", "--log-format", "json"]
        with self._ws.log_file.open("wb") as log:
            self._proc = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        print(f"-> started istiod-lite (pid {self.pid}): python -m istiod_lite.app ...", file=self._out)

    async def wait_ready(self, *, deadline: float = _READY_DEADLINE) -> float:
        """Waits for the started log line and a 200 from /healthz/ready; returns the seconds it took."""
        began = time.monotonic()
        shown = 0
        while (waited := time.monotonic() - began) < deadline:
            self._check_alive()
            if not self.ca_port:
                self._read_ports()
            if self.readiness_port and await _http_ready(self.readiness_port):
                return waited
            if int(waited) > shown:
                shown = int(waited)
                print(f"   still waiting for readiness ({shown} s)", file=self._out)
            await asyncio.sleep(0.1)
        raise DemoError(
            f"istiod-lite was not ready within {deadline:.0f} s; its log says:\n{self.log_tail()}",
            hint="a slow machine may need longer; otherwise read the log above and fix what it names",
        )

    async def stop(self) -> int | None:
        """SIGTERM to the child's PID, SIGKILL after a deadline; returns its exit status."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(_STOP_DEADLINE):
                return await proc.wait()
        except TimeoutError:
            proc.kill()
            return await proc.wait()

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the child's log, indented."""
        try:
            text = self._ws.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "   (no log)"
        return "\n".join(f"   | {line}" for line in text.splitlines()[-lines:]) or "   (empty log)"

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.returncode is not None:
            raise DemoError(
                f"istiod-lite exited with status {self._proc.returncode} while starting; its log says:\n"
                f"{self.log_tail()}",
                hint="fix what the log names; run 'make setup' if a module is missing",
            )

    def _read_ports(self) -> None:
        with contextlib.suppress(OSError):
            for line in self._ws.log_file.read_text(encoding="utf-8", errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if isinstance(record, dict) and record.get("event") == "istiod.started":
                        self.ca_port = int(record["ca.port"])
                        self.readiness_port = int(record["readiness.port"])


async def _http_ready(port: int) -> bool:
    try:
        async with asyncio.timeout(1.0):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"GET /healthz/ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(1.0):
            status = await reader.readline()
        return status.split(b" ")[1:2] == [b"200"]
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


def describe(issued: IssuedCertificate, *, now: float) -> list[str]:
    """The lines printed about an issued certificate: identity, TTL, serial, issuer and the chain."""
    lifetime = issued.not_after - issued.not_before
    left = issued.not_after - now
    leaf, *intermediates = load_pem_certificates(issued.chain_pem)
    lines = [
        f"   SPIFFE identity : {issued.identity.uri}",
        f"   TTL             : {TTL_SECONDS} s requested; valid {_when(issued.not_before)} .. "
        f"{_when(issued.not_after)} ({lifetime:.0f} s incl. clock-skew backdating), expires in {_span(left)}",
        f"   serial          : {issued.serial:x}",
        f"   issuer          : {leaf.issuer.rfc4514_string()}",
        "   chain (leaf, intermediates, then the trust bundle):",
    ]
    lines += [_chain_line("leaf", leaf)]
    lines += [_chain_line(f"intermediate {i}", c) for i, c in enumerate(intermediates, 1)]
    lines += [_chain_line(f"root {i}", c) for i, c in enumerate(load_pem_certificates(issued.roots_pem), 1)]
    return lines


def _chain_line(label: str, cert: x509.Certificate) -> str:
    subject = cert.subject.rfc4514_string() or "(empty subject)"
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = ", ".join(str(n.value) for n in san)
        subject += f" [SAN {names}]"
    except x509.ExtensionNotFound:
        pass
    return f"     {label:>14}: subject={subject}  issuer={cert.issuer.rfc4514_string()}"


def _when(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _span(seconds: float) -> str:
    total = max(int(seconds), 0)
    return f"{total // 3600}h{total % 3600 // 60:02d}m{total % 60:02d}s"


def _fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()[:29] + "..."


async def _issue_and_verify(ws: Workspace, istiod: IstiodProcess, out: TextIO) -> None:
    roots_pem = ws.root_cert.read_bytes()
    roots = load_pem_certificates(roots_pem)
    client = CaClient(
        f"127.0.0.1:{istiod.ca_port}", roots_pem=roots_pem, token=lambda: ws.token, timeout=10.0
    )
    try:
        print(f"-> as the ztunnel of {NODE}, asking for {WORKLOAD.uri} (ImpersonatedIdentity)", file=out)
        issued = await client.fetch(WORKLOAD, impersonate=True, ttl_seconds=TTL_SECONDS)
        now = time.time()
        verified = verify_workload_chain(
            load_pem_certificates(issued.chain_pem),
            roots=roots,
            now=dt.datetime.fromtimestamp(now, tz=dt.UTC),
        )
        print(f"   issued, and verified against the root {_fingerprint(roots[0])}: {verified.uri}", file=out)
        for line in describe(issued, now=now):
            print(line, file=out)
        print(f"-> asking for {ELSEWHERE.uri}, whose only pod runs on another node", file=out)
        try:
            await client.fetch(ELSEWHERE, impersonate=True, ttl_seconds=TTL_SECONDS)
        except CaRejected as err:
            print(f"   refused, as it must be: {err.code.name}: {err.details}", file=out)
        else:
            raise DemoError("the CA issued a certificate for a pod on another node", hint="this is a CA bug")
    except CaError as err:
        raise DemoError(f"the certificate request failed: {err}", hint="see the CA's log above") from err
    finally:
        await client.close()


async def foundation_demo(*, out: TextIO = sys.stdout, workdir: Path | None = None) -> None:
    """Runs the Foundation demo; raises DemoError naming the failed step. Everything started is stopped."""
    print("== Foundation demo: istiod-lite issues a SPIFFE workload certificate over gRPC/TLS ==", file=out)
    base = Path(tempfile.mkdtemp(prefix="mesh-demo-", dir=workdir))
    istiod: IstiodProcess | None = None
    try:
        ws = prepare_workspace(base)
        print(
            f"-> workspace {base}: pods demo/server-0 on {NODE}, demo/elsewhere-0 on {OTHER_NODE}", file=out
        )
        istiod = IstiodProcess(ws, out)
        await istiod.start()
        took = await istiod.wait_ready()
        print(f"   ready after {took:.1f} s: CA on 127.0.0.1:{istiod.ca_port}", file=out)
        try:
            await _issue_and_verify(ws, istiod, out)
        except DemoError as err:
            raise DemoError(f"{err.message}\n{istiod.log_tail()}", hint=err.hint) from err
    finally:
        if istiod is not None and istiod.pid:
            status = await istiod.stop()
            print(f"-> stopped istiod-lite (pid {istiod.pid}, exit status {status})", file=out)
        shutil.rmtree(base, ignore_errors=True)
        print(f"-> removed {base}", file=out)
    print("== demo OK ==", file=out)


def run_foundation_demo(*, out: TextIO = sys.stdout) -> None:
    """Runs :func:`foundation_demo` on a fresh event loop."""
    run(foundation_demo(out=out))


def main(argv: list[str] | None = None) -> int:
    """``python -m meshctl.demo [ca | --fresh]``: the mesh on the lab (default; a running lab is kept
    and converged, ``--fresh`` starts over), or only the CA (``ca``).

    0 on success, 1 with a message saying what to do on failure, 2 for unknown arguments."""
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["ca"], ["--fresh"]):
        print(f"usage: python -m meshctl.demo [ca | --fresh]; not {' '.join(args)!r}", file=sys.stderr)
        return 2
    try:
        if args == ["ca"]:
            run_foundation_demo()
        else:
            run_mesh_demo(fresh=args == ["--fresh"])
    except MeshError as err:
        print(f"demo failed: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo interrupted; everything it started was stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
