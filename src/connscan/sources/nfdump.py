"""nfdump text exports: ``-o csv`` (1.6/1.7, local time) and 1.7 ``-o csv-fast`` (epoch ms).

``-o csv`` prints the flow start (``ts``) as local wall-clock time without a zone (``--tz``
says which zone; default: this host's) and ends with a ``Summary`` block that is not data.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import pyarrow as pa

from connscan.sources import ReaderOptions, SourceAccount
from connscan.sources import _batch
from connscan.sources.compression import ByteSource
from connscan.sources.delimited import EPOCH_MS, FOOTER, PORT, REJECT, WALLCLOCK, Layout, parse

CSV_PREFIX = b"ts,te,td,sa,da,sp,dp,pr"
FAST_PREFIX = b"cnt,af,firstSeen,lastSeen,proto,srcAddr,srcPort,dstAddr,dstPort"

# role -> column, per flavour
CSV_COLUMNS = {"start": "ts", "src": "sa", "dst": "da", "sport": "sp", "dport": "dp", "proto": "pr"}
FAST_COLUMNS = {"start": "firstSeen", "src": "srcAddr", "dst": "dstAddr", "sport": "srcPort", "dport": "dstPort", "proto": "proto"}


def sniff(head: bytes) -> str | None:
    first = head.lstrip(b"\xef\xbb\xbf")
    if first.startswith(CSV_PREFIX):
        return "nfdump-csv"
    if first.startswith(FAST_PREFIX):
        return "nfdump-csv-fast"
    return None


def local_zone() -> str:
    """This host's time zone name (what nfdump used when it printed local time)."""
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        return tz
    try:
        target = os.readlink("/etc/localtime")
    except OSError:
        return "UTC"
    marker = "zoneinfo/"
    return target[target.index(marker) + len(marker) :] if marker in target else "UTC"


def read(data: ByteSource, account: SourceAccount, options: ReaderOptions, fast: bool = False) -> Iterator[pa.RecordBatch]:
    header_end = data.head.find(b"\n")
    header = data.head[: header_end if header_end >= 0 else len(data.head)]
    names = header.decode("utf-8", "replace").lstrip("\ufeff").strip().split(",")
    roles = FAST_COLUMNS if fast else CSV_COLUMNS
    kinds = {roles["sport"]: PORT, roles["dport"]: PORT, roles["start"]: EPOCH_MS if fast else WALLCLOCK}
    layout = Layout(names=names, wanted=list(roles.values()), delimiter=",", kinds=kinds, roles={v: k for k, v in roles.items()})
    tz = options.tz or local_zone()
    in_footer = False

    def classify(text: str) -> str:
        nonlocal in_footer
        if text.strip() == "Summary":
            in_footer = True
        return FOOTER if in_footer else REJECT

    skip = header_end + 1 if header_end >= 0 else len(data.head)
    for block in parse(data, account, layout, options.block_bytes, classify, skip_bytes=skip, join_rows=options.batch_rows):
        table = block.table
        start = table.column(roles["start"]).combine_chunks()
        if fast:
            start = start.cast(pa.int64()).cast(_batch.START_TYPE)
        else:  # local wall-clock time of zone tz
            start = _batch.wallclock_to_utc(start, tz)
        yield from _batch.flow_batches(
            account,
            block.rows,
            table.column(roles["src"]).combine_chunks(),
            table.column(roles["dst"]).combine_chunks(),
            table.column(roles["sport"]).combine_chunks(),
            table.column(roles["dport"]).combine_chunks(),
            table.column(roles["proto"]).combine_chunks(),
            start,
            options.batch_rows,
        )
