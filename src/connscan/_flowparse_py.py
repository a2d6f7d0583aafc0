"""Pure-Python twin of connscan._flowparse_c (same function, same results): the fallback
and the oracle the tests compare the native extractor with."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import numpy as np

OK, COMMENT, BAD_COUNT, BAD_BYTES, BAD_VALUE = 0, 1, 2, 3, 4
TEXT, PORT, WALLCLOCK, EPOCH_S, EPOCH_MS = 0, 1, 2, 3, 4

_WALLCLOCK = re.compile(rb"(\d{4})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)(?:\.(\d{0,9}))?")
_EPOCH_S = re.compile(rb"(\d{1,12})(?:\.(\d{0,9}))?")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_US = timedelta(microseconds=1)


def _printable(field: bytes) -> bool:
    return all(0x20 <= b <= 0x7E for b in field)


def _port(field: bytes) -> int:
    text = field.strip(b" ")
    if text in (b"", b"-"):
        return -1
    if len(text) > 5 or not all(0x30 <= b <= 0x39 for b in text):
        return -2
    value = int(text)
    return value if value <= 65535 else -2


def _micros(field: bytes, kind: int) -> int | None:
    if kind == WALLCLOCK:
        match = _WALLCLOCK.fullmatch(field)
        if not match:
            return None
        y, mo, d, h, mi, s = (int(g) for g in match.groups()[:6])
        try:
            moment = datetime(y, mo, d, h, mi, s, tzinfo=timezone.utc)
        except ValueError:
            return None
        fraction = (match.group(7) or b"")[:6].ljust(6, b"0")
        return (moment - _EPOCH) // _ONE_US + int(fraction)
    if kind == EPOCH_MS:
        return int(field) * 1000 if len(field) <= 15 and field.isdigit() else None
    match = _EPOCH_S.fullmatch(field)
    if not match:
        return None
    fraction = (match.group(2) or b"")[:6].ljust(6, b"0")
    return int(match.group(1)) * 1_000_000 + int(fraction)


def split_fields(block, delimiter: int, ncols: int, wanted, comment: int = -1, kinds=None):
    """Split ``block`` into lines and fields; see connscan._flowparse_c.split_fields."""
    if not 0 <= delimiter <= 255 or delimiter in (10, 13):
        raise ValueError(f"delimiter must be one byte other than CR and LF, not {delimiter}")
    if comment != -1 and (not 0 <= comment <= 255 or comment in (10, 13)):
        raise ValueError(f"comment must be -1 or one byte other than CR and LF, not {comment}")
    if ncols <= 0:
        raise ValueError(f"ncols must be positive, not {ncols}")
    wanted = [int(c) for c in wanted]
    kinds = [TEXT] * len(wanted) if kinds is None else [int(k) for k in kinds]
    if len(kinds) != len(wanted) or any(not TEXT <= k <= EPOCH_MS for k in kinds):
        raise ValueError(f"kinds must give one of 0..4 for each wanted column, not {kinds}")
    for column in wanted:
        if not 0 <= column < ncols:
            raise ValueError(f"wanted column {column} outside 0..{ncols - 1}")
    if len(set(wanted)) != len(wanted):
        raise ValueError("a wanted column is given twice")
    data = bytes(block)
    sep = bytes([delimiter])
    status, starts, ends, nfields, bad_slot = [], [], [], [], []
    values: list[list] = [[] for _ in wanted]
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        end = len(data) if end < 0 else end
        cur = end - 1 if end > pos and data[end - 1] == 0x0D else end
        line = data[pos:cur]
        pos = end + 1
        if not line:
            continue
        starts.append(cur - len(line))
        ends.append(cur)
        bad_slot.append(-1)
        if comment >= 0 and line[0] == comment:
            status.append(COMMENT)
            nfields.append(0)
            continue
        fields = line.split(sep)
        nfields.append(len(fields))
        if len(fields) != ncols:
            status.append(BAD_COUNT)
            continue
        if not all(_printable(fields[c]) for c in wanted):
            status.append(BAD_BYTES)
            continue
        row = {}
        for j in sorted(range(len(wanted)), key=lambda j: wanted[j]):  # line order
            field, kind = fields[wanted[j]], kinds[j]
            if kind == PORT:
                row[j] = _port(field)
                if row[j] == -2:
                    bad_slot[-1] = j
                    break
            elif kind == TEXT:
                row[j] = field
            else:
                row[j] = _micros(field, kind)
        if bad_slot[-1] >= 0:
            status.append(BAD_VALUE)
            continue
        status.append(OK)
        for j, value in row.items():
            values[j].append(value)
    columns = []
    for vals, kind in zip(values, kinds):
        if kind == TEXT:
            offsets = np.zeros(len(vals) + 1, np.int32)
            offsets[1:] = np.cumsum([len(v) for v in vals], dtype=np.int64) if vals else []
            columns.append((offsets, np.frombuffer(b"".join(vals), np.uint8).copy()))
        elif kind == PORT:
            columns.append(np.array(vals, np.int32))
        else:
            columns.append((np.array([v or 0 for v in vals], np.int64), np.array([v is not None for v in vals], bool)))
    return (
        np.array(status, np.uint8),
        np.array(starts, np.int64),
        np.array(ends, np.int64),
        np.array(nfields, np.int32),
        columns,
        np.array(bad_slot, np.int8),
    )


def lower_letters(offsets, data):
    """Twin of _flowparse_c.lower_letters: ``(True, lowered data or None)`` when every value
    is one or more ASCII letters, else ``(False, None)``."""
    offsets = np.asarray(offsets, np.int64)
    n = len(offsets) - 1
    if n < 0:
        raise ValueError("lower_letters: no offsets")
    if n and bool(np.any(offsets[1:] <= offsets[:-1])):
        return False, None
    if n == 0:
        return True, None
    if offsets[0] < 0 or offsets[n] > len(data):
        raise ValueError(f"lower_letters: offsets {offsets[0]}..{offsets[n]} outside the {len(data)} data bytes")
    text = bytes(data[offsets[0]:offsets[n]])
    if not (text.isascii() and text.isalpha()):
        return False, None
    if text.islower():
        return True, None
    lowered = np.array(data, dtype=np.uint8)
    lowered[offsets[0]:offsets[n]] = np.frombuffer(text.lower(), np.uint8)
    return True, lowered


def open_quote_lines(block, delimiter: int, quote: int = 34):
    """The lines that end inside a quoted value (see _flowparse_c.open_quote_lines)."""
    if not 0 <= delimiter <= 255 or not 0 <= quote <= 255 or delimiter == quote or {10, 13} & {delimiter, quote}:
        raise ValueError("delimiter and quote must be two different bytes other than CR and LF")
    data = bytes(block)
    starts, ends = [], []
    position = 0
    for line in re.split(rb"(\r\n|\r|\n)", data):
        if line in (b"\r\n", b"\r", b"\n"):
            position += len(line)
            continue
        if line and _ends_quoted(line, delimiter, quote):
            starts.append(position)
            ends.append(position + len(line))
        position += len(line)
    return np.array(starts, np.int64), np.array(ends, np.int64)


def _ends_quoted(line: bytes, delimiter: int, quote: int) -> bool:
    """Whether reading ``line`` field by field leaves a quoted value open at its end."""
    at, n = 0, len(line)
    while True:  # at the start of a field
        if at < n and line[at] == quote:
            at += 1
            while True:  # in the quoted part: "" is a quote, " closes it
                close = line.find(bytes([quote]), at)
                if close < 0:
                    return True
                if close + 1 < n and line[close + 1] == quote:
                    at = close + 2
                    continue
                at = close + 1
                break
        end = line.find(bytes([delimiter]), at)  # the unquoted rest of the field
        if end < 0:
            return False
        at = end + 1
