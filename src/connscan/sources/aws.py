"""AWS VPC flow logs: space-separated, the default (v2) fields or a custom format named by
a header line (``version account-id interface-id srcaddr dstaddr ...``).

Without a header the default field order is assumed for the first 14 fields (versions 3-5
"all fields" formats keep them first). NODATA and SKIPDATA records carry no flow: they are
counted as skipped, not rejected.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connscan.errors import InputError
from connscan.sources import ReaderOptions, SourceAccount, _batch
from connscan.sources.compression import ByteSource
from connscan.sources.delimited import EPOCH_S, PORT, Layout, parse

DEFAULT_FIELDS = [
    "version", "account-id", "interface-id", "srcaddr", "dstaddr", "srcport", "dstport",
    "protocol", "packets", "bytes", "start", "end", "action", "log-status",
]  # fmt: skip
ROLES = {"src": "srcaddr", "dst": "dstaddr", "sport": "srcport", "dport": "dstport", "proto": "protocol", "start": "start", "status": "log-status"}
NO_FLOW = ("NODATA", "SKIPDATA")


def _first_line(head: bytes) -> str:
    for line in head.split(b"\n", 8)[:8]:
        if line.strip():
            return line.decode("utf-8", "replace").strip()
    return ""


def _is_default_record(tokens: list[str]) -> bool:
    return (
        len(tokens) >= 14
        and tokens[0].isdigit()
        and 2 <= int(tokens[0]) <= 10
        and (tokens[1].isdigit() or tokens[1] == "-")
        and tokens[12] in ("ACCEPT", "REJECT", "-")
        and tokens[13] in ("OK", "NODATA", "SKIPDATA")
    )


def sniff(head: bytes) -> str | None:
    tokens = _first_line(head).split(" ")
    if "srcaddr" in tokens and "dstaddr" in tokens:
        return "aws-vpc"
    return "aws-vpc" if _is_default_record(tokens) else None


def read(data: ByteSource, account: SourceAccount, options: ReaderOptions) -> Iterator[pa.RecordBatch]:
    first = _first_line(data.head)
    tokens = first.split(" ")
    skip = 0
    if "srcaddr" in tokens and "dstaddr" in tokens:
        names = tokens
        skip = data.head.index(b"\n") + 1 if b"\n" in data.head else len(data.head)
    elif _is_default_record(tokens):
        names = DEFAULT_FIELDS + [f"field-{i + 1}" for i in range(len(DEFAULT_FIELDS), len(tokens))]
    else:
        raise InputError(f"{account.name}: not an AWS VPC flow log (no header, first line is not a default-format record)")
    roles = {role: col for role, col in ROLES.items() if col in names}
    kinds = {roles[r]: PORT for r in ("sport", "dport") if r in roles}
    if "start" in roles:
        kinds[roles["start"]] = EPOCH_S
    layout = Layout(names=names, wanted=list(roles.values()), delimiter=" ", kinds=kinds, roles={v: k for k, v in roles.items()})
    for block in parse(data, account, layout, options.block_bytes, skip_bytes=skip):
        table, rows = block.table, block.rows
        if "status" in roles:
            table, rows = without_no_flow(account, table, rows, roles["status"])
        yield from _batch.batches_from_table(account, rows, table, roles, options.batch_rows, _batch.epoch_micros)


def without_no_flow(account: SourceAccount, table, rows: np.ndarray, status_column: str):
    """(table, rows) without the NODATA/SKIPDATA records (log status in ``status_column``),
    which are counted as skipped by their status."""
    status = table.column(status_column)
    if isinstance(status, pa.ChunkedArray):
        status = status.combine_chunks()
    try:
        status = status.cast(pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        return table, rows  # a column of that name that holds no status text
    no_flow = pc.is_in(status, value_set=pa.array(NO_FLOW)).fill_null(False).to_numpy(zero_copy_only=False)
    if not no_flow.any():
        return table, rows
    for reason, count in zip(*np.unique(status.filter(pa.array(no_flow)).to_numpy(zero_copy_only=False), return_counts=True)):
        account.skip(str(reason), int(count))
    return table.filter(pa.array(~no_flow)), rows[~no_flow]
