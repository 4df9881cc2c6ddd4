"""Address helpers on ztunnel's per-connection path (cached, so they must stay exact)."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, ip_address

from mesh.rt.net.netns import ip_text, original_destination, parse_ip, unmap


class _RedirectedSocket:
    """What SO_ORIGINAL_DST answers for a connection REDIRECTed from 10.96.0.100:80."""

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        assert (level, option, size) == (socket.SOL_IP, 80, 16)
        return bytes([2, 0, 0, 80, 10, 96, 0, 100]) + bytes(8)


def test_original_destination_decodes_sockaddr_in() -> None:
    for _ in range(2):  # the second answer comes from the cache and is the same
        assert original_destination(_RedirectedSocket()) == (IPv4Address("10.96.0.100"), 80)  # type: ignore[arg-type]


def test_ip_text_formats_as_str_does() -> None:
    for text in ("10.244.1.2", "fd00::1", "::ffff:10.0.0.1"):
        assert ip_text(ip_address(text)) == str(ip_address(text))
    assert ip_text(parse_ip("10.244.1.2")) == "10.244.1.2"


def test_unmap_turns_mapped_ipv6_back_into_ipv4() -> None:
    assert unmap("::ffff:10.244.1.2") == "10.244.1.2" and unmap("fd00::1") == "fd00::1"
