"""Generic tables: CSV/TSV with a header line, Parquet and Arrow IPC (file or stream).

Columns are found by their common names (``src_ip``, ``srcaddr``, ``source.ip``, ...,
case-insensitive) or named with ``--columns src=..,dst=..,sport=..,dport=..,proto=..,start=..``;
in Parquet and Arrow the fields of struct columns are named ``outer.inner`` (ECS ``source.ip``).
``--columns`` given by field numbers (``src=3,dst=5``, counted from 1) reads a CSV/TSV
without a header line: its first line is data, lines starting with ``#`` are comments.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connscan.errors import InputError
from connscan.sources import ReaderOptions, SourceAccount, _batch, jsonlines
from connscan.sources.compression import ByteSource
from connscan.sources.delimited import Layout, parse

KNOWN_NAMES = {
    "src": ("src_ip", "srcaddr", "source.ip", "src_addr", "source_ip", "srcip", "src", "source", "sa",
            "id.orig_h", "source_address", "saddr", "ip_src", "ipv4_src_addr", "ipv6_src_addr", "src_address",
            "jsonPayload.connection.src_ip", "connection.src_ip"),
    "dst": ("dst_ip", "dstaddr", "destination.ip", "dst_addr", "dest_ip", "destination_ip", "dstip", "dst",
            "destination", "da", "id.resp_h", "destination_address", "daddr", "ip_dst", "ipv4_dst_addr",
            "ipv6_dst_addr", "dst_address", "jsonPayload.connection.dest_ip", "connection.dest_ip"),
    "sport": ("src_port", "srcport", "source.port", "sport", "sp", "id.orig_p", "l4_src_port", "source_port",
              "jsonPayload.connection.src_port", "connection.src_port"),
    "dport": ("dst_port", "dstport", "destination.port", "dport", "dp", "dest_port", "id.resp_p", "l4_dst_port",
              "destination_port", "jsonPayload.connection.dest_port", "connection.dest_port"),
    "proto": ("protocol", "proto", "pr", "network.transport", "ip_proto", "transport", "network.iana_number",
              "jsonPayload.connection.protocol", "connection.protocol"),
    "start": ("jsonPayload.start_time", "start", "start_time", "ts", "timestamp", "@timestamp", "first_seen", "firstseen", "event.start",
              "flow_start", "stime", "time"),
}  # fmt: skip

DELIMITERS = (",", "\t", ";", "|")
# AWS VPC flow logs delivered as Parquet or queried to CSV: NODATA/SKIPDATA records carry
# no flow and are counted as skipped (aws.without_no_flow), as in the text logs.
STATUS_NAMES = ("log_status", "log-status")


def _status_column(names: list[str]) -> str | None:
    lower = {name.strip().lower(): name for name in names}
    return next((lower[n] for n in STATUS_NAMES if n in lower), None)


def _batches(account: SourceAccount, rows, table, roles: dict[str, str], status: str | None, options: ReaderOptions, convert_start,
             prepare=None) -> Iterator[pa.RecordBatch]:
    """The contract batches of one table of records, without AWS's no-flow records."""
    from connscan.sources.aws import without_no_flow

    if status is not None:
        table, rows = without_no_flow(account, table, rows, status)
    yield from _batch.batches_from_table(account, rows, table, roles, options.batch_rows, convert_start, prepare=prepare)


def resolve_columns(names: list[str], overrides: dict[str, str] | None) -> dict[str, str]:
    """role -> column name, from --columns first, then the known names."""
    lower = {name.strip().lower(): name for name in names}
    roles: dict[str, str] = {}
    for role, candidates in KNOWN_NAMES.items():
        if overrides and role in overrides:
            wanted = overrides[role]
            if wanted not in names and wanted.lower() not in lower:
                raise InputError(f"--columns {role}={wanted}: no such column (columns: {', '.join(names)})")
            roles[role] = wanted if wanted in names else lower[wanted.lower()]
            continue
        found = next((lower[c] for c in candidates if c in lower), None)
        if found is not None:
            roles[role] = found
    return roles


def by_position(columns: dict[str, str] | None) -> bool:
    """Whether ``--columns`` gives field numbers (a file without a header line)."""
    return bool(columns) and all(value.isdigit() for value in columns.values())


def _fields(line: str) -> tuple[str, list[str]] | None:
    """(delimiter, fields) of one line: the most frequent of DELIMITERS, which must occur."""
    delimiter = max(DELIMITERS, key=line.count)
    return (delimiter, line.split(delimiter)) if line.count(delimiter) else None


def _header(head: bytes) -> tuple[str, list[str], int] | None:
    """(delimiter, column names, bytes up to the data) of a delimited file with a header."""
    text = head.lstrip(b"\xef\xbb\xbf")
    bom = len(head) - len(text)
    end = text.find(b"\n")
    line = (text[:end] if end >= 0 else text).decode("utf-8", "replace").rstrip("\r")
    found = _fields(line) if line.strip() else None
    if found is None:
        return None
    delimiter, names = found
    return delimiter, [name.strip().strip('"') for name in names], bom + (end + 1 if end >= 0 else len(text))


def _numbered(head: bytes) -> tuple[str, list[str], int] | None:
    """(delimiter, field numbers "1".."n", bytes of the byte order mark) of a file without a
    header line, from its first line that is neither blank nor a ``#`` comment."""
    text = head.lstrip(b"\xef\xbb\xbf")
    lines = text.split(b"\n")
    for line in lines[:-1] if len(lines) > 1 else lines:
        line = line.decode("utf-8", "replace").rstrip("\r")
        if line.strip() and not line.startswith("#"):
            found = _fields(line)
            if found is None:
                return None
            delimiter, fields = found
            return delimiter, [str(number) for number in range(1, len(fields) + 1)], len(head) - len(text)
    return None


def sniff_numbered(head: bytes) -> str | None:
    """"csv" for text whose lines split into fields (with --columns by number)."""
    return "csv" if _numbered(head) is not None and b"\0" not in head else None


def sniff_delimited(head: bytes) -> str | None:
    found = _header(head)
    if found is None:
        return None
    roles = resolve_columns(found[1], None)
    return "csv" if "src" in roles and "dst" in roles else None


def read_delimited(data: ByteSource, account: SourceAccount, options: ReaderOptions) -> Iterator[pa.RecordBatch]:
    numbered = by_position(options.columns)
    found = _numbered(data.head) if numbered else _header(data.head)
    if found is None:
        raise InputError(f"{account.name}: " + ("no line of delimited fields" if numbered else "no header line with column names"))
    delimiter, names, skip = found
    if numbered and (missing := {role: n for role, n in options.columns.items() if n not in names}):
        role, number = next(iter(missing.items()))
        raise InputError(f"{account.name}: --columns {role}={number}: its first line has {len(names)} fields")
    roles = _require(account, names, options)
    status = None if numbered else _status_column(names)
    layout = Layout(names=names, wanted=list(dict.fromkeys([*roles.values(), *([status] if status else [])])),
                    delimiter=delimiter, quoting=True)
    for block in parse(data, account, layout, options.block_bytes, skip_bytes=skip, comment="#" if numbered else None):
        yield from _batches(account, block.rows, block.table, roles, status, options, generic_times, prepare=pc.utf8_trim_whitespace)


def _require(account: SourceAccount, names: list[str], options: ReaderOptions) -> dict[str, str]:
    roles = resolve_columns(names, options.columns)
    if "src" not in roles or "dst" not in roles:
        raise InputError(
            f"{account.name}: no source/destination address columns found (columns: {', '.join(names)}); "
            "name them with --columns src=..,dst=.."
        )
    return roles


def generic_times(column: pa.Array) -> pa.Array:
    """Start times of unknown style: timestamps, epoch seconds/milliseconds, ISO 8601 text."""
    if pa.types.is_timestamp(column.type):
        if column.type.tz is None:
            return pc.assume_timezone(column.cast(pa.timestamp("us")), "UTC")
        return column.cast(_batch.START_TYPE)
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        values = pc.cast(column, pa.float64())
        millis = pc.greater(values, _batch.EPOCH_MILLIS_ABOVE)
        seconds = pc.if_else(millis, pc.divide(values, 1000.0), values)
        return _batch.epoch_seconds(seconds)
    text = column.cast(pa.string())
    numeric = pc.match_substring_regex(text, r"^[0-9]+(\.[0-9]*)?$").fill_null(False)
    if pc.all(numeric).as_py() and len(text):
        return generic_times(pc.cast(text, pa.float64()))
    return jsonlines.iso_micros_column(text, _iso_micros, naive_utc=True).cast(_batch.START_TYPE)


def _iso_micros(text: str | None) -> int | None:
    """ISO 8601 text, spaces around it allowed, without a zone UTC -> epoch microseconds."""
    return jsonlines.json_time(text.strip()) if text else None


def read_columnar(data: ByteSource, account: SourceAccount, options: ReaderOptions, fmt: str) -> Iterator[pa.RecordBatch]:
    """Parquet or Arrow IPC, streamed batch by batch (whole file in memory only when piped)."""
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    if data.path is not None and data.compression is None:
        source = data.path
    else:  # stdin or compressed: these formats need random access
        source = pa.BufferReader(data.read_all())
    try:
        if fmt == "parquet":
            parquet = pq.ParquetFile(source)
            roles = _require_typed(account, parquet.schema_arrow, options)
            status = _status_column(parquet.schema_arrow.names)
            wanted = [*roles.values(), *([status] if status else [])]
            top = [column.split(".", 1)[0] if column not in parquet.schema_arrow.names else column for column in wanted]
            batches = parquet.iter_batches(batch_size=options.batch_rows, columns=list(dict.fromkeys(top)))
        else:
            reader = _open_ipc(ipc, source)
            roles = _require_typed(account, reader.schema, options)
            status = _status_column(reader.schema.names)
            batches = _ipc_batches(reader)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{account.name}: unreadable {fmt} file: {exc}") from exc
    row = 0
    try:
        for batch in map(_flattened, batches):
            n = batch.num_rows
            rows = np.arange(row + 1, row + n + 1, dtype=np.int64)
            row += n
            yield from _batches(account, rows, batch, roles, status, options, generic_times)
    except (pa.ArrowInvalid, OSError) as exc:
        account.damage(f"{fmt} data unreadable after {row} records ({exc})")


def _require_typed(account: SourceAccount, schema: pa.Schema, options: ReaderOptions) -> dict[str, str]:
    """_require over the flattened columns, each of a type whose values have a text form
    (a list or map column cannot hold an address, port or time)."""
    types = _flat_types(schema)
    roles = _require(account, list(types), options)
    for role, column in roles.items():
        try:
            pa.array([], types[column]).cast(pa.string())
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
            raise InputError(f"{account.name}: column {column} ({role}) is of type {types[column]}, "
                             "which holds no address, port, protocol or time") from None
    return roles


def _flat_types(schema: pa.Schema, prefix: str = "") -> dict[str, pa.DataType]:
    """Column name -> type, the fields of struct columns named "outer.inner" (ECS-style
    ``source.ip`` nested in a ``source`` struct), as _flattened makes them."""
    types = {}
    for field in schema:
        if pa.types.is_struct(field.type):
            types.update(_flat_types(pa.schema(list(field.type)), f"{prefix}{field.name}."))
        else:
            types[prefix + field.name] = field.type
    return types


def _flattened(batch: pa.RecordBatch) -> pa.RecordBatch | pa.Table:
    """``batch`` with its struct columns replaced by their fields (see _flat_types)."""
    if not any(pa.types.is_struct(field.type) for field in batch.schema):
        return batch
    table = pa.Table.from_batches([batch])
    while any(pa.types.is_struct(field.type) for field in table.schema):
        table = table.flatten()
    return table


def _ipc_batches(reader) -> Iterator[pa.RecordBatch]:
    if hasattr(reader, "num_record_batches"):  # file format: random access by index
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)
    else:
        yield from reader


def _open_ipc(ipc, source):
    try:
        return ipc.open_file(source)
    except pa.ArrowInvalid:
        if isinstance(source, str):
            return ipc.open_stream(pa.OSFile(source))
        source.seek(0)
        return ipc.open_stream(source)
