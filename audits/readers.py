"""Reading archive files into raw records: bytes in, lines (or Parquet rows) out.

A gzip file cut short in transit still yields every byte before the cut; the damage is
reported, never raised.
"""

from __future__ import annotations

import zlib

_CHUNK = 1 << 16
_GZIP_WBITS = 31


def decompress_recoverable(raw: bytes) -> tuple[bytes, str | None]:
    """Decompress a (possibly multi-member) gzip stream, keeping all output before any damage.

    Returns ``(data, damage)``; ``damage`` is ``None`` for an intact stream, else a short
    description such as ``"gzip stream cut short"``.
    """
    parts: list[bytes] = []
    decomp = zlib.decompressobj(_GZIP_WBITS)
    view = memoryview(raw)
    pos = 0
    while True:
        while pos < len(view) and not decomp.eof:
            chunk = view[pos : pos + _CHUNK]
            pos += len(chunk)
            try:
                parts.append(decomp.decompress(chunk))
            except zlib.error as exc:
                return b"".join(parts), f"corrupt gzip stream: {exc}"
        if not decomp.eof:
            parts.append(decomp.flush())
            return b"".join(parts), "gzip stream cut short"
        rest = decomp.unused_data + bytes(view[pos:])
        if not rest.strip(b"\x00"):
            return b"".join(parts), None
        if not rest.startswith(b"\x1f\x8b"):
            return b"".join(parts), "trailing bytes after the gzip stream"
        view, pos = memoryview(rest), 0
        decomp = zlib.decompressobj(_GZIP_WBITS)
