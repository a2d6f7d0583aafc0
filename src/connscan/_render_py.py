"""Row-template renderer (pure-Python twin of ``_render_c``): one line of text per row,
made of segments, for writing findings without a Python object per row.

``render_lines(n, segments) -> bytes`` writes n lines, each the concatenation of its
segments followed by ``\\n``. A segment is a tuple, by kind:

    (LITERAL, text)                       the same bytes on every row
    (PIECE, pieces, index)                pieces[index[i]] (pieces: list of bytes)
    (JSON_TEXT, prefix, offsets, data, validity, bit_offset)
                                          an Arrow string column (offsets n+1, int32 or
                                          int64, into the data bytes; validity bitmap or
                                          None, entry i at bit bit_offset + i): prefix +
                                          the value as a JSON string (escaped as by
                                          json.dumps(ensure_ascii=False)); null: nothing
    (THOR_TEXT, prefix, offsets, data, validity, bit_offset)
                                          the same column: prefix + the value escaped as
                                          output.escape_value escapes it; null: prefix + "-"
    (NUMBER, prefix, values, missing)     prefix + decimal; a negative value: prefix +
                                          missing, or nothing when missing is None
    (TIMESTAMP, prefix, suffix, micros, valid)
                                          microseconds since 1970 (UTC): prefix +
                                          "YYYY-MM-DDTHH:MM:SS[.ffffff]Z" + suffix, as
                                          output._iso writes a UTC datetime (fraction only
                                          when non-zero); not valid: nothing

Years outside datetime's 1..9999 keep the proleptic Gregorian calendar: at least four
digits, "-" before a negative (astronomical) year. Every length, offset and piece index is
checked before use, and THOR_TEXT values must be UTF-8: a ValueError names the segment and
row otherwise.
"""
from __future__ import annotations

import re

import numpy as np

from connscan.output import escape_value

LITERAL, PIECE, JSON_TEXT, THOR_TEXT, NUMBER, TIMESTAMP = range(6)

# What json.dumps(..., ensure_ascii=False) escapes, all ASCII: byte-wise escaping of UTF-8
# text is therefore the same as escaping its characters.
_ESCAPES = {bytes([c]): b"\\u%04x" % c for c in range(0x20)}
_ESCAPES.update({b'"': b'\\"', b"\\": b"\\\\", b"\b": b"\\b", b"\f": b"\\f", b"\n": b"\\n", b"\r": b"\\r", b"\t": b"\\t"})
_NEEDS_ESCAPE = re.compile(rb'["\\\x00-\x1f]')


def render_lines(n: int, segments) -> bytes:
    """The n lines of ``segments`` (see the module docstring), each ending in ``\\n``."""
    if n < 0:
        raise ValueError(f"row count must not be negative, not {n}")
    columns = [_column(k, n, segment) for k, segment in enumerate(segments)]
    columns.append([b"\n"] * n)
    return b"".join(map(b"".join, zip(*columns)))


def _column(k: int, n: int, segment: tuple) -> list[bytes]:
    """Segment ``k``'s bytes on each of the n rows."""
    kind = segment[0]
    if kind == LITERAL:
        _, text = segment
        return [bytes(text)] * n
    if kind == PIECE:
        _, pieces, index = segment
        pieces, index = [bytes(piece) for piece in pieces], _values(k, n, index)
        bad = np.flatnonzero((index < 0) | (index >= len(pieces)))
        if len(bad):
            raise ValueError(f"segment {k}, row {bad[0]}: piece {index[bad[0]]} outside 0..{len(pieces) - 1}")
        return [pieces[i] for i in index.tolist()]
    if kind in (JSON_TEXT, THOR_TEXT):
        _, prefix, offsets, data, validity, bit_offset = segment
        return _texts(k, n, kind == JSON_TEXT, bytes(prefix), offsets, data, validity, bit_offset)
    if kind == NUMBER:
        _, prefix, values, missing = segment
        prefix, values = bytes(prefix), _values(k, n, values)
        missing = b"" if missing is None else prefix + bytes(missing)
        return [prefix + b"%d" % value if value >= 0 else missing for value in values.tolist()]
    if kind == TIMESTAMP:
        _, prefix, suffix, micros, valid = segment
        prefix, suffix, micros, valid = bytes(prefix), bytes(suffix), _values(k, n, micros), _values(k, n, valid)
        return [prefix + _iso_utc(us) + suffix if ok else b"" for us, ok in zip(micros.tolist(), valid.tolist())]
    raise ValueError(f"segment {k}: unknown kind {kind!r}")


def _values(k: int, n: int, values) -> np.ndarray:
    values = np.asarray(values)
    if values.shape != (n,):
        raise ValueError(f"segment {k}: values of shape {values.shape} for {n} rows")
    return values.astype(np.int64, copy=False)


def _texts(k: int, n: int, as_json: bool, prefix: bytes, offsets, data, validity, bit_offset: int) -> list[bytes]:
    offsets, data = np.asarray(offsets), np.frombuffer(data, np.uint8)
    if offsets.shape != (n + 1,):
        raise ValueError(f"segment {k}: string offsets of shape {offsets.shape} for {n} rows")
    offsets = offsets.astype(np.int64).tolist()
    bits = None
    if validity is not None:
        bits = np.frombuffer(validity, np.uint8).tobytes()
        if bit_offset < 0 or (bit_offset + n + 7) // 8 > len(bits):
            raise ValueError(f"segment {k}: validity bitmap too short for {n} rows at bit {bit_offset}")
    out = []
    for i in range(n):  # every row's offsets are checked, null or not
        start, end = offsets[i], offsets[i + 1]
        if start < 0 or end < start or end > len(data):
            raise ValueError(f"segment {k}, row {i}: string offsets {start}..{end} outside the data buffer ({len(data)} bytes)")
        bit = bit_offset + i
        if bits is not None and not bits[bit >> 3] >> (bit & 7) & 1:
            out.append(b"" if as_json else prefix + b"-")  # null
        elif as_json:
            out.append(prefix + b'"' + _NEEDS_ESCAPE.sub(_escape, data[start:end].tobytes()) + b'"')
        else:
            try:
                text = data[start:end].tobytes().decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"segment {k}, row {i}: invalid UTF-8") from None
            out.append(prefix + escape_value(text).encode())
    return out


def _escape(match: re.Match) -> bytes:
    return _ESCAPES[match.group()]


def _iso_utc(micros: int) -> bytes:
    seconds, fraction = divmod(micros, 1_000_000)
    days, second = divmod(seconds, 86_400)
    year, month, day = _civil_from_days(days)
    text = b"%s%04d-%02d-%02dT%02d:%02d:%02d" % (b"-" if year < 0 else b"", abs(year), month, day,
                                                 second // 3600, second // 60 % 60, second % 60)
    return text + (b".%06dZ" % fraction if fraction else b"Z")


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day number since 1970-01-01, proleptic Gregorian (H. Hinnant)."""
    days += 719_468
    era = days // 146_097
    day_of_era = days - era * 146_097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36_524 - day_of_era // 146_096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    shifted_month = (5 * day_of_year + 2) // 153  # 0 is March
    day = day_of_year - (153 * shifted_month + 2) // 5 + 1
    month = shifted_month + 3 if shifted_month < 10 else shifted_month - 9
    return year_of_era + era * 400 + (month <= 2), month, day
