"""Just enough PEM and DER to split bundles and read CRLs (pure); OpenSSL, in TLS, does the real checks.

Every error is a ValueError that names the input (``what``) and what is wrong with it.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterator

__all__ = ["Tlv", "children", "pem_blocks", "read_tlv"]

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)
_SEQUENCE = 0x30

Tlv = tuple[int, int, int]
"""(tag, offset of the contents, offset just after them)."""


def pem_blocks(pem: bytes | str, *, label: str, what: str) -> list[tuple[bytes, bytes]]:
    """(the block as PEM, its DER) for each block of ``pem``, which must all be ``label`` blocks
    holding one DER SEQUENCE each. Text between blocks is ignored, as OpenSSL does."""
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
    blocks = []
    for block in _PEM_BLOCK.finditer(data):
        found = block.group(1).decode("ascii")
        if found != label:
            raise ValueError(f"{what} holds a {found} block; only {label} blocks belong there")
        try:
            der = binascii.a2b_base64(b"".join(block.group(2).split()), strict_mode=True)
        except binascii.Error as err:
            raise ValueError(f"{what} is not valid PEM: a {label} block is not base64 ({err})") from err
        try:
            tag, _, end = read_tlv(der, 0)
        except ValueError:
            tag, end = -1, -1
        if tag != _SEQUENCE or end != len(der):
            raise ValueError(f"{what} is not valid PEM: a {label} block does not hold one DER structure")
        blocks.append((block.group(0) + b"\n", der))
    return blocks


def read_tlv(data: bytes, offset: int) -> Tlv:
    """The DER element at ``offset`` (single-byte tags, definite lengths up to 4 bytes)."""
    if offset + 2 > len(data):
        raise ValueError(f"a DER element at byte {offset} is cut short")
    tag, first = data[offset], data[offset + 1]
    start = offset + 2
    if first < 0x80:
        length = first
    else:
        size = first & 0x7F
        if not 1 <= size <= 4 or start + size > len(data):
            raise ValueError(f"the DER element at byte {offset} has an unsupported length")
        length = int.from_bytes(data[start : start + size], "big")
        start += size
    end = start + length
    if end > len(data):
        raise ValueError(f"the DER element at byte {offset} runs past the end of the data")
    return tag, start, end


def children(data: bytes, start: int, end: int) -> Iterator[Tlv]:
    """The elements inside a constructed element's contents ``data[start:end]``."""
    offset = start
    while offset < end:
        tag, child_start, child_end = read_tlv(data, offset)
        if child_end > end:
            raise ValueError(f"the DER element at byte {offset} runs past its parent")
        yield tag, child_start, child_end
        offset = child_end
