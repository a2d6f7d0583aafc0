"""Evaluate flow exports on a dask.distributed cluster, with the findings of the local run.

The driver compiles the Engine once and saves it as a table file; each task carries only
the file's path and checksum (`EngineRef`), and each worker process loads the tables
memory-mapped once (`Engine.load(path, expected_sha256=...)`, cached per process), then
evaluates its partitions with the same batch function as the local pipeline
(`connscan.flows.evaluate_flow_batch`, through `connscan.flows.scan_paths` for files).

Partitions: one task per input file, except that consecutive NetFlow/IPFIX files go to one
task, because their templates carry over from file to file. A dask DataFrame with the batch
columns (src, dst, sport, dport, proto, and optionally start and row) is evaluated partition
by partition.

The table file must be readable by every worker: the default directory is a temporary one
on this host (right for `--dask local` and for workers on this machine); for workers on
other hosts pass ``engine_dir`` on storage they share.
"""
from __future__ import annotations

import atexit
import os
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from connscan.errors import ConfigError, ConnscanError, InputError
from connscan.output import Stats

LOCAL_WORKERS = 2


@dataclass(frozen=True)
class EngineRef:
    """What a task needs to rebuild the evaluator on a worker (small, cheap to send)."""

    path: str
    sha256: str
    config: object  # rules.RuleConfig
    hostname: str
    home_nets: tuple[str, ...] | None


class ScanResult(list):
    """The findings of a distributed scan (a list), with ``stats`` and ``files``.

    ``stats``: totals with per-input figures under ``stats.files``; ``files``: the per-input
    `connscan.flows.FileResult`s in input order; ``rejects``: (file, row, reason, text).
    """

    def __init__(self, findings, stats: Stats, files: list, rejects: list):
        super().__init__(findings)
        self.stats = stats
        self.files = files
        self.rejects = rejects


# --------------------------------------------------------------------------- worker side

_worker_cache: dict = {}
_worker_lock = threading.Lock()


def _evaluator_for(ref: EngineRef):
    """(Evaluator, home engine) for ``ref``, built once per worker process."""
    from connscan.engine import Engine
    from connscan.flows import home_engine_for
    from connscan.rules import Evaluator

    key = (ref.path, ref.sha256, ref.hostname, ref.home_nets, repr(ref.config))  # RuleConfig holds a dict
    with _worker_lock:
        cached = _worker_cache.get(key)
        if cached is None:
            if not os.path.exists(ref.path):
                raise ConnscanError(
                    f"{ref.path}: compiled engine not found on worker {socket.gethostname()} "
                    f"(pass engine_dir on storage every worker can read)"
                )
            engine = Engine.load(ref.path, expected_sha256=ref.sha256)
            evaluator = Evaluator(engine, ref.config, hostname=ref.hostname)
            cached = _worker_cache[key] = (evaluator, home_engine_for(ref.home_nets))
        return cached


def _scan_files(ref: EngineRef, paths: list[str], input_format, options):
    """One task: the local pipeline over ``paths`` -> (findings, file results, rejects)."""
    from connscan.flows import scan_paths

    evaluator, home_engine = _evaluator_for(ref)
    findings: list = []
    rejects: list = []
    run = scan_paths(  # errors stay in each FileResult, for the driver to report
        paths,
        evaluator,
        home_engine,
        input_format=input_format,
        options=options,
        on_findings=findings.extend,
        on_rejects=lambda name, items: rejects.extend((name, *item) for item in items),
    )
    return findings, run.files, rejects


BATCH_COLUMNS = ("src", "dst", "sport", "dport", "proto", "start", "row")


def frame_to_batch(frame, first_row: int) -> pa.Table:
    """A pandas partition with the batch columns -> the batch contract (rows numbered if absent)."""
    from connscan.sources import BATCH_SCHEMA

    missing = [name for name in ("src", "dst") if name not in frame.columns]
    if missing:
        raise InputError(f"dask DataFrame lacks the column(s) {', '.join(missing)}")
    n = len(frame)
    columns = []
    for name in BATCH_COLUMNS:
        target = BATCH_SCHEMA.field(name).type
        if name in frame.columns:
            values = pa.array(frame[name].to_numpy(), from_pandas=True)
            if name in ("sport", "dport"):
                values = values.fill_null(-1)
            elif name == "proto":
                values = values.fill_null("")
            columns.append(values.cast(target))
        elif name == "row":
            columns.append(pa.array(np.arange(first_row, first_row + n, dtype=np.int64)))
        elif name == "start":
            columns.append(pa.nulls(n, target))
        elif name == "proto":
            columns.append(pa.array([""] * n, pa.string()))
        else:  # sport, dport: unknown
            columns.append(pa.array(np.full(n, -1, np.int32)))
    return pa.Table.from_arrays(columns, schema=BATCH_SCHEMA)


def _scan_frame(ref: EngineRef, frame, name: str, first_row: int):
    """One task: a DataFrame partition -> (findings, rows, rejects)."""
    from connscan.flows import evaluate_flow_batch

    evaluator, home_engine = _evaluator_for(ref)
    invalid: list = []
    findings = evaluate_flow_batch(frame_to_batch(frame, first_row), evaluator, home_engine, name, invalid)
    return findings, len(frame), [(name, *item) for item in invalid]


# --------------------------------------------------------------------------- driver side


def build_engine(iocs=None, geoip=None, allowlist=None, config=None):
    """The Engine a scan uses, built like `connscan flows` does (signatures + allowlist + GeoIP)."""
    from connscan.engine import Engine
    from connscan.geoip import GeoTable
    from connscan.rules import RuleConfig
    from connscan.signatures import SignatureSet

    config = config or RuleConfig()
    if iocs is None or isinstance(iocs, SignatureSet):
        signatures = iocs if iocs is not None else SignatureSet.from_networks([])
    else:
        signatures = SignatureSet.load([iocs] if isinstance(iocs, (str, os.PathLike)) else list(iocs))
    if allowlist is not None:
        if not isinstance(allowlist, SignatureSet):
            paths = [allowlist] if isinstance(allowlist, (str, os.PathLike)) else list(allowlist)
            allowlist = SignatureSet.load(paths, kind="allowlist", score=int(config.allowlist_score))
        signatures = signatures + allowlist
    if geoip is False:
        table = None
    elif geoip is None or isinstance(geoip, (str, os.PathLike)):
        table = GeoTable.open(geoip)
    else:
        table = geoip
    return Engine(signatures, table)


def _client(scheduler):
    """(client, things to close) for "local", an address, or a Client given by the caller."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise ConfigError("--dask needs dask.distributed: pip install 'connscan[dask]'") from exc
    if isinstance(scheduler, Client):
        return scheduler, []
    if scheduler in (None, "local"):
        cluster = LocalCluster(n_workers=LOCAL_WORKERS, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
        return client, [client, cluster]
    if isinstance(scheduler, str):
        try:
            client = Client(scheduler, timeout="30s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"--dask {scheduler}: cannot reach the scheduler ({exc})") from None
        return client, [client]
    raise ConfigError(f"scheduler must be 'local', a scheduler address or a distributed.Client, not {scheduler!r}")


def partition_paths(paths: Iterable[str], input_format: str | None = None) -> list[list[str]]:
    """Tasks for ``paths``: one per file, consecutive NetFlow files together (shared templates)."""
    from connscan.flows import expand_paths
    from connscan.sources import detect_format
    from connscan.sources.compression import open_bytes

    groups: list[list[str]] = []
    previous_netflow = False
    for path in expand_paths(paths):
        if path == "-":
            raise InputError("-: stdin cannot be read by dask workers; pass files")
        netflow = input_format == "netflow"
        if input_format is None:
            try:
                data = open_bytes(path, stdin=None)
            except OSError:
                netflow = False  # the worker reports the unreadable file
            else:
                try:
                    netflow = detect_format(data.head) == "netflow"
                finally:
                    data.close()
        if netflow and previous_netflow:
            groups[-1].append(path)
        else:
            groups.append([path])
        previous_netflow = netflow
    return groups


def scan(
    paths_or_dataframe,
    *,
    iocs=None,
    geoip=None,
    allowlist=None,
    config=None,
    home_net: Sequence[str] | None = None,
    scheduler="local",
    engine=None,
    hostname: str | None = None,
    input_format: str | None = None,
    options=None,
    engine_dir: str | None = None,
    name: str = "<dataframe>",
) -> ScanResult:
    """Evaluate flow files (paths) or a dask DataFrame on a dask.distributed cluster.

    ``iocs``/``allowlist``: signature file path(s) or a SignatureSet; ``geoip``: MaxMind DB
    path, GeoTable, None (embedded DB-IP) or False (none); or a compiled ``engine``.
    ``config``: RuleConfig; ``home_net``: home CIDRs (default: flows.DEFAULT_HOME_NETS).
    ``scheduler``: "local" (LocalCluster, 2 worker processes), "tcp://host:port" or a Client.
    Returns the findings in input order (the local run's order) with ``.stats``.
    """
    from connscan.rules import RuleConfig

    config = (config or RuleConfig()).validate()
    if engine is None:
        engine = build_engine(iocs, geoip, allowlist, config)
    hostname = hostname or socket.gethostname()
    path = _saved_engine(engine, engine_dir)
    ref = EngineRef(path, engine.sha256, config, hostname, tuple(home_net) if home_net is not None else None)
    client, to_close = _client(scheduler)
    try:
        if _is_dataframe(paths_or_dataframe):
            return _scan_dataframe(client, ref, paths_or_dataframe, name)
        paths = [paths_or_dataframe] if isinstance(paths_or_dataframe, (str, os.PathLike)) else paths_or_dataframe
        return _scan_paths(client, ref, [os.fspath(p) for p in paths], input_format, options)
    finally:
        for item in to_close:
            item.close()


_saved: dict = {}  # (engine sha256, engine_dir) -> table file written by this process
_saved_dirs: list = []


def _saved_engine(engine, engine_dir: str | None) -> str:
    """The engine's table file, written once per driver process (tables can be ~100 MB)."""
    key = (engine.sha256, engine_dir)
    path = _saved.get(key)
    if path is None or not os.path.exists(path):
        if not _saved_dirs:
            atexit.register(_remove_saved)
        directory = tempfile.mkdtemp(prefix="connscan-dask-", dir=engine_dir)
        _saved_dirs.append(directory)
        path = os.path.join(directory, "engine.cstab")
        engine.save(path)
        _saved[key] = path
    return path


def _remove_saved() -> None:
    for directory in _saved_dirs:
        shutil.rmtree(directory, ignore_errors=True)


def _is_dataframe(value) -> bool:
    try:
        import dask.dataframe as dd
    except ImportError:
        return False
    return isinstance(value, dd.DataFrame)


def _scan_paths(client, ref: EngineRef, paths: list[str], input_format, options) -> ScanResult:
    groups = partition_paths(paths, input_format)
    futures = [client.submit(_scan_files, ref, group, input_format, options, pure=False) for group in groups]
    findings: list = []
    files: list = []
    rejects: list = []
    stats = Stats(files={})
    for future in futures:  # in input order, like the local run
        group_findings, group_files, group_rejects = future.result()
        findings.extend(group_findings)
        rejects.extend(group_rejects)
        for result in group_files:
            files.append(result)
            stats.add(result.stats)
            stats.files[result.name] = result.stats
    return ScanResult(findings, stats.stop(), files, rejects)


def _scan_dataframe(client, ref: EngineRef, frame, name: str) -> ScanResult:
    import dask

    lengths = client.compute(frame.map_partitions(len)).result().tolist()
    offsets = np.concatenate([[1], 1 + np.cumsum(lengths)[:-1]]).astype(int).tolist() if lengths else []
    parts = frame.to_delayed()
    tasks = [dask.delayed(_scan_frame)(ref, part, name, first) for part, first in zip(parts, offsets)]
    findings: list = []
    rejects: list = []
    stats = Stats(files={})
    for part_findings, rows, part_rejects in client.compute(tasks, sync=True):
        findings.extend(part_findings)
        rejects.extend(part_rejects)
        stats.records_read += rows
        stats.records_scanned += rows - len(part_rejects)
        stats.records_rejected.update(reason for _, _, reason, _ in part_rejects)
        stats.add_findings(part_findings)
    stats.files[name] = Stats(records_read=stats.records_read, records_scanned=stats.records_scanned,
                              records_rejected=stats.records_rejected.copy(), findings=stats.findings.copy())
    return ScanResult(findings, stats.stop(), [], rejects)


# --------------------------------------------------------------------------- CLI


def run_cli(args, ctx, target: str, *, input_format=None, options=None, home_nets=None) -> int:
    """``connscan flows --dask local|tcp://...``: like the local run, evaluated on the cluster."""
    from connscan import flows

    result = scan(
        flows.expand_paths(args.paths),
        engine=ctx.engine,
        config=ctx.config,
        home_net=home_nets,
        scheduler=target,
        hostname=ctx.hostname,
        input_format=input_format,
        options=options,
    )
    rejects_stream, write_rejects = flows._rejects_writer(flows._setting(args, ctx, "rejects"))
    try:
        for result_file in result.files:
            for message in result_file.errors:
                print(f"connscan: {message}", file=sys.stderr)
        by_file: dict = {}
        for file, row, reason, text in result.rejects:
            by_file.setdefault(file, []).append((row, reason, text))
        for file, items in by_file.items():
            write_rejects(file, items)
        with ctx.open_writer() as writer:
            aggregate = bool(flows._setting(args, ctx, "aggregate", False))
            writer.write_all(flows.aggregate(result) if aggregate else list(result))
    finally:
        if rejects_stream is not None:
            rejects_stream.close()
    run = flows.FlowRun(result.stats, result.files)
    return flows.finish(ctx, run)


__all__ = ["EngineRef", "ScanResult", "build_engine", "frame_to_batch", "partition_paths", "run_cli", "scan"]
