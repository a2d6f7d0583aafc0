"""Findings out: THOR text lines (escaped), JSON Lines, and the run statistics.

Text line, field for field like THOR's ProcessConnections module::

    <Mon dd HH:MM:SS> <hostname>/<host ip> <TAG>: <Level>: MODULE: ProcessConnections
    MESSAGE: .. PID: .. NAME: .. COMMAND: .. LIP: .. LPORT: .. RIP: .. RPORT: ..
    [FILE: .. ROW: .. START: ..] [COUNT: .. FIRST_SEEN: .. LAST_SEEN: ..] [COUNTRY: ..]
    SCORE: .. then per reason REASON_n, SUBSCORE_n [, SIGNATURE_n, DESC_n]

Values are escaped so that data (a command line, a process name) can neither start a new
line nor forge a field: control, format and line-separator characters become ``\\xNN`` /
``\\uNNNN``, and a ``:`` followed by a space or ending the value becomes ``\\x3a``; so the
only ``": "`` in a line are the ones after field names.
"""
from __future__ import annotations

import codecs
import io
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from json.encoder import encode_basestring  # the escaper of json.dumps(..., ensure_ascii=False)
from operator import attrgetter
from typing import IO, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connscan import _native
from connscan.engine import _chunk_buffers
from connscan.findings import LEVELS, Finding

__all__ = ["FindingWriter", "Stats", "escape_value", "finding_to_dict", "format_text_line", "json_lines_of_flow_findings",
           "text_lines_of_flow_findings"]

FORMATS = ("text", "jsonl")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def escape_value(value) -> str:
    """One field value as safe text (see the module docstring); None is ``-``."""
    if value is None:
        return "-"
    text = str(value)
    if text.isprintable() and ": " not in text and not text.endswith(":"):
        return text  # the common case: nothing to escape
    out = []
    last = len(text) - 1
    for i, ch in enumerate(text):
        if ch == ":" and (i == last or text[i + 1] == " "):
            out.append("\\x3a")
        elif ch == " " or ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "".join(out)


def _thor_time(moment: datetime) -> str:
    local = moment.astimezone() if moment.tzinfo is not None else moment
    return f"{_MONTHS[local.month - 1]} {local.day:02d} {local:%H:%M:%S}"


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is timezone.utc:  # the common case, made short
        return moment.isoformat().replace("+00:00", "Z")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)  # naive times in batches are UTC
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _score_text(score: float) -> str:
    return str(int(score)) if float(score).is_integer() else f"{score:.1f}"


def text_fields(finding: Finding) -> list[tuple[str, object]]:
    """The (KEY, value) pairs after the line header, in output order, unescaped."""
    pairs: list[tuple[str, object]] = [("MODULE", finding.module), ("MESSAGE", finding.message)]
    if finding.file is None:  # process fields belong to the live scan, not to flow records
        pairs += [("PID", finding.pid), ("NAME", finding.name), ("COMMAND", finding.command)]
    pairs += [("LIP", finding.lip), ("LPORT", finding.lport), ("RIP", finding.rip), ("RPORT", finding.rport)]
    for key, value in (("FILE", finding.file), ("ROW", finding.row), ("START", _iso(finding.start)),
                       ("COUNT", finding.count), ("FIRST_SEEN", _iso(finding.first_seen)),
                       ("LAST_SEEN", _iso(finding.last_seen)), ("COUNTRY", finding.country)):
        if value is not None:
            pairs.append((key, value))
    return pairs + _score_fields(finding.score, finding.reasons)


def _score_fields(score: float, reasons) -> list[tuple[str, object]]:
    """The last (KEY, value) pairs of a text line: SCORE, then the numbered reasons."""
    pairs: list[tuple[str, object]] = [("SCORE", _score_text(score))]
    for n, reason in enumerate(reasons, 1):
        pairs += [(f"REASON_{n}", reason.text()), (f"SUBSCORE_{n}", _score_text(reason.score))]
        if reason.kind in ("c2", "allowlist") and reason.signature is not None:
            pairs += [(f"SIGNATURE_{n}", reason.signature), (f"DESC_{n}", reason.description or "")]
    return pairs


def format_text_line(finding: Finding, tag: str = "connscan", hostname: str | None = None,
                     host_ip: str | None = None) -> str:
    """One THOR-style line (no newline). host_ip None: the connection's local address."""
    head = (f"{_thor_time(finding.time)} {escape_value(hostname or finding.hostname)}/"
            f"{escape_value(host_ip or finding.lip)} {escape_value(tag)}: {finding.level}:")
    return head + _text_pairs(text_fields(finding))


def _text_pairs(pairs) -> str:
    return "".join(f" {key}: {escape_value(value)}" for key, value in pairs)


def finding_to_dict(finding: Finding) -> dict:
    """The JSON Lines object: documented keys, in order; unknown (None) values left out."""
    data = {
        "time": _iso(finding.time),
        "hostname": finding.hostname,
        "level": finding.level,
        "module": finding.module,
        "message": finding.message,
        "score": finding.score,
        "pid": finding.pid,
        "name": finding.name,
        "command": finding.command,
        "user": finding.user,
        "status": finding.status,
        "proto": finding.proto,
        "lip": finding.lip,
        "lport": finding.lport,
        "rip": finding.rip,
        "rport": finding.rport,
        "direction": finding.direction,
        "country": finding.country,
        "reasons": [reason.to_dict() for reason in finding.reasons],
        "file": finding.file,
        "row": finding.row,
        "start": _iso(finding.start),
        "count": finding.count,
        "first_seen": _iso(finding.first_seen),
        "last_seen": _iso(finding.last_seen),
    }
    return {key: value for key, value in data.items() if value is not None}


def _json(value) -> str:
    """``value`` exactly as json.dumps(value, ensure_ascii=False) writes it (fast for str,
    int and finite float, the types of a finding's fields)."""
    kind = type(value)
    if kind is str:
        return encode_basestring(value)
    if kind is int:
        return int.__repr__(value)
    if kind is float and value - value == 0:  # finite (json writes NaN/Infinity otherwise)
        return float.__repr__(value)
    return _COMPACT_JSON.encode(value)


# What json.dumps(value, ensure_ascii=False, separators=(",", ":")) uses, made once (dumps
# builds a new encoder on every call with these arguments).
_COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


# The JSON Lines fields after "time", in finding_to_dict's order, in three runs: fields
# that are usually the same for many findings, the endpoints, and the flow fields.
_SHARED_KEYS = ("hostname", "level", "module", "message", "score", "pid", "name", "command", "user", "status", "proto")
_ENDPOINT_PREFIXES = (',"lip":', ',"lport":', ',"rip":', ',"rport":')
_FLOW_PREFIXES = (',"file":', ',"row":', ',"start":')
_AGGREGATE_PREFIXES = (',"count":', ',"first_seen":', ',"last_seen":')
_shared_values = attrgetter(*_SHARED_KEYS)


class _JsonLines:
    """finding -> the line json.dumps(finding_to_dict(finding)) gives, byte for byte, built
    from string pieces; the pieces shared by many findings (batch time, level, message,
    reasons...) are encoded once and looked up."""

    def __init__(self):
        self._moment: datetime | None = None
        self._moment_text = ""
        self._file: str | None = None
        self._file_text = ""
        self._pieces: dict[tuple, tuple[tuple, str]] = {}

    def line(self, finding: Finding) -> str:
        out: list[str] = []
        moment = finding.time
        if moment is not None:
            if moment is not self._moment:  # one shared time object per evaluated batch
                self._moment, self._moment_text = moment, ',"time":' + _json(_iso(moment))
            out.append(self._moment_text)
        shared = _shared_values(finding)
        # By value, with what tells apart equal numbers that print differently (100, 100.0,
        # -0.0; 1, True).
        score = finding.score
        out.append(self._piece((shared, type(score), str(score), type(finding.pid)), shared, _SHARED_KEYS))
        lip, lport, rip, rport = finding.lip, finding.lport, finding.rip, finding.rport
        if type(lip) is str and type(rip) is str and type(lport) is int and type(rport) is int:  # the usual
            out.append(f',"lip":{encode_basestring(lip)},"lport":{lport},"rip":{encode_basestring(rip)},"rport":{rport}')
        else:
            _add_fields(out, _ENDPOINT_PREFIXES, (lip, lport, rip, rport))
        # Reasons by identity: the evaluator shares one object per distinct reason.
        out.append(self._piece((finding.direction, finding.country, *map(id, finding.reasons)),
                               (finding.direction, finding.country, *finding.reasons), None))
        file, row, start = finding.file, finding.row, finding.start
        if type(file) is str and type(row) is int and start is not None and start.tzinfo is timezone.utc:  # flows
            if file is not self._file:
                self._file, self._file_text = file, ',"file":' + encode_basestring(file)
            out += (self._file_text, f',"row":{row},"start":"', start.isoformat().replace("+00:00", 'Z"'))
        else:
            _add_fields(out, _FLOW_PREFIXES, (file, row, _iso(start)))
        if finding.count is not None or finding.first_seen is not None or finding.last_seen is not None:
            _add_fields(out, _AGGREGATE_PREFIXES, (finding.count, _iso(finding.first_seen), _iso(finding.last_seen)))
        return "{" + "".join(out)[1:] + "}"

    def _piece(self, key: tuple, values: tuple, keys: tuple | None) -> str:
        """The encoded fields ``keys`` with ``values``, cached under ``key``; keys None:
        direction, country and the reasons (values[2:])."""
        known = self._pieces.get(key)
        if known is None:
            if len(self._pieces) > 20_000:
                self._pieces.clear()  # bound memory on long runs
            out: list[str] = []
            if keys is None:
                direction, country, *reasons = values
                _add_fields(out, (',"direction":', ',"country":'), (direction, country))
                out += (',"reasons":', _json([reason.to_dict() for reason in reasons]))
            else:
                _add_fields(out, tuple(f',"{name}":' for name in keys), values)
            # The entry holds the values themselves, so the ids in keys stay theirs while cached.
            known = self._pieces[key] = (values, "".join(out))
        return known[1]


def _add_fields(out: list, prefixes: tuple, values: tuple) -> None:
    for prefix, value in zip(prefixes, values):
        if value is not None:  # unknown values are left out
            out += (prefix, _json(value))


# Columns that, when an evaluated table has them, give findings fields the columnar
# renderer does not write (process fields of the live scan): those go the object path.
_OBJECT_ONLY_COLUMNS = ("pid", "name", "command", "user", "status", "file", "start")


def _field_text(prefix: str, value) -> str:
    return "" if value is None else prefix + _json(value)


def _text_segment(kind, prefix: str, column) -> tuple:
    """A renderer segment of ``kind`` (JSON_TEXT, THOR_TEXT) over an Arrow string column."""
    if isinstance(column, pa.ChunkedArray):
        column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    return (kind, prefix.encode(), *_chunk_buffers(column))


def _country_segment(render, country: np.ndarray, field) -> tuple:
    """Per row ``field(code)`` of its country code (S2), "" where unknown (b"")."""
    codes, code_of = np.unique(country, return_inverse=True)
    pieces = [field(code.decode("ascii")).encode() if code else b"" for code in codes.tolist()]
    return (render.PIECE, pieces, code_of.reshape(-1))


class _GroupPieces:
    """The pieces of each group outcome (the evaluator shares one outcome tuple per group),
    UTF-8, made once per run: in JSON Lines ("jsonl") the fields from "hostname" to "score"
    and "reasons"; in text lines the level to MESSAGE and SCORE to the last reason."""

    def __init__(self):
        self._known: dict[tuple, dict[int, tuple[tuple, bytes, bytes]]] = {}
        # Groups differ mostly in one reason: heads and each reason's JSON are made once.
        self._heads: dict[tuple, bytes] = {}
        self._reason_json: dict[int, tuple[object, str]] = {}  # id -> (the reason, its JSON)

    def of(self, fmt: str, hostname: str, outcomes: list) -> tuple[list[bytes], list[bytes]]:
        """The first and second piece of each outcome."""
        known = self._known.setdefault((fmt, hostname), {})
        keys = list(map(id, outcomes))
        missing = [outcome for outcome, key in zip(outcomes, keys) if key not in known]
        if len(known) + len(missing) > 20_000:
            known.clear()  # bound memory on long runs
            missing = outcomes
            self._heads.clear()
            self._reason_json.clear()
        for outcome in missing:
            # The entry holds the outcome, so its id stays its own while cached.
            known[id(outcome)] = (outcome, *self._make(fmt, hostname, outcome))
        entries = list(map(known.__getitem__, keys))
        return [entry[1] for entry in entries], [entry[2] for entry in entries]

    def _make(self, fmt: str, hostname: str, outcome: tuple) -> tuple[bytes, bytes]:
        score, level, message, listed = outcome
        head_key = (fmt, hostname, score, level, message)
        head = self._heads.get(head_key)
        if head is None:
            if fmt == "jsonl":
                out: list[str] = []
                _add_fields(out, tuple(f',"{name}":' for name in _SHARED_KEYS[:5]),
                            (hostname, level, "ProcessConnections", message, score))
                head = "".join(out).encode()
            else:
                head = (f"{level}:" + _text_pairs((("MODULE", "ProcessConnections"), ("MESSAGE", message)))).encode()
            self._heads[head_key] = head
        if fmt == "jsonl":  # a JSON list is its items' JSON joined by commas (compact separators)
            tail = ',"reasons":[' + ",".join(map(self._json_of, listed)) + "]"
        else:
            tail = _text_pairs(_score_fields(score, listed))
        return head, tail.encode()

    def _json_of(self, reason) -> str:
        known = self._reason_json.get(id(reason))
        if known is None:  # the entry holds the reason, so its id stays its own while cached
            known = self._reason_json[id(reason)] = (reason, _json(reason.to_dict()))
        return known[1]


def json_lines_of_flow_findings(flow, pieces: _GroupPieces | None = None, impl=None) -> str:
    """The JSON lines of a flows.FlowFindings, each ending in a newline, equal byte for byte
    to those of its Finding objects: one renderer call (connscan._render_*) over the
    columns, with the per-group pieces (level, message, score, reasons) encoded once.
    ``impl``: the renderer module (default: the compiled one when available)."""
    return _json_lines_utf8(flow, pieces, impl).decode()


def _json_lines_utf8(flow, pieces: _GroupPieces | None = None, impl=None) -> bytes:
    render = impl or _native.load("render")
    flagged = flow.flagged
    table = flagged.table
    pieces = pieces or _GroupPieces()
    heads, reasons = pieces.of("jsonl", flagged.hostname, flagged.outcomes)
    # Direction: few distinct values, and "unknown" for null or empty ones.
    direction = pc.dictionary_encode(table.column("direction")).combine_chunks()
    directions = [_field_text(',"direction":', value or "unknown").encode() for value in direction.dictionary.to_pylist()]
    segments = [
        (render.LITERAL, ('{"time":' + _json(_iso(flagged.time))).encode()),
        (render.PIECE, heads, flagged.group),
        _text_segment(render.JSON_TEXT, ',"proto":', table.column("proto")),
        _text_segment(render.JSON_TEXT, ',"lip":', table.column("lip")),
        (render.NUMBER, b',"lport":', flagged.lport, None),
        _text_segment(render.JSON_TEXT, ',"rip":', table.column("rip")),
        (render.NUMBER, b',"rport":', flagged.rport, None),
        (render.PIECE, directions + [b',"direction":"unknown"'],
         direction.indices.fill_null(len(directions)).to_numpy()),
        _country_segment(render, flagged.country, lambda code: ',"country":' + _json(code)),
        (render.PIECE, reasons, flagged.group),
        (render.LITERAL, _field_text(',"file":', flow.file).encode()),
        (render.NUMBER, b',"row":', table.column("row").fill_null(-1).to_numpy(), None),
        (render.TIMESTAMP, b',"start":"', b'"', flow.start_us, flow.start_valid),
        (render.LITERAL, b"}"),
    ]
    return render.render_lines(len(flagged), segments)


def text_lines_of_flow_findings(flow, tag: str = "connscan", hostname: str | None = None, host_ip: str | None = None,
                                pieces: _GroupPieces | None = None, impl=None) -> str:
    """The THOR text lines of a flows.FlowFindings (as format_text_line writes its Finding
    objects, each ending in a newline), in one renderer call like json_lines_of_flow_findings."""
    return _text_lines_utf8(flow, tag, hostname, host_ip, pieces, impl).decode()


def _text_lines_utf8(flow, tag: str = "connscan", hostname: str | None = None, host_ip: str | None = None,
                     pieces: _GroupPieces | None = None, impl=None) -> bytes:
    render = impl or _native.load("render")
    flagged = flow.flagged
    table = flagged.table
    pieces = pieces or _GroupPieces()
    heads, tails = pieces.of("text", flagged.hostname, flagged.outcomes)
    lip = table.column("lip")
    line_start = f"{_thor_time(flagged.time)} {escape_value(hostname or flagged.hostname)}/"
    tag_text = f" {escape_value(tag)}: "
    if host_ip:
        host = [(render.LITERAL, (line_start + escape_value(host_ip) + tag_text).encode())]
    else:  # the connection's local address
        host = [(render.LITERAL, line_start.encode()), _text_segment(render.THOR_TEXT, "", lip),
                (render.LITERAL, tag_text.encode())]
    segments = [
        *host,
        (render.PIECE, heads, flagged.group),
        (render.LITERAL, b" PID: - NAME: - COMMAND: -" if flow.file is None else b""),  # as text_fields: unknown
        _text_segment(render.THOR_TEXT, " LIP: ", lip),
        (render.NUMBER, b" LPORT: ", flagged.lport, b"-"),
        _text_segment(render.THOR_TEXT, " RIP: ", table.column("rip")),
        (render.NUMBER, b" RPORT: ", flagged.rport, b"-"),
        (render.LITERAL, b"" if flow.file is None else _text_pairs((("FILE", flow.file),)).encode()),
        (render.NUMBER, b" ROW: ", table.column("row").fill_null(-1).to_numpy(), None),
        (render.TIMESTAMP, b" START: ", b"", flow.start_us, flow.start_valid),  # ISO times need no escaping
        _country_segment(render, flagged.country, lambda code: _text_pairs((("COUNTRY", code),))),
        (render.PIECE, tails, flagged.group),
    ]
    return render.render_lines(len(flagged), segments)


_WRITE_PIECE = io.DEFAULT_BUFFER_SIZE // 4  # characters per stream write, at most a buffer in UTF-8 (see _emit)


def _write_raw(buffer, data: memoryview) -> memoryview:
    """Write ``data`` with the unbuffered writes of the file under ``buffer``, looping over
    short ones: few large writes, and BrokenPipeError once the reader has gone. Returns
    what is left to write: nothing, or all that follows a write that would block (a
    non-blocking file) or all of it when there is no such file."""
    raw = getattr(buffer, "raw", None)
    if not isinstance(raw, io.FileIO):
        return data
    while len(data):
        count = raw.write(data)
        if count is None:
            break
        data = data[count:]
    return data


def _utf8_buffer(stream):
    """The byte stream under a UTF-8 text stream (None for others, e.g. StringIO)."""
    buffer, encoding = getattr(stream, "buffer", None), getattr(stream, "encoding", None)
    try:
        return buffer if buffer is not None and codecs.lookup(encoding).name == "utf-8" else None
    except (LookupError, TypeError):
        return None


class FindingWriter:
    """Writes findings to a text stream as THOR lines ("text") or JSON Lines ("jsonl")."""

    def __init__(self, stream: IO[str], fmt: str = "text", tag: str = "connscan",
                 hostname: str | None = None, host_ip: str | None = None):
        if fmt not in FORMATS:
            raise ValueError(f"output format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        self.stream, self.fmt, self.tag = stream, fmt, tag
        self.hostname, self.host_ip = hostname, host_ip
        self.written = 0
        self.reader_gone = False
        self._json_lines = _JsonLines()
        self._group_pieces = _GroupPieces()
        self._utf8_buffer = _utf8_buffer(stream)

    def write(self, finding: Finding) -> None:
        if self.fmt == "jsonl":
            line = self._json_lines.line(finding)
        else:
            line = format_text_line(finding, self.tag, self.hostname, self.host_ip)
        if self._emit(line + "\n"):
            self.written += 1

    def write_all(self, findings: Iterable[Finding]) -> None:
        if self.fmt != "jsonl":
            for finding in findings:
                self.write(finding)
            return
        lines = [self._json_lines.line(finding) for finding in findings]
        if lines and self._emit("\n".join(lines) + "\n"):  # one write per batch
            self.written += len(lines)

    def write_flow_findings(self, flow) -> None:
        """Write a flows.FlowFindings (None: nothing): lines rendered from its columns, or
        through Finding objects for tables with process fields."""
        if flow is None or len(flow) == 0:
            return
        if any(name in flow.flagged.table.column_names for name in _OBJECT_ONLY_COLUMNS):
            self.write_all(flow.findings())
            return
        if self.fmt == "jsonl":
            data = _json_lines_utf8(flow, self._group_pieces)
        else:
            data = _text_lines_utf8(flow, self.tag, self.hostname, self.host_ip, self._group_pieces)
        if self._emit(data):  # one write per batch
            self.written += len(flow)

    def flush(self) -> None:
        if not self.reader_gone:
            self._emit("")

    def _emit(self, text: str | bytes) -> bool:
        """Write ``text`` (or UTF-8 bytes); False once the reader has gone (`| head`), so a
        scan goes on counting and exits by its findings instead of dying half-way."""
        if self.reader_gone:
            return False
        stream = self.stream
        try:
            if isinstance(text, bytes):
                if self._utf8_buffer is None:
                    text = text.decode()
                else:  # straight to the bytes: no decoding and encoding again
                    stream.flush()  # what was written as text goes first
                    stream = self._utf8_buffer
                    text = _write_raw(stream, memoryview(text))  # what it could not write
            # In pieces no larger than a stream buffer: a larger write that the reader leaves
            # half-done comes back short with no error (CPython's BufferedWriter), and
            # TextIOWrapper ignores the count; a buffered piece raises BrokenPipeError.
            for start in range(0, len(text), _WRITE_PIECE):
                stream.write(text[start:start + _WRITE_PIECE])
            if not text:
                stream.flush()
            return True
        except BrokenPipeError:
            self.reader_gone = True
            if self.stream is sys.stdout:
                # Python flushes stdout again at exit: point it at /dev/null so that is quiet.
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)
            print("connscan: output closed by the reader; remaining findings not written", file=sys.stderr)
            return False


@dataclass
class Stats:
    """What a run read, scanned, skipped and found: the --stats file and the summary.

    A record is a socket (live scan) or a flow record (flows). ``files`` holds the same
    figures per input file (flows).
    """

    records_read: int = 0
    records_scanned: int = 0
    records_skipped: Counter = field(default_factory=Counter)
    records_rejected: Counter = field(default_factory=Counter)
    findings: Counter = field(default_factory=Counter)
    elapsed_s: float = 0.0
    files: dict[str, "Stats"] | None = None
    started: float = field(default_factory=time.perf_counter, repr=False)

    def add_findings(self, findings: Iterable[Finding]) -> None:
        self.findings.update(finding.level for finding in findings)

    def add(self, other: "Stats") -> None:
        """Add another run's (or file's) counts to these totals."""
        self.records_read += other.records_read
        self.records_scanned += other.records_scanned
        self.records_skipped.update(other.records_skipped)
        self.records_rejected.update(other.records_rejected)
        self.findings.update(other.findings)

    def stop(self) -> "Stats":
        self.elapsed_s = time.perf_counter() - self.started
        return self

    def at_or_above(self, level: str) -> int:
        """Number of findings at ``level`` or more severe."""
        rank = LEVELS.index(level)
        return sum(n for lvl, n in self.findings.items() if LEVELS.index(lvl) >= rank)

    def to_dict(self) -> dict:
        data = {
            "records_read": self.records_read,
            "records_scanned": self.records_scanned,
            "records_skipped": dict(sorted(self.records_skipped.items())),
            "records_rejected": dict(sorted(self.records_rejected.items())),
            "findings": {level: self.findings.get(level, 0) for level in reversed(LEVELS)},
            "elapsed_s": round(self.elapsed_s, 6),
        }
        if self.files is not None:
            data["files"] = {name: stats.to_dict() for name, stats in self.files.items()}
        return data

    def summary(self) -> str:
        """One line for stderr."""
        def by_reason(counts: Counter) -> str:
            total = sum(counts.values())
            if not total:
                return "0"
            return f"{total} (" + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")"

        found = ", ".join(f"{self.findings.get(level, 0)} {level}" for level in ("Alert", "Warning", "Notice"))
        info = self.findings.get("Info", 0)
        return (f"connscan: {self.records_read} read, {self.records_scanned} scanned, "
                f"{by_reason(self.records_skipped)} skipped, {by_reason(self.records_rejected)} rejected; "
                f"findings: {found}" + (f", {info} Info" if info else "") + f"; {self.elapsed_s:.2f} s")
