"""Path normalization as Istio does it, table-driven (Istio's normalization reference and the bypass
classes of the reliability catalogue's section 2.2): what each mode makes of a path, and what it
means for a DENY of ``/admin`` and ``/admin/*`` (a path a policy must see as the backend will)."""

from __future__ import annotations

import pytest

from mesh.l7.normalize import NormalizationError, normalize_method, normalize_target

B, M, D = "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"

CASES = [
    # (target, mode, normalized)
    ("/admin", B, "/admin"),
    ("/public/../admin", B, "/admin"),
    ("/public/./../admin", B, "/admin"),
    ("/./admin", B, "/admin"),
    ("/a/b/../../admin", B, "/admin"),
    ("/../admin", B, "/admin"),  # above the root stays at the root
    ("/../../../admin", B, "/admin"),
    ("/%61dmin", B, "/admin"),
    ("/%61%64%6D%69%6E", B, "/admin"),  # hex case does not matter
    ("/%2e%2e/admin", B, "/admin"),  # encoded dots are dot segments after decoding
    ("/public/%2E%2E/admin", B, "/admin"),
    ("/%2d%5f%7e%30%39", B, "/-_~09"),
    ("/%40user", B, "/%40user"),  # '@' is not unreserved: kept encoded
    ("/%252e%252e/admin", B, "/%252e%252e/admin"),  # decoded once, never twice
    ("/admin%2Fx", B, "/admin%2Fx"),  # BASE keeps an encoded slash
    ("/admin%2fx", D, "/admin/x"),
    ("/admin%5Cx", D, "/admin/x"),  # an encoded backslash becomes a slash too
    ("/public%2F..%2Fadmin", D, "/admin"),
    ("/public%2f%2e%2e%2fadmin", D, "/admin"),
    ("\\admin", B, "/admin"),
    ("/public\\..\\admin", B, "/admin"),
    ("//admin", B, "//admin"),  # BASE does not merge slashes
    ("//admin", M, "/admin"),
    ("/admin//x", M, "/admin/x"),
    ("///admin///", M, "/admin/"),
    ("//admin%2f%2fx", D, "/admin/x"),
    ("/admin?x=../y", B, "/admin?x=../y"),  # the query is not a path
    ("/a/../admin?token=%00", B, "/admin?token=%00"),
    ("/admin#frag", B, "/admin"),
    ("/admin/", B, "/admin/"),
    ("/admin/.", B, "/admin/"),
    ("/admin/..", B, "/"),
    ("/Admin", B, "/Admin"),  # paths are case sensitive, as in Istio
    ("/administrator", B, "/administrator"),
    ("/public/../admin", "NONE", "/public/../admin"),
    ("//admin", "NONE", "//admin"),
    ("/%61dmin", "NONE", "/%61dmin"),
    ("admin", B, "/admin"),
    ("/api/v1/../../admin/x", M, "/admin/x"),
    ("/api/%2E%2E%2Fadmin", D, "/admin"),
]


@pytest.mark.parametrize(("target", "mode", "normalized"), CASES)
def test_normalization(target: str, mode: str, normalized: str) -> None:
    assert normalize_target(target, mode) == normalized


def denied(path: str) -> bool:
    """A DENY with paths ``/admin`` and ``/admin/*`` (Istio's exact and prefix forms) on the path."""
    return path == "/admin" or path.startswith("/admin/")


POLICY = [
    # (target, mode, denied by DENY /admin, /admin/*)
    ("/admin", B, True), ("/public/../admin", B, True), ("/%61dmin", B, True), ("/admin/x", B, True),
    ("//admin", B, False), ("//admin", M, True), ("//admin", D, True),
    ("/admin%2Fx", B, False), ("/admin%2Fx", D, True), ("/admin%5cx", D, True),
    ("/administrator", B, False), ("/administrator", D, False), ("/Admin", B, False),
    ("/public%2F..%2Fadmin", B, False), ("/public%2F..%2Fadmin", D, True), ("\\admin", B, True),
    ("/admin?x=1", B, True), ("/admin#x", B, True), ("/x/../admin/", M, True), ("/admin", "NONE", True),
    ("/public/../admin", "NONE", False),  # NONE: the policy sees what the backend may resolve (unsafe)
]  # fmt: skip


@pytest.mark.parametrize(("target", "mode", "expected"), POLICY)
def test_a_deny_sees_the_path_the_backend_gets(target: str, mode: str, expected: bool) -> None:
    assert denied(normalize_target(target, mode).partition("?")[0]) is expected


@pytest.mark.parametrize("target", ["/admin%00", "/a%00b/../c", "/%00"])
def test_an_encoded_nul_is_refused(target: str) -> None:
    with pytest.raises(NormalizationError):
        normalize_target(target, B)


def test_methods_must_be_upper_case() -> None:
    assert normalize_method("GET") == "GET"
    with pytest.raises(NormalizationError, match="upper case"):
        normalize_method("get")


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="DECODE_AND_MERGE_SLASHES"):
        normalize_target("/", "LOWER")
