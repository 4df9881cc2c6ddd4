"""Bearer-token extraction and the lab's per-node bootstrap tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from istiod_lite.ca.auth import Caller, LabTokenAuthenticator, bearer_token, load_lab_tokens, parse_identity
from istiod_lite.ca.errors import UnauthenticatedError
from mesh.errors import ConfigError
from mesh.identity import WorkloadIdentity
from mesh.testing.clock import FakeClock

TD = "cluster.local"
ZTUNNEL = WorkloadIdentity(TD, "istio-system", "ztunnel")


@pytest.mark.parametrize(
    ("metadata", "token"),
    [
        ([("authorization", "Bearer abc")], "abc"),
        ([("Authorization", "bearer  abc ")], "abc"),
        ([("x-other", "1"), ("authorization", b"Bearer xyz")], "xyz"),
    ],
)
def test_bearer_token(metadata: list[tuple[str, str | bytes]], token: str) -> None:
    assert bearer_token(metadata) == token


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ([], "no authorization metadata"),
        ([("authorization", "Basic abc")], "not 'Bearer <token>'"),
        ([("authorization", "Bearer ")], "not 'Bearer <token>'"),
        ([("authorization", "abc")], "not 'Bearer <token>'"),
        ([("authorization", "Bearer a"), ("authorization", "Bearer b")], "several authorization"),
        ([("authorization", "Bearer " + "x" * 20000)], "longer than"),
    ],
)
def test_bearer_token_refusals(metadata: list[tuple[str, str | bytes]], message: str) -> None:
    with pytest.raises(UnauthenticatedError, match=message):
        bearer_token(metadata)


def test_lab_token_file_yaml(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(
        "tok-n1: {node: n1, identity: istio-system/ztunnel}\n"
        "tok-app: {identity: 'spiffe://cluster.local/ns/default/sa/app', expires: 1900000000}\n"
    )
    tokens = load_lab_tokens(path, trust_domain=TD)
    assert tokens == {
        "tok-n1": (Caller(ZTUNNEL, node="n1"), None),
        "tok-app": (Caller(WorkloadIdentity(TD, "default", "app")), 1_900_000_000.0),
    }


def test_lab_token_file_json(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"t": {"node": "n2", "identity": "istio-system/ztunnel"}}))
    assert load_lab_tokens(path, trust_domain=TD) == {"t": (Caller(ZTUNNEL, node="n2"), None)}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", "is not a mapping"),
        ("{t: 5}", "token entry #1 must map"),
        ("{t: {node: n1}}", "has no string 'identity'"),
        ("{t: {identity: ztunnel}}", "neither 'namespace/service-account'"),
        ("{t: {identity: 'a/B C'}}", "invalid identity"),
        ("{t: {identity: a/b, node: 3}}", "non-string 'node'"),
        ("{t: {identity: a/b, expires: soon}}", "non-numeric 'expires'"),
        ("{t: {identity: 'spiffe://cluster.local/x'}}", "invalid identity"),
        ("{not yaml", "cannot read lab token file"),
    ],
)
def test_lab_token_file_errors_name_the_entry(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_lab_tokens(path, trust_domain=TD)


def test_missing_lab_token_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read lab token file"):
        load_lab_tokens(tmp_path / "nope.yaml", trust_domain=TD)


async def test_lab_authenticator_knows_expires_and_refuses() -> None:
    clock = FakeClock(start=1000.0)
    auth = LabTokenAuthenticator(
        {"good": Caller(ZTUNNEL, node="n1"), "short": (Caller(ZTUNNEL), 1010.0)}, clock=clock
    )
    assert await auth.authenticate("good") == Caller(ZTUNNEL, node="n1")
    assert (await auth.authenticate("short")).identity == ZTUNNEL
    with pytest.raises(UnauthenticatedError, match="unknown"):
        await auth.authenticate("goodx")
    clock.advance(10)
    with pytest.raises(UnauthenticatedError, match="expired"):
        await auth.authenticate("short")


def test_parse_identity_forms() -> None:
    assert parse_identity("istio-system/ztunnel", trust_domain=TD) == ZTUNNEL
    assert parse_identity("spiffe://other.td/ns/a/sa/b", trust_domain=TD) == WorkloadIdentity(
        "other.td", "a", "b"
    )


async def test_the_lab_token_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text("tok-n1: {node: n1, identity: istio-system/ztunnel}\n")
    auth = LabTokenAuthenticator.from_file(path, trust_domain="cluster.local", clock=FakeClock())
    with pytest.raises(UnauthenticatedError):
        await auth.authenticate("tok-wp")
    replacement = tmp_path / ".tokens.yaml.tmp"
    replacement.write_text(
        "tok-n1: {node: n1, identity: istio-system/ztunnel}\ntok-wp: {identity: demo/waypoint}\n"
    )
    replacement.replace(path)  # as the lab writes it: atomically
    caller = await auth.authenticate("tok-wp")
    assert caller.identity == WorkloadIdentity("cluster.local", "demo", "waypoint") and caller.node is None
    path.write_text("- not a mapping\n")  # a bad rewrite keeps the tokens read before
    assert (await auth.authenticate("tok-n1")).node == "n1"
