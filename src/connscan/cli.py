"""The command line: ``connscan scan`` (live connections) and ``connscan flows`` (exports).

``add_common_options`` and ``build_context`` are shared with connscan.flows, which adds
its own options with ``add_flow_options(parser)`` and runs with ``run_flows(args, ctx)``.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import socket
import sys
import traceback
from dataclasses import dataclass, field
from typing import Iterator

from connscan import __version__
from connscan.config import Settings, load_config_file, parse_ports, resolve_settings
from connscan.errors import ConfigError, ConnscanError
from connscan.output import FindingWriter, Stats

__all__ = ["ScanContext", "add_common_options", "build_context", "main"]

EXIT_CLEAN, EXIT_FINDINGS, EXIT_USAGE, EXIT_NOTHING_SCANNED, EXIT_INTERNAL = 0, 1, 2, 3, 4

EPILOG = """\
exit codes:
  0  no finding at or above --fail-level (default: alert)
  1  findings at or above --fail-level
  2  usage or configuration error (bad option, config file, signature or GeoIP file)
  3  nothing was scanned (no connection / no flow record), so no clean bill of health
  4  internal error (a bug in connscan: the traceback is printed; please report it)

Settings come from the built-in defaults, then --config FILE (TOML), then the flags.
GeoIP by default: the embedded DB-IP Country Lite database
(IP Geolocation by DB-IP, https://db-ip.com, CC BY 4.0).
"""


@dataclass
class ScanContext:
    """What every scan command needs, built once from the settings (build_context)."""

    settings: Settings
    signatures: object  # SignatureSet: c2 signatures + network allowlist
    geoip: object  # GeoTable
    engine: object  # Engine
    evaluator: object  # rules.Evaluator
    hostname: str
    stats: Stats = field(default_factory=Stats)
    notes: list[str] = field(default_factory=list)

    @property
    def config(self):
        """The RuleConfig in force."""
        return self.settings.rules

    @contextlib.contextmanager
    def open_writer(self) -> Iterator[FindingWriter]:
        """A FindingWriter on --output (or stdout), closed/flushed afterwards."""
        settings = self.settings
        if settings.output in (None, "-"):
            writer = FindingWriter(sys.stdout, settings.format, settings.tag, self.hostname)
            yield writer
            writer.flush()
            return
        try:
            stream = open(settings.output, "w", encoding="utf-8", newline="\n")
        except OSError as exc:
            raise ConfigError(f"{settings.output}: cannot write output: {exc.strerror or exc}") from None
        with stream:
            yield FindingWriter(stream, settings.format, settings.tag, self.hostname)

    def exit_code(self) -> int:
        if self.stats.records_scanned == 0:
            return EXIT_NOTHING_SCANNED
        if self.stats.at_or_above(self.settings.fail_level):
            return EXIT_FINDINGS
        return EXIT_CLEAN

    def finish(self) -> int:
        """Stop the clock, write --stats, print the summary line; returns the exit code."""
        stats = self.stats.stop()
        if self.settings.stats:
            try:
                with open(self.settings.stats, "w", encoding="utf-8") as handle:
                    json.dump(stats.to_dict(), handle, indent=2)
                    handle.write("\n")
            except OSError as exc:
                raise ConfigError(f"{self.settings.stats}: cannot write stats: {exc.strerror or exc}") from None
        print(stats.summary(), file=sys.stderr)
        code = self.exit_code()
        if code == EXIT_NOTHING_SCANNED:
            print("connscan: nothing was scanned (exit 3)", file=sys.stderr)
        return code


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Signature, GeoIP, rule and output options shared by every scan command.

    Every default is None so that build_context can tell "not given" (config file or
    built-in default applies) from "given" (the flag wins).
    """
    sig = parser.add_argument_group("signatures and GeoIP")
    sig.add_argument("--iocs", action="append", metavar="PATH",
                     help="C2 signature file (THOR c2-iocs, plain list, FireHOL, ipsum, Spamhaus DROP, "
                          "Feodo CSV); repeatable. Default: none")
    sig.add_argument("--allowlist", action="append", metavar="PATH",
                     help="allowlisted networks (same formats); entries without a score get "
                          "allowlist_score (default -50); repeatable")
    sig.add_argument("--keep-special-ranges", action="store_true", default=None,
                     help="also match C2 entries that cover a whole private, loopback, link-local or multicast "
                          "range (10.0.0.0/8, ...: bogon entries of lists like firehol_level1, left out by default)")
    sig.add_argument("--geoip", metavar="PATH",
                     help="MaxMind DB country database (default: embedded DB-IP Country Lite)")
    rules = parser.add_argument_group("rules (README: Rules and defaults)")
    rules.add_argument("--relevant-countries", metavar="CC,..",
                       help="ISO country codes of the relevant remote regions "
                            "(default BY,CU,IR,KP,RU,SY; empty string: none)")
    rules.add_argument("--allow-process", dest="allow_processes", action="append", metavar="NAME",
                       help="allowlisted process name or executable path (score allow_process_score, "
                            "default -50); repeatable")
    rules.add_argument("--no-direct-internet", action="append", metavar="CIDR",
                       help="network of hosts that must not talk to the Internet directly; "
                            "their outbound connections to public addresses are findings; repeatable")
    rules.add_argument("--suspicious-ports", metavar="PORT[=SCORE],..",
                       help="add or re-score suspicious ports (score 0 removes a built-in one)")
    rules.add_argument("--notice", type=float, metavar="N", help="Notice threshold (default 40)")
    rules.add_argument("--warning", type=float, metavar="N", help="Warning threshold (default 60)")
    rules.add_argument("--alert", type=float, metavar="N", help="Alert threshold (default 81)")
    rules.add_argument("--max-reasons", type=int, metavar="N",
                       help="reasons listed per finding (default 5; 0: all)")
    rules.add_argument("--all-connections", action="store_true", default=None,
                       help="report every connection, unflagged ones as 'Established connection' (Info)")
    out = parser.add_argument_group("output")
    out.add_argument("--format", choices=("text", "jsonl"),
                     help="THOR text lines or JSON Lines (default text)")
    out.add_argument("--output", "-o", metavar="PATH", help="write findings here (default stdout)")
    out.add_argument("--stats", metavar="PATH", help="write run statistics as JSON here")
    out.add_argument("--tag", metavar="TAG",
                     help="tag after the host in text lines (default connscan; THOR for THOR log parsers)")
    out.add_argument("--fail-level", choices=("notice", "warning", "alert"),
                     help="exit 1 when a finding is at or above this level (default alert)")
    out.add_argument("--config", metavar="PATH", help="TOML config file (flags override it)")


def _flags(args: argparse.Namespace) -> dict:
    flags = dict(vars(args))
    if flags.get("suspicious_ports") is not None:
        flags["suspicious_ports"] = parse_ports(flags["suspicious_ports"])
    return flags


def build_context(args: argparse.Namespace) -> ScanContext:
    """Settings, signatures, GeoIP, engine and evaluator for one run (ConnscanError on bad input)."""
    from connscan.engine import Engine
    from connscan.geoip import GeoTable
    from connscan.rules import Evaluator
    from connscan.signatures import SignatureSet

    config_path = getattr(args, "config", None)
    file_settings = load_config_file(config_path) if config_path else {}
    settings = resolve_settings(_flags(args), file_settings, config_path)
    notes = []
    c2 = (SignatureSet.load(settings.iocs, keep_special_ranges=settings.keep_special_ranges) if settings.iocs
          else SignatureSet.from_networks([]))
    if not settings.iocs:
        notes.append("no C2 signature list configured (--iocs or 'iocs' in --config): "
                     "only the GeoIP, port and direct-Internet rules apply")
    signatures = c2
    if settings.allowlist:
        signatures = c2 + SignatureSet.load(settings.allowlist, kind="allowlist",
                                            score=int(settings.rules.allowlist_score))
    if signatures.domains:
        notes.append(f"{len(signatures.domains)} domain entries in the signature files are kept aside: "
                     "connections are matched by address only")
    for warning in signatures.warnings[:20]:
        notes.append(f"warning: {warning}")
    if len(signatures.warnings) > 20:
        notes.append(f"warning: ... and {len(signatures.warnings) - 20} more signature warnings")
    geoip = GeoTable.open(settings.geoip)
    if settings.geoip is None:
        notes.append("GeoIP: embedded DB-IP Country Lite (IP Geolocation by DB-IP, https://db-ip.com)")
    countries = ",".join(settings.rules.relevant_countries) or "none"
    notes.append(f"relevant countries: {countries}; {len(c2)} C2 signatures, "
                 f"{len(signatures) - len(c2)} allowlist entries")
    hostname = socket.gethostname()
    engine = _compiled_engine(Engine, signatures, geoip, settings)
    evaluator = Evaluator(engine, settings.rules, hostname=hostname)
    return ScanContext(settings, signatures, geoip, engine, evaluator, hostname, notes=notes)


ENGINE_CACHE_KEEP = 3  # compiled engines kept in the cache directory (newest first; ~90 MB each with DB-IP)


def _compiled_engine(engine_class, signatures, geoip, settings: Settings):
    """The Engine for these inputs: loaded (memory-mapped) from the cache when the same
    signature files, scores and GeoIP data were compiled before, else built and cached.

    Compiling DB-IP into the lookup tables takes seconds; loading the saved tables does not.
    A missing, stale or corrupt cache file just means a rebuild; an unwritable cache
    directory means no cache.
    """
    from connscan.errors import CacheError
    from connscan.geoip import default_cache_dir

    key = hashlib.sha256(f"connscan {__version__}\0{geoip.sha256}\0{settings.rules.allowlist_score}"
                         f"\0{settings.keep_special_ranges}".encode())
    for kind, paths in (("c2", settings.iocs), ("allowlist", settings.allowlist)):
        for path in paths:
            with open(path, "rb") as handle:  # readable: SignatureSet.load just read it
                key.update(f"\0{kind}\0{os.path.abspath(path)}\0".encode() + hashlib.sha256(handle.read()).digest())
    folder = default_cache_dir() / "engines"
    cached = folder / f"{key.hexdigest()[:40]}.engine"
    try:
        engine = engine_class.load(cached)
        if len(engine.signatures) == len(signatures):
            os.utime(cached)  # newest first when pruning
            return engine
    except CacheError:
        pass
    engine = engine_class(signatures, geoip)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{cached.name}.{os.getpid()}"
        engine.save(partial)
        os.replace(partial, cached)  # atomic: a concurrent run sees the old file or the new one
        for old in sorted(folder.glob("*.engine"), key=lambda p: p.stat().st_mtime, reverse=True)[ENGINE_CACHE_KEEP:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass  # no cache this time; the scan itself is unaffected
    return engine


def run_scan(args: argparse.Namespace, ctx: ScanContext) -> int:
    """``connscan scan``: collect this host's sockets, evaluate, write findings."""
    from connscan import live

    snapshot = live.collect(include_loopback=ctx.settings.include_loopback)
    for warning in snapshot.warnings:
        print(f"connscan: warning: {warning}", file=sys.stderr)
    stats = ctx.stats
    stats.records_read = snapshot.records_read
    stats.records_skipped.update(snapshot.skipped)
    findings = ctx.evaluator.evaluate(snapshot.batch)
    stats.records_scanned = _rows(snapshot.batch)
    with ctx.open_writer() as writer:
        writer.write_all(findings)
    stats.add_findings(findings)
    return ctx.finish()


def _rows(batch) -> int:
    if isinstance(batch, dict):
        return len(batch["rip"])
    return batch.num_rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="connscan",
        description="Check this host's network connections (scan) or flow exports (flows) against "
                    "C2 signatures, relevant countries and rules; report THOR-style findings.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"connscan {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    scan = commands.add_parser(
        "scan", help="scan the live connections of this host's processes",
        description="Scan every TCP/UDP socket of this host's processes (IPv4 and IPv6) and report "
                    "findings. Loopback and unconnected sockets are skipped unless --include-loopback.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(scan)
    scan.add_argument("--include-loopback", action="store_true", default=None,
                      help="also evaluate loopback and unconnected sockets")
    scan.set_defaults(run=run_scan)
    flows_help = "evaluate flow exports (nfdump, Zeek, Suricata, AWS VPC, CSV, Parquet, NetFlow)"
    try:
        from connscan import flows
    except ImportError as exc:
        unavailable = commands.add_parser("flows", help=flows_help + " [unavailable]")
        unavailable.set_defaults(run=None, unavailable=f"connscan flows is not available in this build: {exc}")
    else:
        flow_parser = commands.add_parser(
            "flows", help=flows_help, description=flows_help.capitalize() + ".",
            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        add_common_options(flow_parser)
        flows.add_flow_options(flow_parser)
        flow_parser.set_defaults(run=flows.run_flows)
    return parser


class _NoPandas:
    """An import finder for which pandas is not installed."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("pandas is hidden from this connscan command", name=name)
        return None


@contextlib.contextmanager
def pandas_hidden(hide: bool = True) -> Iterator[None]:
    """Within: "import pandas" fails, unless pandas is loaded already.

    pyarrow imports pandas, when installed, as soon as it converts arrays (to recognise
    pandas objects): about 30 MB of peak memory and 0.1 s of start-up that connscan's scans
    never use. pyarrow works without it; the Dask path, which passes pandas frames around,
    runs with ``hide=False``. Afterwards pandas imports again; pyarrow, having once found
    none, recognises pandas objects again after its first explicit pandas call
    (``to_pandas``, ``from_pandas``): this matters only to a program that runs ``main``
    in-process and then hands pandas objects to ``pa.array``."""
    if not hide or "pandas" in sys.modules:
        yield
        return
    sys.meta_path.insert(0, _NoPandas)
    try:
        yield
    finally:
        sys.meta_path.remove(_NoPandas)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.run is None:
        print(f"connscan: error: {args.unavailable}", file=sys.stderr)
        return EXIT_USAGE
    try:
        ctx = build_context(args)
        for note in ctx.notes:
            print(f"connscan: {note}", file=sys.stderr)
        with pandas_hidden(not (getattr(args, "dask", None) or ctx.settings.flows.get("dask"))):
            return args.run(args, ctx)
    except ConnscanError as exc:
        print(f"connscan: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("connscan: interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - a crash must not look like exit 1 ("findings")
        traceback.print_exc()
        print("connscan: internal error (exit 4)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
