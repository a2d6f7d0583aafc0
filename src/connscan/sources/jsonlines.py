"""JSON Lines input (Zeek JSON, Suricata eve.json): one object per non-blank line."""
from __future__ import annotations

import json
from collections.abc import Iterator

from connscan.sources import SourceAccount
from connscan.sources.compression import ByteSource


def records(data: ByteSource, account: SourceAccount, block_bytes: int) -> Iterator[list[tuple[int, dict]]]:
    """Lists of (row, object) per block; lines that are not a JSON object are rejected."""
    row = 0
    for block in data.blocks(block_bytes):
        out = []
        for line in block.splitlines():
            if not line.strip():
                continue
            row += 1
            try:
                obj = json.loads(line)
            except (ValueError, UnicodeDecodeError) as exc:
                account.reject(row, f"invalid JSON: {str(exc).split(':')[0]}", line[:500].decode("utf-8", "replace"))
                continue
            if not isinstance(obj, dict):
                account.reject(row, "JSON line is not an object", line[:500].decode("utf-8", "replace"))
                continue
            out.append((row, obj))
        yield out
    if data.truncated_tail:
        account.reject(row + 1, "truncated record at damaged end of input", data.truncated_tail[:500].decode("utf-8", "replace"))


def text_or_none(value) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def port_or_unset(value) -> str:
    """Ports as text for the shared validator: absent -> "" (unset); a JSON true/false is
    not a port."""
    if value is None:
        return ""
    return "invalid" if isinstance(value, bool) else str(value)
