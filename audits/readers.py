"""Reading archive files into raw records: bytes in, lines (or Parquet rows) out.

A gzip file cut short in transit, or damaged inside (a failed CRC, corrupt deflate data),
still yields every byte that inflates before the damage; the damage is reported, never raised.
"""

from __future__ import annotations

import zlib

_CHUNK = 1 << 16
_SALVAGE_PIECE = 1 << 10  # a damaged member is re-inflated in small pieces: little is lost
_GZIP_WBITS = 31
_RAW_DEFLATE = -15
GZIP_MAGIC = b"\x1f\x8b"


def decompress_recoverable(raw: bytes) -> tuple[bytes, str | None]:
    """Decompress a (possibly multi-member) gzip stream, keeping all output before any damage.

    Returns ``(data, damage)``; ``damage`` is ``None`` for an intact stream, else a short
    description such as ``"gzip stream cut short"``.
    """
    parts: list[bytes] = []
    decomp = zlib.decompressobj(_GZIP_WBITS)
    view = memoryview(raw)
    pos = 0
    member_parts = 0  # parts before the current member
    while True:
        while pos < len(view) and not decomp.eof:
            chunk = view[pos : pos + _CHUNK]
            pos += len(chunk)
            try:
                parts.append(decomp.decompress(chunk))
            except zlib.error as exc:
                salvaged = salvage_member(bytes(view))
                return b"".join(parts[:member_parts]) + salvaged, f"corrupt gzip stream: {exc}"
        if not decomp.eof:
            parts.append(decomp.flush())
            return b"".join(parts), "gzip stream cut short"
        rest = decomp.unused_data + bytes(view[pos:])
        if not rest.strip(b"\x00"):
            return b"".join(parts), None
        if not rest.startswith(GZIP_MAGIC):
            return b"".join(parts), "trailing bytes after the gzip stream"
        view, pos, member_parts = memoryview(rest), 0, len(parts)
        decomp = zlib.decompressobj(_GZIP_WBITS)


def salvage_member(member: bytes) -> bytes:
    """What a damaged gzip member's deflate data inflates to before the damage, its CRC
    unchecked (a failed CRC alone loses nothing)."""
    start = _header_length(member)
    if start is None:
        return b""
    inflate = zlib.decompressobj(_RAW_DEFLATE)
    parts = []
    for pos in range(start, len(member), _SALVAGE_PIECE):
        try:
            parts.append(inflate.decompress(member[pos : pos + _SALVAGE_PIECE]))
        except zlib.error:
            break
        if inflate.eof:
            break
    return b"".join(parts)


_FHCRC, _FEXTRA, _FNAME, _FCOMMENT = 2, 4, 8, 16


def _header_length(member: bytes) -> int | None:
    """The length of a gzip member's header (RFC 1952), ``None`` when it is not one."""
    if len(member) < 10 or not member.startswith(GZIP_MAGIC):
        return None
    flags, pos = member[3], 10
    if flags & _FEXTRA:
        pos += 2 + int.from_bytes(member[pos : pos + 2], "little")
    for flag in (_FNAME, _FCOMMENT):
        if flags & flag:
            end = member.find(b"\x00", pos)
            if end < 0:
                return None
            pos = end + 1
    if flags & _FHCRC:
        pos += 2
    return pos if pos <= len(member) else None
