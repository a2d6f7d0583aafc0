"""Suricata eve.json: every event with ``src_ip``/``dest_ip`` (flow, alert, tls, dns, ...).

``--event-types`` keeps only some types; the others are counted as skipped, as are events
without addresses (stats). The start time is ``flow.start`` where the event has one, else
the event ``timestamp``.
"""
from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pyarrow as pa

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


def _micros(text) -> int | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return round(moment.timestamp() * 1_000_000)


def read(data: ByteSource, account: SourceAccount, options: ReaderOptions) -> Iterator[pa.RecordBatch]:
    wanted = options.event_types
    for records in jsonlines.records(data, account, options.block_bytes):
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
            begin = _micros(flow.get("start")) if isinstance(flow, dict) else None
            rows.append(row)
            src.append(jsonlines.text_or_none(event["src_ip"]))
            dst.append(jsonlines.text_or_none(event["dest_ip"]))
            sport.append(jsonlines.port_or_unset(event.get("src_port")))
            dport.append(jsonlines.port_or_unset(event.get("dest_port")))
            proto.append(jsonlines.text_or_none(event.get("proto")) or "")
            start.append(begin if begin is not None else _micros(event.get("timestamp")))
        yield from _batch.batches_from_lists(account, rows, src, dst, sport, dport, proto, start, options.batch_rows)
