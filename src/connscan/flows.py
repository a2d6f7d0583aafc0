"""The flow pipeline: read exports -> evaluate -> write findings, with full accounting.

Stable API (connscan.dask and the Spark/Ray recipe build on it):

``evaluate_flow_batch(batch, evaluator, home_engine, file, rejects=None) -> list[Finding]``
    THE batch function. ``batch`` has the contract schema of connscan.sources
    (src, dst, sport, dport, proto, start, row; a RecordBatch or Table). The side inside the
    home networks (``home_engine``, an Engine built by ``home_engine_for(cidrs)``) is local;
    when both or neither side is home, the source is local. ``direction`` is "outbound"
    when the source is home, "inbound" when only the destination is, "unknown" when neither
    is. Both endpoints are matched against the signatures (check_local=True). Findings get
    ``file``, ``row`` and ``start``. Rows whose source or destination is not an address are
    left out; pass a list as ``rejects`` to receive their (row, reason).

``evaluate_flow_columns(batch, evaluator, home_engine, file, rejects=None) -> FlowFindings | None``
    The same findings in columns (FlowFindings: rules.FlaggedRows + file + start times;
    ``.findings()`` gives the Finding objects): ``connscan flows`` writes JSON lines from
    them with FindingWriter.write_flow_findings, without a Python object per finding.

``look_up_ends(batch, engine, home_engine) -> FlowEnds`` and ``evaluate_ends(ends, evaluator, file)``
    ``evaluate_flow_columns`` in two halves: the native, thread-safe one (parse both
    address columns, look them up, choose local and remote), which ``scan_paths`` runs in
    its reading thread, and the rules on the rows that need a look.

``home_engine_for(cidrs=None) -> Engine``: the home-network membership engine
    (default ``DEFAULT_HOME_NETS``: RFC 1918, RFC 6598, loopback, link-local, ULA).

``aggregate(findings) -> list[Finding]``: one finding per (lip, rip, rport, reasons) with
    count, first_seen and last_seen.

``scan_paths(paths, evaluator, home_engine, ...) -> FlowRun``: the whole local pipeline
    (used by ``connscan flows``): reading and the lookups run in a thread while the main
    thread applies the rules and writes findings, so the two overlap on two cores.

``add_flow_options(parser)`` and ``run_flows(args, ctx) -> int``: the CLI (cli.py).
"""
from __future__ import annotations

import gc
import json
import os
import queue
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connscan.engine import LookupResult
from connscan.errors import ConfigError, ConnscanError, InputError
from connscan.output import Stats
from connscan.sources import FORMATS, FlowSource, ReaderOptions, SourceAccount, open_source

DEFAULT_HOME_NETS = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",  # RFC 1918
    "100.64.0.0/10",  # RFC 6598 carrier-grade NAT
    "127.0.0.0/8",
    "::1/128",  # loopback
    "169.254.0.0/16",
    "fe80::/10",  # link-local
    "fc00::/7",  # unique local addresses
)

EXIT_NOTHING_SCANNED = 3
_DIRECTIONS = ("outbound", "inbound", "unknown")


def home_engine_for(cidrs: Iterable[str] | None = None):
    """An Engine whose signatures are the home networks (membership test only)."""
    from connscan.engine import Engine
    from connscan.signatures import SignatureSet

    networks = list(cidrs) if cidrs is not None else list(DEFAULT_HOME_NETS)
    return Engine(SignatureSet.from_networks(networks, description="home network", kind="c2", score=100, source="--home-net"), None)


def _as_batch(batch) -> pa.RecordBatch | pa.Table:
    if isinstance(batch, (pa.RecordBatch, pa.Table)):
        return batch
    return pa.table(batch)


def evaluate_flow_batch(batch, evaluator, home_engine, file: str | None, rejects: list | None = None) -> list:
    """Evaluate one contract batch (see the module docstring); returns its findings."""
    flagged = evaluate_flow_columns(batch, evaluator, home_engine, file, rejects)
    return flagged.findings() if flagged is not None else []


@dataclass
class FlowFindings:
    """The findings of one flow batch in columns (rules.FlaggedRows plus the flow fields):
    what ``connscan flows`` writes without a Finding object per row.

    ``start_us``: each finding's start in microseconds since the epoch (UTC), valid where
    ``start_valid``.
    """

    flagged: object  # rules.FlaggedRows
    file: str | None
    start_us: np.ndarray
    start_valid: np.ndarray

    def __len__(self) -> int:
        return len(self.flagged)

    def findings(self) -> list:
        """One Finding object per row, exactly those of ``evaluate_flow_batch``."""
        findings = self.flagged.findings()
        for finding, us, valid in zip(findings, self.start_us.tolist(), self.start_valid.tolist()):
            finding.file = self.file
            finding.start = _EPOCH + timedelta(microseconds=us) if valid else None
        return findings


def evaluate_flow_columns(batch, evaluator, home_engine, file: str | None, rejects: list | None = None) -> FlowFindings | None:
    """``evaluate_flow_batch`` in columns: its findings as a FlowFindings (None when none)."""
    ends = look_up_ends(batch, evaluator.engine, home_engine)
    if rejects is not None:
        rejects.extend(ends.rejects)
    return evaluate_ends(ends, evaluator, file)


@dataclass
class FlowEnds:
    """A flow batch with both ends parsed, looked up and sorted into local and remote: the
    native, thread-safe half of the evaluation (``scan_paths`` runs it in the reading
    thread, overlapping the rest).

    ``batch``: the rows whose addresses parsed; ``rejects``: (row, reason, text) of the
    others; ``src_home``: the source is in the home networks; ``inbound``: only the
    destination is (the source is then the remote side); ``remote``: the signature
    engine's LookupResult of the remote ends; ``local_sig``: the local ends' signature
    indices; ``lport``/``rport``: int64, -1 unknown.
    """

    batch: pa.RecordBatch | pa.Table
    rejects: list
    src_home: np.ndarray | None = None
    inbound: np.ndarray | None = None
    remote: object = None
    local_sig: np.ndarray | None = None
    lport: np.ndarray | None = None
    rport: np.ndarray | None = None


def look_up_ends(batch, engine, home_engine) -> FlowEnds:
    """Parse both address columns, look them up in ``engine`` and ``home_engine``, and
    choose the local and remote side of each flow (one native pass: Engine.look_up_ends)."""
    batch = _as_batch(batch)
    rejects: list = []
    if batch.num_rows == 0:
        return FlowEnds(batch, rejects)
    src, dst = batch.column("src"), batch.column("dst")
    ends = engine.look_up_ends(home_engine, src, dst)
    src_home, inbound, remote, local_sig = ends.src_home, ends.inbound, ends.remote, ends.local_sig
    bad_rows = np.flatnonzero(ends.bad)
    if len(bad_rows):
        rows = batch.column("row").to_numpy(zero_copy_only=False)
        for i, side in zip(bad_rows.tolist(), ends.bad[bad_rows].tolist()):
            reason = "invalid source address" if side == 1 else "invalid destination address"
            rejects.append((int(rows[i]), reason, f"src={src[i].as_py()!r} dst={dst[i].as_py()!r}"))
        valid = ends.bad == 0
        batch = batch.filter(pa.array(valid))
        if batch.num_rows == 0:
            return FlowEnds(batch, rejects)
        src_home, inbound, local_sig = src_home[valid], inbound[valid], local_sig[valid]
        remote = LookupResult(remote.signature[valid], remote.country[valid], remote.valid[valid])
    lport, rport = engine.side_ports(inbound, *(_port_numbers(batch.column(name)) for name in ("sport", "dport")))
    return FlowEnds(batch, rejects, src_home, inbound, remote, local_sig, lport, rport)


def evaluate_ends(ends: FlowEnds, evaluator, file: str | None) -> FlowFindings | None:
    """The findings of a looked-up batch (``look_up_ends`` with ``evaluator.engine``)."""
    batch, inbound, src_home = ends.batch, ends.inbound, ends.src_home
    if batch.num_rows == 0:
        return None

    def lookup(engine, side):  # another engine's view of one side (only the direct-Internet rule asks)
        src, dst = batch.column("src"), batch.column("dst")
        flipped = pa.array(inbound)
        return engine.lookup(pc.if_else(flipped, dst, src) if side == "local" else pc.if_else(flipped, src, dst))

    def pick(rows):  # the evaluator's table, built only for the rows that need a look
        taken = batch.take(pa.array(rows))
        src, dst, sport, dport = (taken.column(name) for name in ("src", "dst", "sport", "dport"))
        flipped = pa.array(inbound[rows])
        direction = np.where(src_home[rows], 0, np.where(inbound[rows], 1, 2)).astype(np.int8)
        return pa.table({
            "lip": pc.if_else(flipped, dst, src),
            "rip": pc.if_else(flipped, src, dst),
            # In Arrow, so that unknown (null) ports stay null (numpy would make them NaN).
            "lport": pc.if_else(flipped, dport, sport).cast(pa.int32()),
            "rport": pc.if_else(flipped, sport, dport).cast(pa.int32()),
            "proto": taken.column("proto"),
            "direction": pa.array(_DIRECTIONS).take(pa.array(direction)),
            "row": taken.column("row"),
        })

    flagged = evaluator.evaluate_sides(ends.remote, ends.local_sig, inbound=inbound, outbound=src_home,
                                       lport=ends.lport, rport=ends.rport, lookup=lookup, pick=pick)
    if flagged is None:
        return None
    # The start converted here, not per value by pyarrow (slow for zoned timestamps).
    starts = batch.column("start").cast(pa.int64()).take(pa.array(flagged.index))
    start_us = starts.fill_null(0).to_numpy(zero_copy_only=False)
    # A time outside years 1..9999 (a damaged record) has no ISO 8601 form: unknown.
    start_valid = starts.is_valid().to_numpy(zero_copy_only=False) & (start_us >= _FIRST_US) & (start_us <= _LAST_US)
    return FlowFindings(flagged, file, start_us, start_valid)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_FIRST_US, _LAST_US = ((moment - _EPOCH) // timedelta(microseconds=1) for moment in (
    datetime.min.replace(tzinfo=timezone.utc), datetime.max.replace(tzinfo=timezone.utc)))


def _port_numbers(column) -> np.ndarray:
    """Port numbers, -1 for unknown (null) ones: a view of an int32 column without nulls
    (what the readers make), else int64."""
    if column.null_count:
        column = pc.fill_null(column, -1)
    values = column.to_numpy(zero_copy_only=False)
    return values if values.dtype == np.int32 else values.astype(np.int64, copy=False)


def aggregate(findings: Iterable) -> list:
    """Group findings by (local, remote, remote port, reasons): count, first/last seen."""
    groups: dict[tuple, object] = {}
    files: dict[tuple, set] = {}
    for finding in findings:
        key = (finding.lip, finding.rip, finding.rport, tuple((r.kind, r.signature, r.score) for r in finding.reasons))
        group = groups.get(key)
        if group is None:
            group = groups[key] = _copy(finding)
            group.count, group.first_seen, group.last_seen = 0, finding.start, finding.start
            files[key] = set()
        group.count += 1
        files[key].add(finding.file)
        if finding.start is not None:
            if group.first_seen is None or finding.start < group.first_seen:
                group.first_seen = finding.start
            if group.last_seen is None or finding.start > group.last_seen:
                group.last_seen = finding.start
    for key, group in groups.items():
        group.row, group.start = None, None
        if len(files[key]) > 1:
            group.file = None
    return list(groups.values())


def _copy(finding):
    from dataclasses import replace

    return replace(finding)


# --------------------------------------------------------------------------- pipeline


@dataclass
class FileResult:
    name: str
    format: str | None
    stats: Stats
    errors: list[str] = field(default_factory=list)


@dataclass
class FlowRun:
    """Totals of one run, per file in ``files`` (in input order)."""

    stats: Stats
    files: list[FileResult] = field(default_factory=list)


def expand_paths(paths: Iterable[str]) -> list[str]:
    """Files as given; directories walked recursively in name order (hidden entries skipped)."""
    out: list[str] = []
    for path in paths:
        if path != "-" and os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                out.extend(os.path.join(root, name) for name in sorted(files) if not name.startswith("."))
        else:
            out.append(path)
    return out


_END = object()


def _read_ahead(source: FlowSource, prepare: Callable) -> Iterator[tuple]:
    """(batch, prepare(batch)) for each of the source's batches: reading and preparing run in
    two helper threads, so that they overlap each other and the evaluation."""
    batches = _in_thread(source.batches(), f"connscan-read {source.name}")
    return _in_thread(_prepared(batches, prepare), f"connscan-lookup {source.name}")


def _prepared(batches: Iterator, prepare: Callable) -> Iterator[tuple]:
    try:
        for batch in batches:
            yield batch, prepare(batch)
    finally:
        batches.close()


def _in_thread(items: Iterator, name: str, depth: int = 1) -> Iterator:
    """``items`` produced in a helper thread, at most ``depth`` ahead of the consumer."""
    pipe: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        pipe.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            pipe.put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            pipe.put(exc)

    worker = threading.Thread(target=produce, name=name, daemon=True)
    worker.start()
    try:
        while True:
            item = pipe.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()
        if hasattr(items, "close"):
            items.close()  # the producer has stopped: release what it holds (files, threads)


def scan_paths(
    paths: Iterable[str],
    evaluator,
    home_engine,
    *,
    input_format: str | None = None,
    options: ReaderOptions | None = None,
    on_findings: Callable[[list], None] = lambda findings: None,
    on_rejects: Callable[[str, list], None] = lambda name, rejects: None,
    on_error: Callable[[str], None] = lambda message: None,
    progress=None,
    columnar: bool = False,
) -> FlowRun:
    """Read, evaluate and account for every record of ``paths`` ("-" = stdin).

    ``columnar``: ``on_findings`` receives each batch's findings as a FlowFindings (or
    None when there are none) instead of a list of Finding objects.

    NetFlow data sets of one file whose template arrives in a later file are evaluated
    when it does, and counted for the file they came from (NetFlow's deferred mode).
    """
    options = options or ReaderOptions()
    run = FlowRun(Stats(files={}))
    session: dict = {"netflow_deferred": True}
    accounts: dict[str, SourceAccount] = {}
    results: dict[str, FileResult] = {}
    for path in expand_paths(paths):
        name = "<stdin>" if path == "-" else path
        result = results[name] = FileResult(name, None, Stats())
        run.files.append(result)
        try:
            source = open_source(path, input_format, options, session=session)
        except InputError as exc:
            result.errors.append(str(exc))
            on_error(str(exc))
            continue
        result.format = source.format
        account = accounts[name] = source.account
        began = time.perf_counter()
        if progress is not None:
            progress.start_file(account)
        try:
            for batch, ends in _read_ahead(source, lambda batch: look_up_ends(batch, evaluator.engine, home_engine)):
                owner = _batch_owner(batch, name, accounts)
                if owner != name:  # counted by the reader for this file; belongs to an earlier one
                    account.records_read -= batch.num_rows
                    account.records_scanned -= batch.num_rows
                    accounts[owner].accept(batch.num_rows)
                owner_account = accounts[owner]
                findings = evaluate_ends(ends, evaluator, owner)
                if findings is not None:
                    results[owner].stats.findings.update(findings.flagged.level_counts())
                if not columnar:
                    findings = findings.findings() if findings is not None else []
                for row, reason, text in ends.rejects:
                    owner_account.unscan(row, reason, text)
                on_rejects(owner, owner_account.take_rejects())
                on_findings(findings)
                if progress is not None:
                    progress.update(account)
        except InputError as exc:
            result.errors.append(str(exc))
            on_error(str(exc))
        on_rejects(name, account.take_rejects())
        for message in account.errors:
            result.errors.append(message)
            on_error(message)
        result.stats.elapsed_s = time.perf_counter() - began
        if progress is not None:
            progress.finish_file(account)
    _finish_netflow(session)
    for name, account in accounts.items():
        on_rejects(name, account.take_rejects())
        _fill_stats(results[name].stats, account)
    for result in run.files:
        run.stats.add(result.stats)
        run.stats.files[result.name] = result.stats
    return run


def _batch_owner(batch: pa.RecordBatch, name: str, accounts: dict) -> str:
    """The file a batch's records belong to (NetFlow names an earlier file in its metadata)."""
    metadata = batch.schema.metadata
    if metadata:
        from connscan.sources.netflow import SOURCE_METADATA_KEY

        owner = metadata.get(SOURCE_METADATA_KEY)
        if owner is not None and owner.decode() in accounts:
            return owner.decode()
    return name


def _finish_netflow(session: dict) -> None:
    """Data sets still waiting for a template at the end of the run: rejected in their file."""
    if "netflow" in session:
        from connscan.sources.netflow import finish_session

        finish_session(session)


def _cap_malloc_arenas(arenas: int = 2) -> bool:
    """At most ``arenas`` glibc malloc arenas (True when set): each thread of the pipeline
    would otherwise keep its own freed memory (about 30 MB more peak memory, same speed)."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        return ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, arenas) == 1
    except (OSError, AttributeError):
        return False


_M_ARENA_MAX = -8  # glibc's malloc.h


def _fill_stats(stats: Stats, account: SourceAccount) -> None:
    stats.records_read = account.records_read
    stats.records_scanned = account.records_scanned
    stats.records_skipped.update(account.skipped)
    stats.records_rejected.update(account.rejected)


# --------------------------------------------------------------------------- progress


class _Progress:
    """A rich progress bar over input bytes (records when the size is unknown)."""

    def __init__(self, total_bytes: int | None, force: bool = False):
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TextColumn("{task.fields[records]} records"),
            TimeRemainingColumn(),
            console=_stderr_console(force),
            transient=True,
        )
        self._task = self._progress.add_task("flows", total=total_bytes, records=0)
        self._base = 0
        self._records = 0
        self._progress.start()

    def start_file(self, account: SourceAccount) -> None:
        self._progress.update(self._task, description=os.path.basename(account.name)[:30])

    def update(self, account: SourceAccount) -> None:
        self._progress.update(self._task, completed=self._base + account.bytes_done, records=self._records + account.records_read)

    def finish_file(self, account: SourceAccount) -> None:
        self._base += account.bytes_total or account.bytes_done
        self._records += account.records_read
        self._progress.update(self._task, completed=self._base, records=self._records)

    def print(self, message: str) -> None:
        """A message above the bar."""
        self._progress.console.print(message, markup=False, highlight=False)

    def close(self) -> None:
        self._progress.stop()


def _stderr_console(force: bool):
    from rich.console import Console

    return Console(file=sys.stderr, force_terminal=True if force else None)


# --------------------------------------------------------------------------- CLI


def add_flow_options(parser) -> None:
    """The options of ``connscan flows`` (common options come from cli.add_common_options)."""
    parser.add_argument("paths", nargs="+", metavar="PATH", help="flow files or directories; - reads stdin")
    group = parser.add_argument_group("flow input")
    group.add_argument("--input-format", choices=FORMATS, help="skip detection and read every input as this format")
    group.add_argument("--tz", metavar="ZONE", help="time zone of nfdump -o csv local times (default: this host's zone)")
    group.add_argument("--event-types", metavar="TYPE,..", help="Suricata event types to evaluate (default: every event with addresses)")
    group.add_argument("--columns", metavar="ROLE=NAME,..", help="column names for generic CSV/Parquet and renamed Zeek fields: src=..,dst=..,sport=..,dport=..,proto=..,start=..; "
                       "field numbers from 1 (src=3,dst=5) for a CSV/TSV without a header line")
    group.add_argument("--home-net", metavar="CIDR,..", help="home networks: their side of a flow is local (default: RFC 1918, RFC 6598, loopback, link-local, ULA)")
    group.add_argument("--aggregate", action="store_true", default=None, help="one finding per (local, remote, remote port, reasons) with count, first_seen, last_seen")
    group.add_argument("--rejects", metavar="FILE", help="write every rejected record (file, row, reason) as JSON Lines")
    group.add_argument("--dask", metavar="local|tcp://HOST:PORT", help="evaluate on a dask.distributed cluster (connscan[dask])")
    group.add_argument("--progress", choices=("auto", "always", "never"), default=None, help="progress bar on stderr (default auto: on a terminal)")


def _setting(args, ctx, name: str, default=None):
    """A flow option: the flag, else the config file's [flows] table, else ``default``."""
    value = getattr(args, name, None)
    if value is not None:
        return value
    return ctx.settings.flows.get(name, default)


def _split_list(value) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [part.strip() for part in str(value).split(",") if part.strip()]


def parse_columns(value) -> dict[str, str] | None:
    """``src=a,dst=b`` -> {"src": "a", "dst": "b"} (or field numbers: ``src=3,dst=5``);
    ConfigError on anything else."""
    if value is None:
        return None
    if isinstance(value, dict):  # from the config file
        value = [f"{role}={name}" for role, name in value.items()]
    roles = {}
    for part in _split_list(value):
        role, sep, name = part.partition("=")
        role = role.strip()
        if not sep or role not in ("src", "dst", "sport", "dport", "proto", "start") or not name.strip():
            raise ConfigError(f"--columns: {part!r} is not ROLE=NAME with ROLE one of src, dst, sport, dport, proto, start")
        roles[role] = name.strip()
    numbers = [name for name in roles.values() if name.isdigit()]
    if numbers and (len(numbers) < len(roles) or any(int(n) == 0 for n in numbers)):
        raise ConfigError("--columns: give every column by name, or every one by its field number from 1 (a file without a header line)")
    return roles


def reader_options(args, ctx) -> tuple[str | None, ReaderOptions, list[str] | None]:
    """(input format, reader options, home networks) from flags and the [flows] config."""
    tz = _setting(args, ctx, "tz")
    if tz is not None:
        _check_zone(tz)
    event_types = _split_list(_setting(args, ctx, "event_types"))
    options = ReaderOptions(
        tz=tz,
        event_types=frozenset(event_types) if event_types else None,
        columns=parse_columns(_setting(args, ctx, "columns")),
    )
    home = _split_list(_setting(args, ctx, "home_net"))
    return _setting(args, ctx, "input_format"), options, home


def _check_zone(tz: str) -> None:
    try:
        pc.assume_timezone(pa.array([0], pa.timestamp("us")), tz)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ConfigError(f"--tz {tz}: unknown time zone ({exc})") from None


def _rejects_writer(path: str | None):
    if path is None:
        return None, lambda name, rejects: None
    try:
        stream = open(path, "w", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write rejects: {exc.strerror or exc}") from None

    def write(name, rejects):
        for row, reason, text in rejects:
            stream.write(json.dumps({"file": name, "row": row, "reason": reason, "text": text}, ensure_ascii=False) + "\n")

    return stream, write


def _want_progress(mode: str | None) -> bool:
    if mode == "always":
        return True
    if mode == "never":
        return False
    return sys.stderr.isatty()


def run_flows(args, ctx) -> int:
    """``connscan flows``: evaluate every input, write findings, stats, rejects; exit code."""
    input_format, options, home = reader_options(args, ctx)
    try:
        home_engine = home_engine_for(home)
    except ConnscanError as exc:  # names the option and the position in its list
        raise ConfigError(str(exc)) from None
    dask_target = _setting(args, ctx, "dask")
    if dask_target:
        from connscan import dask as flow_dask

        return flow_dask.run_cli(args, ctx, dask_target, input_format=input_format, options=options, home_nets=home)
    # Arrow allocates little here (about 12 MB at a time); mimalloc's reserves for each of
    # the pipeline's threads would add about 40 MB to the peak memory of a scan.
    pa.set_memory_pool(pa.system_memory_pool())
    _cap_malloc_arenas()
    paths = expand_paths(args.paths)
    aggregate_mode = bool(_setting(args, ctx, "aggregate", False))
    rejects_stream, write_rejects = _rejects_writer(_setting(args, ctx, "rejects"))
    progress = None
    if _want_progress(_setting(args, ctx, "progress")):
        sizes = [os.path.getsize(p) for p in paths if p != "-" and os.path.isfile(p)]
        progress = _Progress(sum(sizes) if len(sizes) == len(paths) else None, force=_setting(args, ctx, "progress") == "always")
    collected: list = []
    # The signature set and tables are hundreds of thousands of long-lived objects: frozen,
    # the garbage collector stops re-scanning them for every batch of findings (~30% faster).
    gc.freeze()
    try:
        with ctx.open_writer() as writer:
            # Without --aggregate, findings go from columns to lines with no object per row.
            on_findings = collected.extend if aggregate_mode else writer.write_flow_findings
            run = scan_paths(
                paths,
                ctx.evaluator,
                home_engine,
                input_format=input_format,
                options=options,
                on_findings=on_findings,
                on_rejects=write_rejects,
                on_error=lambda message: _print_error(progress, message),
                progress=progress,
                columnar=not aggregate_mode,
            )
            if aggregate_mode:
                writer.write_all(aggregate(collected))
    finally:
        gc.unfreeze()
        if progress is not None:
            progress.close()
        if rejects_stream is not None:
            rejects_stream.close()
    return finish(ctx, run)


def _print_error(progress, message: str) -> None:
    if progress is not None:
        progress.print(f"connscan: {message}")
    else:
        print(f"connscan: {message}", file=sys.stderr)


def finish(ctx, run: FlowRun) -> int:
    """Write --stats (live-scan keys, totals, per-file under ``files``), the summary; exit code."""
    stats = run.stats.stop()
    ctx.stats = stats
    data = stats.to_dict()
    failed = {result.name: result.errors for result in run.files if result.errors}
    data["inputs"] = len(run.files)
    data["inputs_with_errors"] = failed
    for result in run.files:
        entry = data["files"][result.name]
        entry["format"] = result.format
        entry["errors"] = result.errors
    if ctx.settings.stats:
        try:
            with open(ctx.settings.stats, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=2)
                handle.write("\n")
        except OSError as exc:
            raise ConfigError(f"{ctx.settings.stats}: cannot write stats: {exc.strerror or exc}") from None
    summary = stats.summary()
    if failed:
        summary += f"; {len(failed)} of {len(run.files)} inputs with errors"
    print(summary, file=sys.stderr)
    code = ctx.exit_code()
    if code == EXIT_NOTHING_SCANNED:
        print("connscan: nothing was scanned (exit 3)", file=sys.stderr)
    return code


__all__ = [
    "DEFAULT_HOME_NETS",
    "FlowRun",
    "add_flow_options",
    "aggregate",
    "FlowFindings",
    "evaluate_flow_batch",
    "evaluate_flow_columns",
    "expand_paths",
    "home_engine_for",
    "run_flows",
    "scan_paths",
]
