"""Flow readers: every export format becomes the same Arrow batch (the contract below).

Batch contract (docs/ARCHITECTURE.md, "Flow batches"). Every reader yields
``pyarrow.RecordBatch``es of at most ``batch_rows`` rows with exactly ``BATCH_SCHEMA``:

    src, dst: string               endpoint address text, as written in the export
    sport, dport: int32            -1 when the export has no port (ICMP, unset, absent)
    proto: string                  "tcp", "udp", "icmp", "icmp6", other names lower-case,
                                   unnamed protocols as their number ("99"); "" unknown
    start: timestamp[us, UTC]      flow start; null when the format has none
    row: int64                     1-based number of the data record within its file,
                                   counting every data record (scanned, rejected or
                                   skipped) and nothing else (headers, comments, footers)

Every record a reader sees ends in exactly one of three places: a batch row (counted by
``FlowSource.batches()``, not by the reader), a rejected record (``account.reject(row, reason, text)``), or a skipped record
(``account.skip(reason, row)``, e.g. AWS NODATA). ``account.records_read`` counts them all.
Damage that ends a file early (a truncated compressed stream) goes to
``account.errors`` (and ``account.damaged``), so a shorter scan is never silent.

``open_source(path, input_format=None, ...)`` sniffs the (decompressed) content and returns
a ``FlowSource``: ``.name``, ``.format``, ``.account`` (``.rejects`` for short), and
``.batches()``. It raises ``InputError`` (naming the file) for an unreadable file or an
unknown format.

Reader modules: nfdump.py, zeek.py, suricata.py, aws.py, tabular.py (generic CSV/TSV,
Parquet, Arrow IPC), jsonlines.py (generic JSON lines) and netflow.py (helper-owned; hook below). The NetFlow hook: the module
``connscan.sources.netflow`` exposes ``sniff(head: bytes) -> bool`` and
``read_netflow(path_or_stream, source_name, **kw) -> Iterator[RecordBatch]``; open_source
passes ``account=`` and ``session=`` (a dict shared by every file of one run, for templates
that arrive in a later file) when its signature accepts them.
"""
from __future__ import annotations

import io
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import pyarrow as pa

from connscan.errors import InputError
from connscan.sources.compression import ByteSource, open_bytes

BATCH_SCHEMA = pa.schema(
    [
        ("src", pa.string()),
        ("dst", pa.string()),
        ("sport", pa.int32()),
        ("dport", pa.int32()),
        ("proto", pa.string()),
        ("start", pa.timestamp("us", tz="UTC")),
        ("row", pa.int64()),
    ]
)

# About six 4 MB blocks of nfdump CSV, three of Zeek: the per-batch Python work of every
# stage counts once per 131k rows (65k: about 10% slower end to end; 196k: no faster within
# the noise, for 20-50 MB more at the peak; 262k: over the memory budget of `connscan flows`).
DEFAULT_BATCH_ROWS = 131_072
DEFAULT_BLOCK_BYTES = 4 << 20  # small enough to stay in cache between split and gather

FORMATS = (
    "nfdump-csv",
    "nfdump-csv-fast",
    "zeek-tsv",
    "zeek-json",
    "suricata-eve",
    "aws-vpc",
    "csv",
    "json",
    "parquet",
    "arrow",
    "netflow",
)


@dataclass
class SourceAccount:
    """What happened to every record of one input file."""

    name: str
    records_read: int = 0
    records_scanned: int = 0
    rejected: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    damaged: bool = False
    bytes_done: int = 0
    bytes_total: int | None = None
    # (row, reason, text) of rejects not yet handed to a --rejects writer
    pending_rejects: list[tuple[int, str, str]] = field(default_factory=list)

    def reject(self, row: int, reason: str, text: str = "") -> None:
        self.records_read += 1
        self.rejected[reason] += 1
        self.pending_rejects.append((row, reason, text))

    def skip(self, reason: str, count: int = 1) -> None:
        self.records_read += count
        self.skipped[reason] += count

    def accept(self, count: int) -> None:
        """Count the rows of a yielded batch (flows.py moves invalid addresses to rejected)."""
        self.records_read += count
        self.records_scanned += count

    def unscan(self, row: int, reason: str, text: str = "") -> None:
        """A batch row turned out unusable downstream (invalid address): reject it."""
        self.records_scanned -= 1
        self.records_read -= 1
        self.reject(row, reason, text)

    def damage(self, message: str) -> None:
        self.damaged = True
        self.errors.append(f"{self.name}: {message}")

    def take_rejects(self) -> list[tuple[int, str, str]]:
        out, self.pending_rejects = self.pending_rejects, []
        return out

    @property
    def rejects(self) -> Counter:
        return self.rejected


@dataclass
class ReaderOptions:
    """Format options from the command line (``connscan flows``)."""

    tz: str | None = None  # nfdump -o csv local time zone; None = this host's zone
    event_types: frozenset[str] | None = None  # suricata event types; None = all
    columns: dict[str, str] | None = None  # role -> column name (src, dst, sport, dport, proto, start)
    batch_rows: int = DEFAULT_BATCH_ROWS
    block_bytes: int = DEFAULT_BLOCK_BYTES


class FlowSource:
    """One input file opened for reading: ``.batches()`` yields the contract batches."""

    def __init__(self, name: str, fmt: str, account: SourceAccount, reader: Callable[[], Iterator[pa.RecordBatch]]):
        self.name = name
        self.format = fmt
        self.account = account
        self._reader = reader

    @property
    def rejects(self) -> Counter:
        return self.account.rejected

    def batches(self) -> Iterator[pa.RecordBatch]:
        for batch in self._reader():
            if batch.num_rows:
                self.account.accept(batch.num_rows)
                yield batch


def detect_format(head: bytes) -> str | None:
    """The format of a (decompressed) file from its first bytes, or None."""
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"ARROW1") or head.startswith(b"\xff\xff\xff\xff"):
        return "arrow"
    from connscan.sources import aws, jsonlines, netflow, nfdump, suricata, tabular, zeek

    if netflow.sniff(head):
        return "netflow"
    for sniff in (nfdump.sniff, zeek.sniff, suricata.sniff, aws.sniff, jsonlines.sniff, tabular.sniff_delimited):
        fmt = sniff(head)
        if fmt:
            return fmt
    return None


def open_source(
    path: str | os.PathLike,
    input_format: str | None = None,
    options: ReaderOptions | None = None,
    *,
    session: dict | None = None,
    stdin: BinaryIO | None = None,
) -> FlowSource:
    """Open ``path`` ("-" = stdin), detect its format (unless forced) and return a FlowSource."""
    options = options or ReaderOptions()
    name = "<stdin>" if str(path) == "-" else str(path)
    if input_format is not None and input_format not in FORMATS:
        raise InputError(f"{name}: unknown input format {input_format!r} (known: {', '.join(FORMATS)})")
    account = SourceAccount(name)
    try:
        data = open_bytes(path, stdin=stdin or sys.stdin.buffer)
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {exc.strerror or exc}") from exc
    account.bytes_total = data.size
    data.account = account
    fmt = input_format or detect_format(data.head)
    if fmt is None and options.columns:  # fields only --columns names
        from connscan.sources import jsonlines, tabular

        numbered = tabular.by_position(options.columns)  # no header line to recognise
        fmt = tabular.sniff_numbered(data.head) if numbered else jsonlines.sniff(data.head, options.columns)
    if fmt is None:
        data.close()
        if not data.head:
            raise InputError(f"{name}: empty input")
        raise InputError(f"{name}: unknown flow format (use --input-format to force one of: {', '.join(FORMATS)})")
    reader = _reader_for(fmt, data, account, options, session if session is not None else {})
    return FlowSource(name, fmt, account, reader)


def _reader_for(fmt: str, data: ByteSource, account: SourceAccount, options: ReaderOptions, session: dict):
    from connscan.sources import aws, jsonlines, nfdump, suricata, tabular, zeek

    if fmt in ("nfdump-csv", "nfdump-csv-fast"):
        return lambda: _closing(data, nfdump.read(data, account, options, fast=fmt == "nfdump-csv-fast"))
    if fmt == "zeek-tsv":
        return lambda: _closing(data, zeek.read_tsv(data, account, options))
    if fmt == "zeek-json":
        return lambda: _closing(data, zeek.read_json(data, account, options))
    if fmt == "suricata-eve":
        return lambda: _closing(data, suricata.read(data, account, options))
    if fmt == "aws-vpc":
        return lambda: _closing(data, aws.read(data, account, options))
    if fmt == "csv":
        return lambda: _closing(data, tabular.read_delimited(data, account, options))
    if fmt == "json":
        return lambda: _closing(data, jsonlines.read(data, account, options))
    if fmt in ("parquet", "arrow"):
        return lambda: _closing(data, tabular.read_columnar(data, account, options, fmt))
    if fmt == "netflow":
        return lambda: _closing(data, _read_netflow(data, account, session))
    raise AssertionError(fmt)


def _read_netflow(data: ByteSource, account: SourceAccount, session: dict) -> Iterator[pa.RecordBatch]:
    from connscan.sources import netflow

    target = data.path if data.path is not None and data.compression is None else io.BufferedReader(data.raw_stream())
    yield from netflow.read_netflow(target, account.name, account=account, session=session)


def _closing(data: ByteSource, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    try:
        yield from batches
    finally:
        data.close()


__all__ = [
    "BATCH_SCHEMA",
    "FORMATS",
    "FlowSource",
    "ReaderOptions",
    "SourceAccount",
    "detect_format",
    "open_source",
]
