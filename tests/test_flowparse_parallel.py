"""Blocks split ahead in threads and joined into bigger batches give exactly what the
sequential, one-block-at-a-time path gives: the same rows, row numbers, rejects (with
their row numbers and reasons), footers and accounting.

Expectations for the generated inputs are computed from the list of lines that was
written (which lines are bad, and why), not by the reader under test.
"""
from __future__ import annotations

import io
import random
import threading
import time

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connscan.sources import BATCH_SCHEMA, ReaderOptions, SourceAccount, delimited, open_source
from connscan.sources.compression import ByteSource
from connscan.sources.delimited import PORT, WALLCLOCK, Layout, parse

NAMES = ["ts", "te", "sa", "da", "sp", "dp", "pr", "extra"]
LAYOUT = Layout(names=NAMES, wanted=["ts", "sa", "da", "sp", "dp", "pr"], kinds={"ts": WALLCLOCK, "sp": PORT, "dp": PORT}, roles={"sp": "sport", "dp": "dport"})

# kind of line -> (text, what the reader must say about it: None = a good record)
LINE_KINDS = {
    "good": (lambda i: f"2024-01-01 00:00:{i % 60:02d},x,10.0.{i % 250}.{i % 7},10.1.0.{i % 9},{1000 + i % 60000},{i % 1024},TCP,0", None),
    "short": (lambda i: f"2024-01-01 00:00:00,x,10.0.0.{i % 9}", "expected 8 fields, got 3"),
    "bytes": (lambda i: "2024-01-01 00:00:00,x,10.0.0.\xff,10.1.0.1,1,2,TCP,0", "non-text bytes in an address, port, protocol or time field"),
    "port": (lambda i: f"2024-01-01 00:00:00,x,10.0.0.1,10.1.0.1,{70000 + i},2,TCP,0", "invalid sport"),
    "comment": (lambda i: f"#comment {i}", "comment"),
    "blank": (lambda i: "", "blank"),
    "crlf": (lambda i: f"2024-01-01 00:00:01,x,10.0.0.{i % 9},10.1.0.1,53,53,UDP,0\r", None),
}


def _generate(kinds: list[str]) -> tuple[bytes, list[int], list[tuple[int, str]]]:
    """File bytes, row numbers of the good records, (row, reason) of the rejects."""
    lines, good, rejects = [], [], []
    row = 0
    for i, kind in enumerate(kinds):
        make, verdict = LINE_KINDS[kind]
        text = make(i)
        lines.append(text)
        if verdict in ("comment", "blank"):
            continue  # not a record: no row number
        row += 1
        if verdict is None:
            good.append(row)
        else:
            rejects.append((row, verdict))
    return ("\n".join(lines) + "\n").encode().replace(b"\xc3\xbf", b"\xff"), good, rejects  # U+00FF -> raw 0xff


def _parse(data: bytes, block_bytes: int, workers: int, join_rows: int):
    account = SourceAccount("generated")
    blocks = list(parse(ByteSource(None, io.BytesIO(data), None), account, LAYOUT, block_bytes, comment="#", workers=workers, join_rows=join_rows))
    return blocks, account


def _rows_and_table(blocks):
    rows = [int(r) for block in blocks for r in block.rows]
    table = pa.concat_tables([block.table for block in blocks]) if blocks else None
    return rows, table


@settings(max_examples=60, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(sorted(LINE_KINDS)), min_size=1, max_size=300),
    block_bytes=st.sampled_from([64, 200, 1000, 4096]),
    join_rows=st.sampled_from([0, 1, 7, 50, 10_000]),
)
def test_threads_and_joins_give_the_sequential_result(kinds, block_bytes, join_rows):
    data, good, rejects = _generate(kinds)
    sequential, seq_account = _parse(data, block_bytes, workers=0, join_rows=0)
    parallel, par_account = _parse(data, block_bytes, workers=2, join_rows=join_rows)
    seq_rows, seq_table = _rows_and_table(sequential)
    par_rows, par_table = _rows_and_table(parallel)
    # the independent expectation
    assert seq_rows == good
    assert [(row, reason) for row, reason, _ in seq_account.pending_rejects] == rejects
    # the threaded/joined path: exactly the same
    assert par_rows == seq_rows
    assert par_table.equals(seq_table)
    assert par_account.pending_rejects == seq_account.pending_rejects
    assert par_account.rejected == seq_account.rejected
    # joined blocks hold exactly join_rows rows, but the last
    if join_rows and parallel:
        assert all(len(block.rows) == join_rows for block in parallel[:-1])
        assert len(parallel[-1].rows) <= join_rows


def test_bad_line_at_every_position_of_a_block():
    # a bad line at each offset within a block of ~40 lines, over many blocks
    kinds = []
    for position in range(45):
        kinds += ["good"] * position + [random.Random(position).choice(["short", "bytes", "port", "comment", "blank"])] + ["good"] * (44 - position)
    data, good, rejects = _generate(kinds)
    line_bytes = len(LINE_KINDS["good"][0](0)) + 1
    for block_bytes in (40 * line_bytes, 40 * line_bytes + 17):
        blocks, account = _parse(data, block_bytes, workers=2, join_rows=131_072)
        rows, _ = _rows_and_table(blocks)
        assert rows == good
        assert [(row, reason) for row, reason, _ in account.pending_rejects] == rejects


def _read(path, workers, monkeypatch, **options):
    monkeypatch.setattr(delimited, "SPLIT_WORKERS", workers)
    source = open_source(str(path), None, ReaderOptions(tz="UTC", **options), session={})
    batches = list(source.batches())
    table = pa.Table.from_batches(batches, schema=BATCH_SCHEMA)
    account = source.account
    return table, len(batches), (account.records_read, account.records_scanned, dict(account.rejected), dict(account.skipped), account.pending_rejects)


@pytest.mark.parametrize(
    "name",
    [
        "netflow-softflowd-from-zeek-traces/nfdump-v9.csv",  # Summary footer
        "netflow-softflowd-from-zeek-traces/nfdump-v5.csv",
        "zeek-malware-conn/trickbot-2018-11-conn.log",  # #close comment
        "zeek-malware-conn/elmMinh-20250929_114248-conn.log",
    ],
)
def test_real_samples_threaded_in_small_blocks_equal_sequential(shared_data, monkeypatch, name):
    path = shared_data / "flows" / name
    reference, _, ref_account = _read(path, 0, monkeypatch, block_bytes=1 << 30, batch_rows=1 << 30)
    threaded, n_batches, account = _read(path, 2, monkeypatch, block_bytes=8192, batch_rows=4000)
    assert reference.num_rows > 1000
    assert threaded.equals(reference)
    assert account == ref_account
    assert n_batches >= reference.num_rows // 4000


def test_rows_beyond_the_footer_are_not_records(monkeypatch, tmp_path):
    # the footer's classification is stateful: the lines after "Summary" must stay footers
    # however the blocks fall
    header = "ts,te,td,sa,da,sp,dp,pr"
    good = [f"2024-01-01 00:00:00,2024-01-01 00:00:01,1.0,10.0.0.{i % 250},10.1.0.1,{i},80,TCP" for i in range(2000)]
    path = tmp_path / "nfdump.csv"
    path.write_text(header + "\n" + "\n".join(good) + "\nSummary\nflows,bytes\n1,2\n" + "x,y\n" * 500)
    for block_bytes in (100, 333, 4096):
        table, _, (read, scanned, rejected, skipped, _) = _read(path, 2, monkeypatch, block_bytes=block_bytes, batch_rows=512)
        assert table.column("sport").to_pylist() == list(range(2000))
        assert (read, scanned, rejected, skipped) == (2000, 2000, {}, {})


def test_in_order_keeps_order_and_bounds_the_look_ahead():
    started = []
    lock = threading.Lock()

    def work(item):
        with lock:
            started.append(item)
        time.sleep(random.Random(item).random() / 500)
        return item * item

    consumed = []
    for item, result in delimited._in_order(work, iter(range(40)), 2):
        assert result == item * item
        consumed.append(item)
        with lock:
            assert max(started) <= item + 3  # at most workers + 1 items ahead
    assert consumed == list(range(40))
    assert sorted(started) == list(range(40))  # each item worked on once, by a thread or inline


def test_in_order_reports_a_failure_after_the_items_before_it():
    def work(item):
        if item == 5:
            raise ValueError("block 5 is broken")
        return item

    seen = []
    with pytest.raises(ValueError, match="block 5"):
        for item, _ in delimited._in_order(work, iter(range(10)), 2):
            seen.append(item)
    assert seen == [0, 1, 2, 3, 4]


def test_in_order_stops_cleanly_when_the_consumer_stops():
    pulled = []

    def items():
        for i in range(1000):
            pulled.append(i)
            yield i

    results = delimited._in_order(lambda item: item, items(), 2)
    assert [next(results)[0] for _ in range(3)] == [0, 1, 2]
    results.close()  # joins the pool; must not read the rest
    assert len(pulled) <= 6
