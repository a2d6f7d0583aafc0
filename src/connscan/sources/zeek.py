"""Zeek logs: TSV (``#separator``/``#fields``/``#types`` headers, ``#close``, unset ``-``,
``(empty)``) and JSON lines; conn.log and any log with ``id.orig_h``/``id.resp_h``.

Also read: btest-style TSV without ``#fields`` whose first non-comment line names the
columns, timestamps masked as ``XXXXXXXXXX.XXXXXX`` (start becomes null), several logs
concatenated into one file (a header block per log, fields that may differ), and renamed
fields: another scope separator (``id_orig_h``), Zeek's field name map (``src``,
``dst_ip``, ... found by the common names of tabular.py) or ``--columns``.
"""
from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from connscan.errors import InputError
from connscan.sources import ReaderOptions, SourceAccount, _batch, jsonlines
from connscan.sources.compression import ByteSource
from connscan.sources.delimited import EPOCH_S, PORT, Layout, LayoutChange, parse
from connscan.sources.tabular import resolve_columns

ROLES = {"src": "id.orig_h", "dst": "id.resp_h", "sport": "id.orig_p", "dport": "id.resp_p", "proto": "proto", "start": "ts"}
# A scope separator other than "." (Log::default_scope_sep), as in id_orig_h.
_SCOPED_ORIG = re.compile(r"id(.+)orig_h")


def sniff(head: bytes) -> str | None:
    lines = head.lstrip(b"\xef\xbb\xbf").split(b"\n", 64)
    for line in lines[:-1] if len(lines) > 1 else lines:
        if line.startswith(b"#separator"):
            return "zeek-tsv"
        if line.startswith(b"#") or not line.strip():
            continue
        if line.startswith(b"{"):
            flat = line.replace(b" ", b"")
            return "zeek-json" if any(key in flat for key in (b'"id.orig_h"', b'"id_orig_h"', b'"id":{"orig_h"')) else None
        names = line.rstrip(b"\r").split(b"\t")
        # a header line of Zeek field names (zeek-cut style, no #fields)
        return "zeek-tsv" if b"id.orig_h" in names or b"uid" in names else None
    return None


def _unescape(text: str) -> str:
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), text)


def read_tsv(data: ByteSource, account: SourceAccount, options: ReaderOptions) -> Iterator[pa.RecordBatch]:
    """A Zeek TSV log; logs concatenated into one file (each with its own header block,
    as ``cat``/``zcat`` of rotated logs gives) are read section by section, each with its
    own fields, with row numbers counted across the file."""
    separator, names, skip = _read_header(data.head)
    if names is None:
        raise InputError(f"{account.name}: Zeek log without a #fields header or a header line")
    blocks, first_row = None, 0
    while True:
        layout, roles = _layout(account, separator, names, options.columns)

        def restart(text: str, separator=separator, names=names) -> bool:
            """A comment line that opens another header block (or changes the fields)."""
            return text.startswith("#separator") or (text.startswith("#fields") and text.split(separator)[1:] != names)

        try:
            for block in parse(data, account, layout, options.block_bytes, skip_bytes=skip, comment="#",
                               join_rows=options.batch_rows, blocks=blocks, first_row=first_row, restart=restart):
                yield from _batch.batches_from_table(account, block.rows, block.table, roles, options.batch_rows, _batch.epoch_micros)
            return
        except LayoutChange as change:
            head, rest = _section_head(change.rest)
            separator, names_here, skip = _read_header(head, separator, names)
            names = names_here or names
            blocks, first_row = itertools.chain([head], rest), change.records


def _read_header(head: bytes, separator: str = "\t", names: list[str] | None = None) -> tuple[str, list[str] | None, int]:
    """(separator, field names, header bytes) of the header block at the start of ``head``.
    Without ``#fields`` the first line names the columns, unless ``names`` (the previous
    section's) are given: they then stay."""
    found, skip = None, 0
    for line in _lines(head):
        text = line.decode("utf-8", "replace").rstrip("\r")
        if text.startswith("#separator"):
            separator = _unescape(text.split(" ", 1)[1] if " " in text else text.split("\t", 1)[1])
        elif text.startswith("#fields"):
            found = text.split(separator)[1:]
        elif not text.startswith("#") and text.strip():
            if found is None and names is None:  # no #fields: this line names the columns
                found = text.split(separator)
                skip += len(line) + 1
            break
        skip += len(line) + 1
    return separator, found, min(skip, len(head))


def _section_head(rest: Iterator[bytes]) -> tuple[bytes, Iterator[bytes]]:
    """The first bytes of ``rest`` up to its first data line (a whole header block), and
    the rest after them."""
    head = b""
    for block in rest:
        head += block
        if any(line.strip() and not line.startswith(b"#") for line in _lines(head, whole_only=True)):
            break
    return head, rest


def _lines(data: bytes, whole_only: bool = False) -> Iterator[bytes]:
    """The lines of ``data`` one at a time (a header is read from the start of a large
    block); ``whole_only``: not the text after the last line break."""
    start = 0
    while (end := data.find(b"\n", start)) >= 0:
        yield data[start:end]
        start = end + 1
    if not whole_only:
        yield data[start:]


def _layout(account: SourceAccount, separator: str, names: list[str], overrides: dict[str, str] | None = None
            ) -> tuple[Layout, dict[str, str]]:
    if len(separator) != 1 or separator in "\r\n":
        raise InputError(f"{account.name}: Zeek separator {separator!r} is not one character other than a line break")
    roles = _roles(names, overrides)
    if "src" not in roles or "dst" not in roles:
        raise InputError(f"{account.name}: Zeek log without id.orig_h/id.resp_h columns or renamed ones such as "
                         f"src/dst (fields: {', '.join(names)}); name them with --columns src=..,dst=..")
    shared = {column for column in roles.values() if list(roles.values()).count(column) > 1}
    if shared:
        raise InputError(f"{account.name}: column(s) {', '.join(sorted(shared))} named for two roles "
                         f"({', '.join(f'{role}={column}' for role, column in roles.items())})")
    kinds = {roles[r]: PORT for r in ("sport", "dport") if r in roles}
    if "start" in roles:
        kinds[roles["start"]] = EPOCH_S
    layout = Layout(names=_unique(names), wanted=list(roles.values()), delimiter=separator, kinds=kinds,
                    roles={v: k for k, v in roles.items()})
    return layout, roles


def _roles(names: list[str], overrides: dict[str, str] | None) -> dict[str, str]:
    """role -> column: ``--columns`` first, then Zeek's own names (with the scope separator
    the log uses), then the common names of renamed fields (Zeek's field name map).

    A ``--columns`` name this log lacks is passed over, not an error: one run can read
    generic CSV (which the option names) and ordinary Zeek logs side by side."""
    scoped = next((found.group(1) for found in map(_SCOPED_ORIG.fullmatch, names) if found), ".")
    known = resolve_columns(names, None)
    roles = {}
    for role, zeek_name in ROLES.items():
        column = zeek_name.replace(".", scoped)
        column = column if column in names else known.get(role)
        if column is not None:
            roles[role] = column
    folded = {name.lower(): name for name in names}
    for role, column in (overrides or {}).items():
        found = column if column in names else folded.get(column.lower())
        if found is not None:
            roles[role] = found
    return roles


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


def _field(obj: dict, dotted: str):
    """A field by its Zeek name: flat (``id.orig_h``), nested (``{"id": {"orig_h": ..}}``)
    or with the scope separator "_" (``id_orig_h``)."""
    value = jsonlines.path_value(obj, dotted)
    if value is not None:
        return value
    outer, _, inner = dotted.partition(".")
    return obj.get(f"{outer}_{inner}") if inner else None


def read_json(data: ByteSource, account: SourceAccount, options: ReaderOptions) -> Iterator[pa.RecordBatch]:
    # --columns names other keys (dotted: nested); a record without them has Zeek's own
    keys = {role: (options.columns[role], name) if role in (options.columns or {}) else (name,) for role, name in ROLES.items()}

    def field(obj, role):
        for key in keys[role]:
            value = _field(obj, key)
            if value is not None:
                return value
        return None

    # Zeek's own flat keys are read by pyarrow (no --columns, no other spelling in the block)
    native = (_json_schema(data.head), _plain_zeek_json) if not options.columns else (None, None)
    for records in jsonlines.records(data, account, options.block_bytes, *native):
        if isinstance(records, jsonlines.NativeBlock):
            yield from _native_json_batches(account, records, options.batch_rows)
            continue
        rows, src, dst, sport, dport, proto, start = [], [], [], [], [], [], []
        for row, obj in records:
            orig, resp = field(obj, "src"), field(obj, "dst")
            if orig is None or resp is None:
                account.skip(f"no {'/'.join(keys['src'])} or no {'/'.join(keys['dst'])}" if options.columns else "no id.orig_h/id.resp_h")
                continue
            rows.append(row)
            src.append(jsonlines.text_or_none(orig))
            dst.append(jsonlines.text_or_none(resp))
            sport.append(jsonlines.port_or_unset(field(obj, "sport")))
            dport.append(jsonlines.port_or_unset(field(obj, "dport")))
            proto.append(jsonlines.text_or_none(field(obj, "proto")) or "")
            start.append(jsonlines.json_time(field(obj, "start")))
        yield from _batch.batches_from_lists(account, rows, src, dst, sport, dport, proto, start, options.batch_rows)


_OTHER_SPELLINGS = ("id", "id_orig_h", "id_resp_h", "id_orig_p", "id_resp_p")  # nested or "_" scope separator


def _json_schema(head: bytes) -> pa.Schema:
    """What pyarrow reads of each record: ts as a number (Zeek's default) or as text
    (JSON::TS_ISO8601), as the first record has it; blocks of the other kind go line by line."""
    first = next((line for line in head.split(b"\n")[:-1] if line.strip()), b"")
    try:
        iso = isinstance(json.loads(first).get("ts"), str)
    except (ValueError, AttributeError):
        iso = False
    return pa.schema([("ts", pa.string() if iso else pa.float64()), ("id.orig_h", pa.string()), ("id.resp_h", pa.string()),
                      ("id.orig_p", pa.int64()), ("id.resp_p", pa.int64()), ("proto", pa.string()),
                      ("id", pa.struct([("orig_h", pa.string())])), *((name, pa.string()) for name in _OTHER_SPELLINGS[1:])])

# Epoch seconds whose microseconds a float64 holds exactly (as json.loads' int would be):
# beyond, and up to the end of year 9999, the block goes the exact way.
_EXACT_S = 2**53 / 1e6


def _plain_zeek_json(table: pa.Table) -> bool:
    """Whether a block pyarrow parsed needs no other spelling of Zeek's keys: every record
    has id.orig_h and id.resp_h, none has them nested or with "_", and no ts is a huge number."""
    if not (table.column("id.orig_h").null_count == 0 and table.column("id.resp_h").null_count == 0
            and all(table.column(name).null_count == table.num_rows for name in _OTHER_SPELLINGS)):
        return False
    if table.schema.field("ts").type == pa.string():
        return True
    ts = np.abs(table.column("ts").to_numpy(zero_copy_only=False))
    return not ((ts >= _EXACT_S) & (ts < 2.6e11)).any()


def _native_json_batches(account: SourceAccount, block, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """read_json's loop, in columns, over a block pyarrow parsed (see _plain_zeek_json)."""
    column = {name: block.table.column(name).combine_chunks() for name in block.table.column_names}
    if column["ts"].type == pa.string():
        start = jsonlines.json_time_column(column["ts"])
    else:
        ts = column["ts"].to_numpy(zero_copy_only=False)  # null: NaN
        with np.errstate(invalid="ignore"):
            known = (ts >= jsonlines.FIRST_S) & (ts < jsonlines.END_S)  # as json_time: NaN and infinities are no time
        micros = np.where(known, np.rint(np.where(known, ts, 0) * 1e6), 0).astype(np.int64)
        start = pa.array(micros, pa.int64(), mask=~known)
    yield from jsonlines.native_flow_batches(account, block.rows, column["id.orig_h"], column["id.resp_h"], column["id.orig_p"],
                                             column["id.resp_p"], column["proto"], start, batch_rows)
