"""JSON Lines input: one object per non-blank line. The helpers of the Zeek JSON and
Suricata eve.json readers, and the reader of other JSON flow records ("json"): ECS
(``source.ip``, nested or dotted), GCP VPC flow logs (``jsonPayload.connection.src_ip``),
flat keys such as ``src_ip``/``dst_ip``, found by the common names of tabular.py or named
with ``--columns`` (dotted paths into nested objects).
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from connscan.sources import ReaderOptions, SourceAccount, _batch
from connscan.sources.compression import ByteSource


@dataclass
class NativeBlock:
    """A block of records parsed by pyarrow, with no Python object per record: ``table``
    holds the fields of the reader's schema, its row k is record ``first_row + 1 + k``."""

    first_row: int
    table: pa.Table

    @property
    def rows(self) -> np.ndarray:
        return np.arange(self.first_row + 1, self.first_row + self.table.num_rows + 1, dtype=np.int64)


def _native_table(block: bytes, schema: pa.Schema) -> pa.Table | None:
    """``block`` parsed by pyarrow with ``schema`` (other fields ignored), or None when it
    needs the line-by-line path: pyarrow refuses it (a line that is not one JSON object, a
    field of another type than ``schema`` gives, a key twice), text that is not UTF-8, a
    line that does not start with "{" (blank, say) or holds more than one object, or a lone
    CR (a line break to that path)."""
    lines = block.count(b"\n") + (not block.endswith(b"\n"))
    # every line starts an object (none is blank), and below each holds only one
    if block.count(b"\n{") + block.startswith(b"{") != lines or block.count(b"\r") != block.count(b"\r\n"):
        return None
    try:
        if not block.isascii():  # pyarrow does not check the text of the fields it skips
            block.decode("utf-8")
        table = pajson.read_json(pa.BufferReader(pa.py_buffer(block)), read_options=pajson.ReadOptions(block_size=1 << 20),
                                 parse_options=pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"))
    except (pa.ArrowException, ValueError):  # ArrowInvalid, UnicodeDecodeError
        return None
    return table.combine_chunks() if table.num_rows == lines else None


def records(data: ByteSource, account: SourceAccount, block_bytes: int, schema: pa.Schema | None = None,
            accept: Callable[[pa.Table], bool] | None = None) -> Iterator[NativeBlock | list[tuple[int, dict]]]:
    """Per block of lines: a NativeBlock when ``schema`` is given, pyarrow parses the block
    with it and ``accept(table)`` agrees; else a list of (row, object), the lines that are
    not a JSON object rejected. Both give the same records (tests/test_json_native.py)."""
    row = 0
    for block in data.blocks(block_bytes):
        table = _native_table(block, schema) if schema is not None else None
        if table is not None and (accept is None or accept(table)):
            yield NativeBlock(row, table)
            row += table.num_rows
            continue
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
    """A JSON value as text that is valid UTF-8: a lone surrogate escape (``"\\ud800"``),
    which json.loads keeps, becomes U+FFFD (such text would not encode)."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text if text.isascii() else text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def port_or_unset(value) -> str:
    """Ports as text for the shared validator: absent -> "" (unset); a JSON true/false is
    not a port."""
    if value is None:
        return ""
    return "invalid" if isinstance(value, bool) else text_or_none(value)


def path_value(obj: dict, dotted: str):
    """A value by its dotted name: a flat key (``"source.ip"``), nested objects
    (``{"source": {"ip": ..}}``) or a mix of both; None when absent."""
    value = obj.get(dotted)
    if value is not None:
        return value
    dot = dotted.find(".")
    while dot > 0:
        inner = obj.get(dotted[:dot])
        if isinstance(inner, dict):
            value = path_value(inner, dotted[dot + 1 :])
            if value is not None:
                return value
        dot = dotted.find(".", dot + 1)
    return None


FIRST_S, END_S = -62_135_596_800, 253_402_300_800  # 0001-01-01 and 10000-01-01 in epoch seconds


def json_time(value) -> int | None:
    """Epoch seconds (number) or ISO 8601 text (UTC when without a zone) -> epoch microseconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # years 1..9999 only (NaN fails too): a damaged number is no time, not an overflow
        return round(value * 1_000_000) if FIRST_S <= value < END_S else None
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
        return exact_micros(moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc))
    return None


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


def exact_micros(moment: datetime) -> int:
    """Epoch microseconds of an aware datetime, in integers (a float timestamp loses
    microseconds after about year 2250)."""
    return (moment - _EPOCH) // _MICROSECOND


def zoned_micros(text) -> int | None:
    """ISO 8601 text with a zone -> epoch microseconds; None for anything else."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return exact_micros(moment) if moment.tzinfo is not None else None


# The ISO 8601 forms that pyarrow's cast and datetime.fromisoformat read alike (checked by
# tests/test_json_native.py); other text goes value by value.
_PLAIN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?"
_ZONE = r"(Z|[+-][0-9]{2}:?[0-9]{2})$"


def zoned_micros_column(texts: pa.Array) -> pa.Array:
    """zoned_micros over a string column (int64, null for no time), natively when it can."""
    return iso_micros_column(texts, zoned_micros, naive_utc=False)


def json_time_column(texts: pa.Array) -> pa.Array:
    """json_time over a string column (a time without a zone is UTC), natively when it can."""
    return iso_micros_column(texts, json_time, naive_utc=True)


def iso_micros_column(texts: pa.Array, one: Callable[[str | None], int | None], naive_utc: bool) -> pa.Array:
    """``one`` (ISO text -> epoch microseconds or None) over a string column, as int64: one
    pyarrow cast when every value has the plain form both read alike (with a zone, or also
    without one when ``naive_utc``), else value by value."""
    present = texts.drop_null()
    if len(present):
        for zone, target in ((_ZONE, pa.timestamp("us", tz="UTC")), ("$", pa.timestamp("us")))[: 1 + naive_utc]:
            if pc.all(pc.match_substring_regex(present, _PLAIN + zone)).as_py():
                try:
                    return pc.cast(texts, target).cast(pa.int64())
                except pa.ArrowInvalid:  # a day or hour out of range: value by value decides
                    break
    return pa.array([one(value) for value in texts.to_pylist()], pa.int64())


def skip_by_value(account: SourceAccount, values: pa.Array, mask: np.ndarray, reason: str) -> None:
    """Count the records under ``mask`` as skipped, ``reason`` formatted with each one's value."""
    if mask.any():
        for value, count in Counter(values.filter(pa.array(mask)).to_pylist()).items():
            account.skip(reason.format(value), count)


def native_flow_batches(account: SourceAccount, rows: np.ndarray, src: pa.Array, dst: pa.Array, sport: pa.Array,
                        dport: pa.Array, proto: pa.Array, start_us: pa.Array, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """batches_from_lists for a NativeBlock's columns, converted as the line-by-line path
    converts its values: integer ports as text, "" when absent (port_or_unset), absent
    protocols "", start in epoch microseconds."""
    ports = [pc.cast(column, pa.string()).fill_null("") for column in (sport, dport)]
    yield from _batch.flow_batches(account, rows, src, dst, *ports, proto.fill_null(""), start_us.cast(_batch.START_TYPE), batch_rows)


def _start_micros(value) -> int | None:
    """A generic record's start: ISO text, epoch seconds, or epoch milliseconds, as
    tabular.generic_times reads them."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > _batch.EPOCH_MILLIS_ABOVE:
        value = value / 1000
    return json_time(value)


class _Fields:
    """Each role's value in a record: the first of its candidate paths that holds a
    scalar. The path that last answered is tried first (records of one file look alike)."""

    def __init__(self, columns: dict[str, str] | None):
        from connscan.sources.tabular import KNOWN_NAMES

        self.order = {role: [columns[role]] if columns and role in columns else list(names) for role, names in KNOWN_NAMES.items()}

    def get(self, obj: dict, role: str):
        order = self.order[role]
        for i, path in enumerate(order):
            value = path_value(obj, path)
            if value is not None and not isinstance(value, (dict, list)):
                if i:
                    order.insert(0, order.pop(i))
                return value
        return None


def sniff(head: bytes, columns: dict[str, str] | None = None) -> str | None:
    """"json" when the first record is a JSON object with source and destination fields."""
    lines = head.lstrip(b"\xef\xbb\xbf").split(b"\n")
    for line in lines[:-1] if len(lines) > 1 else lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return None
        fields = _Fields(columns)
        found = isinstance(obj, dict) and all(fields.get(obj, role) is not None for role in ("src", "dst"))
        return "json" if found else None
    return None


def read(data: ByteSource, account: SourceAccount, options: ReaderOptions) -> Iterator[pa.RecordBatch]:
    fields = _Fields(options.columns)
    for block in records(data, account, options.block_bytes):
        rows, src, dst, sport, dport, proto, start = [], [], [], [], [], [], []
        for row, obj in block:
            source, destination = fields.get(obj, "src"), fields.get(obj, "dst")
            if source is None or destination is None:
                account.skip("no source/destination address fields")
                continue
            rows.append(row)
            src.append(text_or_none(source))
            dst.append(text_or_none(destination))
            sport.append(port_or_unset(fields.get(obj, "sport")))
            dport.append(port_or_unset(fields.get(obj, "dport")))
            proto.append(text_or_none(fields.get(obj, "proto")) or "")
            start.append(_start_micros(fields.get(obj, "start")))
        yield from _batch.batches_from_lists(account, rows, src, dst, sport, dport, proto, start, options.batch_rows)
