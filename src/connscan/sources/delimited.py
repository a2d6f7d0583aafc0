"""Delimited text (nfdump CSV, Zeek TSV, AWS, generic CSV/TSV) in blocks of whole lines.

Each block is split by the native field extractor (unquoted formats) or pyarrow's CSV
parser (quoted CSV), reading only the wanted columns as strings. Lines that do not fit
come back with their index among the block's non-blank lines, which gives every record
its exact row number: records are the non-blank lines that are neither comments nor a
footer.
"""
from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from connscan import _native
from connscan.sources import SourceAccount
from connscan.sources.compression import ByteSource

# What the invalid-row classifier says about a line that does not fit the layout.
COMMENT, FOOTER, REJECT, BAD_BYTES = "comment", "footer", "reject", "bad-bytes"


# Column kinds for the native extractor (unquoted layouts); quoted layouts give text.
TEXT, PORT, WALLCLOCK, EPOCH_S, EPOCH_MS = 0, 1, 2, 3, 4

# Threads that split blocks ahead of the consumer (the native split runs without the GIL);
# 0 splits in the consuming thread.
SPLIT_WORKERS = 2 if (os.cpu_count() or 1) > 1 else 0


@dataclass
class Layout:
    names: list[str]  # every column of the file, in order
    wanted: list[str]  # the columns to extract
    delimiter: str = ","
    quoting: bool = False
    kinds: dict[str, int] | None = None  # wanted column -> kind (default TEXT)
    roles: dict[str, str] | None = None  # wanted column -> role name, for reject reasons


class LayoutChange(Exception):
    """A line (``parse``'s ``restart``) says the lines from it on have another layout:
    ``rest`` holds the bytes from that line to the end, ``records`` the data records
    before it (what the next section's row numbers follow)."""

    def __init__(self, rest: Iterator[bytes], records: int = 0):
        super().__init__("layout change")
        self.rest, self.records = rest, records


@dataclass
class Block:
    table: pa.Table  # the wanted columns, one row per valid record
    rows: np.ndarray  # int64 record number of each table row


def parse(
    data: ByteSource,
    account: SourceAccount,
    layout: Layout,
    block_bytes: int,
    classify: Callable[[str], str] = lambda text: REJECT,
    skip_bytes: int = 0,
    comment: str | None = None,
    impl: str | None = None,
    join_rows: int = 0,
    workers: int | None = None,
    blocks: Iterator[bytes] | None = None,
    first_row: int = 0,
    restart: Callable[[str], bool] | None = None,
) -> Iterator[Block]:
    """Parse ``data`` (after its first ``skip_bytes`` header bytes) block by block.

    ``classify(text)`` decides what a line that does not fit the layout is: a comment or
    footer (not a record) or a rejected record ("expected N fields, got M"); lines that
    start with ``comment`` are comments. Unquoted layouts go through the native field
    extractor (connscan._flowparse_c, or its twin with ``impl="py"``), ``workers`` threads
    splitting blocks ahead of this one (default SPLIT_WORKERS); quoted ones through
    pyarrow's CSV parser. Blocks are joined and cut into Blocks of exactly ``join_rows``
    rows but the last (fewer, bigger batches downstream); 0 yields one Block per block read.

    ``blocks``: the bytes to read instead of ``data``'s (a later section of it), whose row
    numbers follow ``first_row``. ``restart(comment text)`` (unquoted layouts): True when
    that comment line starts another layout (a Zeek header block in a concatenation of
    logs); the records before it are yielded, then LayoutChange is raised.
    """
    blocks = _skip_prefix(data.blocks(block_bytes) if blocks is None else blocks, skip_bytes)
    flowparse = _native.load("flowparse", impl)
    if layout.quoting:
        parts = _arrow_blocks(blocks, layout, block_bytes, classify, comment, flowparse)
    else:
        parts = _native_blocks(blocks, layout, classify, comment, flowparse, SPLIT_WORKERS if workers is None else workers,
                               restart)
    base = first_row  # data records so far
    joined: list[Block] = []  # blocks waiting to be yielded as one
    joined_rows = 0
    try:
        for table, n_lines, invalid in parts:
            if not invalid:
                rows = np.arange(base + 1, base + n_lines + 1, dtype=np.int64)
                base += n_lines
            else:
                is_record = np.ones(n_lines, bool)
                is_valid = np.ones(n_lines, bool)
                for index, kind, _, _ in invalid:
                    is_valid[index] = False
                    if kind in (COMMENT, FOOTER):
                        is_record[index] = False
                record_no = base + np.cumsum(is_record)
                for index, kind, text, fields in invalid:
                    row = int(record_no[index])
                    if kind == REJECT:
                        account.reject(row, f"expected {len(layout.names)} fields, got {fields}", text[:500])
                    elif kind == BAD_BYTES:
                        account.reject(row, "non-text bytes in an address, port, protocol or time field", text[:500])
                    elif kind not in (COMMENT, FOOTER):
                        account.reject(row, kind, text[:500])  # "invalid <column>" from a typed column
                rows = record_no[is_valid].astype(np.int64)
                base += int(is_record.sum())
            if join_rows <= 0:
                yield Block(table, rows)
                continue
            joined.append(Block(table, rows))
            joined_rows += len(rows)
            while joined_rows >= join_rows:
                # exactly join_rows rows (a block cut where they end: slices, no copies)
                block, joined = _take(joined, join_rows)
                joined_rows -= join_rows
                yield block
    except LayoutChange as change:
        if joined:
            yield _join(joined)
        change.records = base
        raise
    if joined:
        yield _join(joined)
    if data.truncated_tail:
        account.reject(base + 1, "truncated record at damaged end of input", data.truncated_tail[:500].decode("utf-8", "replace"))


def _join(blocks: list[Block]) -> Block:
    if len(blocks) == 1:
        return blocks[0]
    return Block(pa.concat_tables([block.table for block in blocks]), np.concatenate([block.rows for block in blocks]))


def _take(blocks: list[Block], count: int) -> tuple[Block, list[Block]]:
    """The first ``count`` rows of ``blocks`` as one Block, and the blocks that remain."""
    taken: list[Block] = []
    for i, block in enumerate(blocks):
        if count < len(block.rows):
            taken.append(Block(block.table.slice(0, count), block.rows[:count]))
            rest = Block(block.table.slice(count), block.rows[count:])
            return _join(taken), [rest] + blocks[i + 1:]
        taken.append(block)
        count -= len(block.rows)
        if count == 0:
            return _join(taken), blocks[i + 1:]
    return _join(taken), []


def _native_blocks(blocks, layout: Layout, classify, comment, flowparse, workers: int, restart=None):
    """(table, non-blank lines, [(line index, kind, text, fields)]) per block, natively split.

    When ``restart(text)`` says a comment line starts another layout, the lines before it
    come as a last part, then LayoutChange carries the bytes from that line on."""
    index_of = {name: i for i, name in enumerate(layout.names)}
    wanted = np.array([index_of[name] for name in layout.wanted], np.int32)
    kinds = [(layout.kinds or {}).get(name, TEXT) for name in layout.wanted]
    comment_byte = ord(comment) if comment else -1

    def split(block):
        return flowparse.split_fields(block, ord(layout.delimiter), len(layout.names), wanted, comment_byte, kinds)

    unsplit: list[bytes] = []  # blocks the split threads had taken ahead, after a restart
    # assembled in block order: row numbers and the stateful classify see the lines in order
    in_order = _in_order(split, blocks, workers, unsplit)
    for block, (status, starts, ends, nfields, columns, bad_slot) in in_order:
        invalid = []
        n_lines = len(status)
        for index in np.flatnonzero(status != 0):
            text = bytes(block[starts[index] : ends[index]]).decode("utf-8", "replace")
            code = status[index]
            if code == 1:
                if restart is not None and restart(text):
                    n_lines = int(index)
                    break
                kind = COMMENT
            elif code == 3:
                kind = BAD_BYTES
            elif code == 4:
                column = layout.wanted[bad_slot[index]]
                kind = f"invalid {(layout.roles or {}).get(column, column)}"
            else:
                kind = classify(text)
            invalid.append((int(index), kind, text, int(nfields[index])))
        n_ok = int(np.count_nonzero(status[:n_lines] == 0))
        table = pa.table({name: _arrow_column(kind, column, n_ok) for name, kind, column in zip(layout.wanted, kinds, columns)})
        yield table, n_lines, invalid
        if n_lines < len(status):
            in_order.close()  # hands back the blocks taken ahead, in order
            rest = itertools.chain([bytes(block[starts[n_lines]:])], unsplit, blocks)
            raise LayoutChange(rest)


def _in_order(work: Callable, items: Iterable, workers: int, unused: list | None = None) -> Iterator[tuple]:
    """``(item, work(item))`` in the order of ``items``; with ``workers`` > 0 the work runs in
    that many threads, at most ``workers + 1`` items ahead of the consumer (bounded memory).
    An item no thread has started yet when its turn comes is worked on by the consumer
    itself, so that it never waits idle behind a busy pool. When the consumer stops early,
    the items taken from ``items`` but not yielded go to ``unused``, in order."""
    if workers <= 0:
        for item in items:
            yield item, work(item)
        return
    pending: deque = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="connscan-split") as pool:
        try:
            for item in items:
                pending.append((item, pool.submit(work, item)))
                if len(pending) > workers:
                    first, future = pending.popleft()
                    yield first, work(first) if future.cancel() else future.result()
            while pending:
                first, future = pending.popleft()
                yield first, work(first) if future.cancel() else future.result()
        finally:  # consumer gone or failed: drop the work not started yet
            for item, future in pending:
                future.cancel()
                if unused is not None:
                    unused.append(item)


def _arrow_column(kind: int, column, n: int) -> pa.Array:
    if kind == TEXT:
        offsets, values = column
        return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(values)])
    if kind == PORT:
        return pa.array(column[:n], pa.int32())
    micros, valid = column
    return pa.array(micros[:n], pa.int64(), mask=~valid[:n]).cast(pa.timestamp("us"))


def _arrow_blocks(blocks, layout: Layout, block_bytes: int, classify, comment, flowparse):
    """The same through pyarrow's CSV parser (quoted fields; a line that leaves a quote
    open is rejected, see _mark_unbalanced_quotes)."""
    read_options = pacsv.ReadOptions(column_names=layout.names, use_threads=False, block_size=max(block_bytes + 1, 1 << 20))
    convert_options = pacsv.ConvertOptions(
        include_columns=layout.wanted,
        column_types={name: pa.string() for name in layout.wanted},
        strings_can_be_null=False,
    )
    for block in blocks:
        invalid: list[tuple[int, str, str, int]] = []
        block, unbalanced = _mark_unbalanced_quotes(block, layout.delimiter, flowparse)

        def handler(row, invalid=invalid, unbalanced=unbalanced):
            if row.text in unbalanced:
                invalid.append((row.number - 1, UNBALANCED_QUOTE, unbalanced[row.text], row.actual_columns))
                return "skip"
            kind = COMMENT if comment and row.text.startswith(comment) else classify(row.text)
            # row.number counts the non-blank lines of this parse, from 1
            invalid.append((row.number - 1, kind, row.text, row.actual_columns))
            return "skip"

        parse_options = pacsv.ParseOptions(
            delimiter=layout.delimiter,
            quote_char='"' if layout.quoting else False,
            invalid_row_handler=handler,
        )
        try:
            block.decode("utf-8")
        except UnicodeDecodeError:
            # bytes that are not UTF-8 become U+FFFD: such fields are rejected downstream (and
            # pyarrow can hand the invalid-row handler no text for them)
            block = block.decode("utf-8", "replace").encode("utf-8")
        table = pacsv.read_csv(pa.py_buffer(block), read_options, parse_options, convert_options)
        yield table, table.num_rows + len(invalid), invalid


UNBALANCED_QUOTE = "unbalanced quote (a value would run into the next lines)"


def _mark_unbalanced_quotes(block, delimiter: str, flowparse) -> tuple[bytes, dict[str, str]]:
    """``block`` with each line that leaves a quoted value open replaced by a one-field
    marker line, and marker -> the line's text.

    Flow records never hold a line break, but a CSV parser reads the lines after an open
    quote into its value: one stray quote would swallow them, silently. Marked, such a line
    is one rejected record and the lines after it are read as usual.
    """
    if block.find(b'"') < 0:
        return block, {}
    starts, ends = flowparse.open_quote_lines(block, ord(delimiter))
    if len(starts) == 0:
        return block, {}
    markers: dict[str, str] = {}
    pieces, at = [], 0
    for start, end in zip(starts.tolist(), ends.tolist()):
        marker = f"connscan-unbalanced-quote-{len(markers)}"
        markers[marker] = bytes(block[start:end]).decode("utf-8", "replace")
        pieces += [bytes(block[at:start]), marker.encode()]
        at = end
    pieces.append(bytes(block[at:]))
    return b"".join(pieces), markers


def _skip_prefix(blocks: Iterator[bytes], skip: int) -> Iterator[bytes]:
    for block in blocks:
        if skip:
            cut = min(skip, len(block))
            block, skip = block[cut:], skip - cut
        if block:
            yield block
