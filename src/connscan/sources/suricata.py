"""Suricata eve.json: every event with ``src_ip``/``dest_ip`` (flow, alert, tls, dns, ...).

``--event-types`` keeps only some types; the others are counted as skipped, as are events
without addresses (stats). The start time is ``flow.start`` where the event has one, else
the event ``timestamp``.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connscan.sources import ReaderOptions, SourceAccount, _batch, jsonlines
from connscan.sources.compression import ByteSource


def sniff(head: bytes) -> str | None:
    for line in head.lstrip(b"\xef\xbb\xbf").split(b"\n", 16)[:16]:
        if not line.strip():
            continue
        compact = line.replace(b" ", b"")
        if line.lstrip().startswith(b"{") and b'"event_type":' in compact and (b'"timestamp":' in compact):
            return "suricata-eve"
        return None
    return None


SCHEMA = pa.schema([("event_type", pa.string()), ("src_ip", pa.string()), ("dest_ip", pa.string()), ("src_port", pa.int64()),
                    ("dest_port", pa.int64()), ("proto", pa.string()), ("timestamp", pa.string()),
                    ("flow", pa.struct([("start", pa.string())]))])  # what pyarrow reads of each event


def read(data: ByteSource, account: SourceAccount, options: ReaderOptions) -> Iterator[pa.RecordBatch]:
    wanted = options.event_types
    for records in jsonlines.records(data, account, options.block_bytes, SCHEMA):
        if isinstance(records, jsonlines.NativeBlock):
            yield from _native_batches(account, records, wanted, options.batch_rows)
            continue
        rows, src, dst, sport, dport, proto, start = [], [], [], [], [], [], []
        for row, event in records:
            kind = jsonlines.text_or_none(event.get("event_type"))
            if wanted is not None and kind not in wanted:
                account.skip(f"event type {kind} not selected")
                continue
            if event.get("src_ip") is None or event.get("dest_ip") is None:
                account.skip(f"event without src_ip/dest_ip ({kind})")
                continue
            flow = event.get("flow")
            begin = jsonlines.zoned_micros(flow.get("start")) if isinstance(flow, dict) else None
            rows.append(row)
            src.append(jsonlines.text_or_none(event["src_ip"]))
            dst.append(jsonlines.text_or_none(event["dest_ip"]))
            sport.append(jsonlines.port_or_unset(event.get("src_port")))
            dport.append(jsonlines.port_or_unset(event.get("dest_port")))
            proto.append(jsonlines.text_or_none(event.get("proto")) or "")
            start.append(begin if begin is not None else jsonlines.zoned_micros(event.get("timestamp")))
        yield from _batch.batches_from_lists(account, rows, src, dst, sport, dport, proto, start, options.batch_rows)


def _native_batches(account: SourceAccount, block, wanted, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The loop above, in columns, over a block pyarrow parsed."""
    table, rows = block.table, block.rows
    kind = table.column("event_type").combine_chunks()
    keep = np.ones(table.num_rows, bool)
    if wanted is not None:
        keep = pc.is_in(kind, value_set=pa.array(sorted(wanted), pa.string())).fill_null(False).to_numpy(zero_copy_only=False)
        jsonlines.skip_by_value(account, kind, ~keep, "event type {} not selected")
    addressed = pc.and_(table.column("src_ip").is_valid(), table.column("dest_ip").is_valid()).to_numpy(zero_copy_only=False)
    jsonlines.skip_by_value(account, kind, keep & ~addressed, "event without src_ip/dest_ip ({})")
    keep &= addressed
    table, rows = table.filter(pa.array(keep)), rows[keep]
    column = {name: table.column(name).combine_chunks() for name in table.column_names}
    begin = jsonlines.zoned_micros_column(pc.struct_field(column["flow"], [0]))
    start = pc.coalesce(begin, jsonlines.zoned_micros_column(column["timestamp"]))
    yield from jsonlines.native_flow_batches(account, rows, column["src_ip"], column["dest_ip"], column["src_port"],
                                             column["dest_port"], column["proto"], start, batch_rows)
