"""Rules, THOR scores and levels: a columnar batch of connections -> findings.

The evaluator does the per-connection work with numpy and the engine's native lookups
(one ``engine.lookup`` per address column); only the connections that need attention
(signature hit, relevant country, suspicious port, direct Internet, or every connection
with ``all_connections``) become Python ``Finding`` objects. Those rows are grouped by
everything their reasons depend on (signatures matched, port, country, ...), so reasons,
score and level are worked out once per group, and the groups are remembered across batches.
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from itertools import repeat
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connscan.errors import ConfigError
from connscan.findings import Finding, Reason
from connscan.signatures import KINDS, SPECIAL_PURPOSE_NETWORKS

__all__ = [
    "BUILTIN_SUSPICIOUS_PORTS",
    "DEFAULT_RELEVANT_COUNTRIES",
    "SPECIAL_PURPOSE_NETWORKS",
    "Evaluator",
    "Finding",
    "FlaggedRows",
    "Reason",
    "RuleConfig",
    "combine_scores",
    "level_for",
]

# Countries long under broad EU and/or US sanctions or embargoes (CU, IR, KP, SY; RU and BY
# since 2022), most of them home to the most reported state-sponsored intrusion sets:
# ordinary business traffic to them is rare, so a connection deserves a look (Notice). CN is left out on purpose: too much legitimate
# traffic (manufacturing, CDNs) in most organisations. Override with relevant_countries.
DEFAULT_RELEVANT_COUNTRIES: tuple[str, ...] = ("BY", "CU", "IR", "KP", "RU", "SY")

# Ports that mainly mean malware or hacking tools: {port: (sub-score, why)}. The port is the
# remote port of an outbound connection and the local port of an inbound one (the service).
BUILTIN_SUSPICIOUS_PORTS: dict[int, tuple[int, str]] = {
    4444: (60, "Metasploit/Meterpreter default handler"),
    50050: (60, "Cobalt Strike team server default"),
    40056: (60, "Havoc team server default"),
    31337: (50, "Back Orifice / Sliver multiplayer, 'eleet' backdoor port"),
    1337: (50, "'leet' backdoor and tool default"),
    12345: (50, "NetBus trojan"),
    27374: (50, "SubSeven trojan"),
    1604: (50, "DarkComet RAT default"),
    5552: (50, "njRAT default"),
    4782: (50, "Quasar RAT default"),
    6606: (50, "AsyncRAT default"),
    7707: (50, "AsyncRAT default"),
    8808: (50, "AsyncRAT default"),
    9001: (40, "Tor relay ORPort default"),
    9030: (40, "Tor relay DirPort default"),
}

def _builtin_ports() -> dict[int, float]:
    return {port: float(score) for port, (score, _) in BUILTIN_SUSPICIOUS_PORTS.items()}


@dataclass(frozen=True)
class RuleConfig:
    """Every rule setting; the defaults are the documented ones (README, rules section)."""

    relevant_countries: tuple[str, ...] = DEFAULT_RELEVANT_COUNTRIES
    geoip_score: float = 40  # Notice on its own
    geoip_score_inbound: float = 25  # a server visited from there: below Notice on its own
    suspicious_ports: dict[int, float] = field(default_factory=_builtin_ports)
    port_score: float = 50  # for ports configured without their own score
    no_direct_internet: tuple[str, ...] = ()
    direct_internet_score: float = 60  # Warning
    allow_processes: tuple[str, ...] = ()
    allow_process_score: float = -50
    allowlist_score: float = -50  # network allowlist entries without their own score
    notice: float = 40
    warning: float = 60
    alert: float = 81
    max_reasons: int = 5  # reasons listed per finding; 0 = all (the score uses all)
    all_connections: bool = False

    def validate(self) -> RuleConfig:
        """Raise ConfigError on any out-of-range setting; returns self."""
        if not 0 < self.notice <= self.warning <= self.alert <= 100:
            raise ConfigError(
                f"thresholds must satisfy 0 < notice <= warning <= alert <= 100 "
                f"(got notice={self.notice}, warning={self.warning}, alert={self.alert})"
            )
        for name in ("geoip_score", "geoip_score_inbound", "port_score", "direct_internet_score"):
            if not 0 <= getattr(self, name) <= 100:
                raise ConfigError(f"{name} must be within 0..100 (got {getattr(self, name)})")
        for name in ("allow_process_score", "allowlist_score"):
            if not -100 <= getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be within -100..0 (got {getattr(self, name)})")
        for port, score in self.suspicious_ports.items():
            if not (isinstance(port, int) and 0 <= port <= 65535):
                raise ConfigError(f"suspicious port {port!r} is not a port number 0..65535")
            if not 0 <= score <= 100:
                raise ConfigError(f"score of suspicious port {port} must be within 0..100 (got {score})")
        for cc in self.relevant_countries:
            if not (isinstance(cc, str) and len(cc) == 2 and cc.isascii() and cc.isalpha() and cc.isupper()):
                raise ConfigError(f"relevant country {cc!r} is not an ISO 3166 alpha-2 code like 'KP'")
        for net in self.no_direct_internet:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as exc:
                raise ConfigError(f"no_direct_internet: {net!r} is not a CIDR ({exc})") from None
        if not isinstance(self.max_reasons, int) or self.max_reasons < 0:
            raise ConfigError(f"max_reasons must be an integer >= 0 (got {self.max_reasons!r})")
        return self

    def updated(self, **changes: Any) -> RuleConfig:
        """A copy with ``changes`` applied (unknown names raise ConfigError)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown rule setting(s): {', '.join(unknown)}")
        return replace(self, **changes)


def combine_scores(sub_scores) -> float:
    """THOR score: positives sorted descending, ``100 * (1 - prod(1 - s_i/100/2**i))``,
    then negative (allowlist) sub-scores added; clamped to 0..100, one decimal."""
    positives = sorted((s for s in sub_scores if s > 0), reverse=True)
    remaining = 1.0
    for i, s in enumerate(positives):
        remaining *= 1.0 - min(s, 100) / 100.0 / 2**i
    total = 100.0 * (1.0 - remaining) + sum(s for s in sub_scores if s < 0)
    return round(min(100.0, max(0.0, total)), 1)


def level_for(score: float, config: RuleConfig | None = None) -> str:
    """"Alert", "Warning", "Notice" or "Info" for a combined score."""
    config = config or RuleConfig()
    if score >= config.alert:
        return "Alert"
    if score >= config.warning:
        return "Warning"
    if score >= config.notice:
        return "Notice"
    return "Info"


def _network_engine(networks):
    """A small Engine whose signatures are ``networks`` (membership tests)."""
    from connscan.engine import Engine
    from connscan.signatures import SignatureSet

    return Engine(SignatureSet.from_networks(list(networks), description="network", score=100), None)


_special_engine = None


def _special_purpose_engine():
    global _special_engine
    if _special_engine is None:
        _special_engine = _network_engine(SPECIAL_PURPOSE_NETWORKS)
    return _special_engine


def _as_table(batch) -> pa.Table:
    if isinstance(batch, pa.Table):
        return batch
    if isinstance(batch, pa.RecordBatch):
        return pa.Table.from_batches([batch])
    if isinstance(batch, dict):
        return pa.table({k: v for k, v in batch.items() if v is not None})
    raise TypeError(f"batch must be a pyarrow Table/RecordBatch or a dict of columns, not {type(batch).__name__}")


def _int_column(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name)
    return pc.fill_null(col, -1).to_numpy().astype(np.int64, copy=False)


def _bool_column(table: pa.Table, name: str) -> np.ndarray:
    n = table.num_rows
    if name not in table.column_names:
        return np.zeros(n, dtype=bool)
    col = table.column(name)
    if not pa.types.is_boolean(col.type):
        col = pc.cast(col, pa.bool_())
    return pc.fill_null(col, False).to_numpy(zero_copy_only=False).astype(bool, copy=False)


def _equals(table: pa.Table, name: str, value: str) -> np.ndarray:
    col = table.column(name)
    return pc.fill_null(pc.equal(col, value), False).to_numpy(zero_copy_only=False).astype(bool, copy=False)


def _isolated_signatures(signatures) -> np.ndarray:
    """Per signature index: True when its range overlaps no other signature's range, so it
    is the only match of any address inside it (no engine.matches call needed)."""
    isolated = np.zeros(len(signatures), dtype=bool)
    if not hasattr(signatures, "v4_ranges"):
        return isolated  # unknown shape: always ask the engine
    start, end, index = signatures.v4_ranges()
    families = [(np.asarray(start, np.int64), np.asarray(end, np.int64), np.asarray(index))]
    hi0, lo0, hi1, lo1, index6 = signatures.v6_ranges()
    if len(index6):
        # 128-bit values as Python ints in object arrays: fine for the (few) IPv6 signatures.
        as_int = np.frompyfunc(lambda h, l: (int(h) << 64) | int(l), 2, 1)
        families.append((as_int(hi0, lo0), as_int(hi1, lo1), np.asarray(index6)))
    for first, last, idx in families:
        if len(idx) == 0:
            continue
        order = np.lexsort((-last, first)) if first.dtype != object else np.array(
            sorted(range(len(idx)), key=lambda i: (first[i], -last[i])), dtype=np.int64)
        first, last, idx = first[order], last[order], idx[order]
        reach = np.maximum.accumulate(last)  # furthest end among ranges starting earlier
        overlapped = np.zeros(len(idx), dtype=bool)
        overlapped[1:] |= reach[:-1] >= first[1:]
        overlapped[:-1] |= first[1:] <= last[:-1]
        isolated[idx[~overlapped]] = True
    return isolated


@dataclass
class FlaggedRows:
    """The findings of one evaluated batch in columns, row i of ``table`` being finding i.

    ``index``: each finding's position in the evaluated batch; ``group``: its index into
    ``outcomes``, the (score, level, message, listed reasons) shared by its group;
    ``lport``/``rport``: ports (-1 unknown); ``country``: remote country code (b"" unknown).
    """

    time: datetime
    hostname: str
    table: pa.Table
    index: np.ndarray
    group: np.ndarray
    outcomes: list[tuple]
    lport: np.ndarray
    rport: np.ndarray
    country: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    def level_counts(self) -> dict[str, int]:
        """Number of findings per level."""
        counts: dict[str, int] = {}
        for outcome, n in zip(self.outcomes, np.bincount(self.group, minlength=len(self.outcomes)).tolist()):
            if n:  # groups left out (Info) have no rows
                counts[outcome[1]] = counts.get(outcome[1], 0) + n
        return counts

    def findings(self) -> list[Finding]:
        """One Finding object per row."""
        group_of = self.group.tolist()
        picked, m = self.table, len(self)

        def per_group(i):  # outcome field i of each row
            values = [outcome[i] for outcome in self.outcomes]
            return [values[g] for g in group_of]

        def text(name, default=None):
            return _text_column(picked, name, None, default)

        # Positional, in Finding's field order: several times faster than keywords.
        return list(map(
            Finding, repeat(self.time, m), repeat(self.hostname, m), per_group(1), per_group(2),
            per_group(0), _column(picked, "proto"), _column(picked, "lip"), _ports(self.lport),
            _column(picked, "rip"), _ports(self.rport),
            text("direction", "unknown"), [cc.decode("ascii") or None for cc in self.country.tolist()],
            map(list, per_group(3)), repeat("ProcessConnections", m),
            [None if pid is None or pid < 0 else pid for pid in _column(picked, "pid")],
            text("name"), text("command"), text("exe"), text("user"), text("status"),
            _column(picked, "file"), _column(picked, "row"), _column(picked, "start"),
        ))


class Evaluator:
    """Evaluate connection batches (docs/ARCHITECTURE.md, section Rules and findings).

    ``home_engine``: optional Engine of the organisation's own networks; its addresses,
    like the special-purpose ranges, are not "public" for the direct-Internet rule.
    """

    def __init__(self, engine, config: RuleConfig | None = None, home_engine=None, hostname: str | None = None):
        self.engine = engine
        self.config = (config or RuleConfig()).validate()
        self.home_engine = home_engine
        self.hostname = hostname or socket.gethostname()
        self.signatures = engine.signatures
        self._signature_cache: dict[int, Any] = {}
        # Membership tables: a two-letter code read as a 16-bit integer, a port + 1 (-1 unknown).
        self._relevant_table = np.zeros(1 << 16, bool)
        self._relevant_table[np.array([cc.encode("ascii") for cc in self.config.relevant_countries], "S2").view(np.uint16)] = True
        self._port_table = np.zeros((1 << 16) + 1, bool)
        self._port_table[np.array(sorted(self.config.suspicious_ports), np.int64) + 1] = True
        self._nodirect_engine = _network_engine(self.config.no_direct_internet) if self.config.no_direct_internet else None
        self._reason_cache: dict[tuple, Reason] = {}
        self._signature_infos: dict[int, tuple[Reason, int | None]] = {}
        self._outcome_cache: dict[tuple, tuple[float, str, str]] = {}
        self._matches_cache: dict[str, list[int]] = {}
        self._isolated: np.ndarray | None = None  # computed at the first signature hit
        self._cover_cache: dict[int, tuple[int, ...] | None] = {}
        self._flags: np.ndarray | None = None  # per signature, see _signature_flags
        self._key_codes: dict[tuple, int] = {}  # addresses and allowlisted processes in group keys
        self._group_outcomes: dict[bytes, tuple] = {}  # group key -> _group_outcome
        self._allow_paths = [p.casefold() for p in self.config.allow_processes if "/" in p or "\\" in p]
        self._allow_names = [p.casefold() for p in self.config.allow_processes if not ("/" in p or "\\" in p)]

    def _signature(self, index: int):
        sig = self._signature_cache.get(index)
        if sig is None:
            sig = self._signature_cache[index] = self.signatures[index]
        return sig

    def _sig_needs_attention(self, index: int) -> bool:
        # A c2 hit always needs a look; an allowlist hit only when a c2 signature overlaps
        # the allowlisted network. CIDRs nest, and a partially overlapping range holds one
        # of its ends, so the c2 signatures that matter contain its first or last address.
        sig = self._signature(index)
        if sig.kind == "c2" and sig.score > 0:
            return True
        version, first, last, _ = self.signatures.bounds(index)
        around = set(self.engine.matches_at(version, first)) | set(self.engine.matches_at(version, last))
        return any(self._signature(j).kind == "c2" and self._signature(j).score > 0 for j in around)

    def _signature_flags(self, indices: np.ndarray) -> np.ndarray:
        """_ATTENTION | _VARYING | _BY_PORT of each signature index (>= 0), worked out the
        first time a signature is hit and then looked up with numpy."""
        if self._flags is None:
            self._flags = self._isolated_flags()
        flags = self._flags
        for index in np.unique(indices[flags[indices] < 0]).tolist():
            flags[index] = self._signature_flag(index)
        return flags[indices]

    def _signature_flag(self, index: int) -> int:
        cover = self._constant_cover(index)
        return (_ATTENTION * self._sig_needs_attention(index) + _VARYING * (cover is None)
                + _BY_PORT * (cover is None or any(self._signature_info(i)[1] is not None for i in cover)))

    def _isolated_flags(self) -> np.ndarray:
        """Per signature, _signature_flag for those no other signature overlaps (all of
        them at once: a flow scan hits thousands), -1 (not known yet) for the others."""
        flags = np.full(len(self.signatures), -1, np.int8)
        if not hasattr(self.signatures, "rule_columns"):
            return flags
        if self._isolated is None:
            self._isolated = _isolated_signatures(self.signatures)
        kind, score, port = self.signatures.rule_columns()
        alone = (_ATTENTION * ((kind == _KIND_C2) & (score > 0)) + _BY_PORT * (port >= 0)).astype(np.int8)
        flags[self._isolated] = alone[self._isolated]
        return flags

    def _attention_rows(self, rsig, local_sig, country, inbound, lport, rport) -> np.ndarray:
        """Rows whose remote or local signature needs a look, whose remote country is a
        relevant one or whose service port a suspicious one (one native pass)."""
        if self._flags is None:
            self._flags = self._isolated_flags()
        columns = (np.ascontiguousarray(rsig, np.int32),
                   None if local_sig is None else np.ascontiguousarray(local_sig, np.int32),
                   np.ascontiguousarray(country, "S2").view(np.uint16), np.ascontiguousarray(inbound, bool).view(np.uint8),
                   np.ascontiguousarray(lport, np.int64), np.ascontiguousarray(rport, np.int64))
        while True:
            rows, unknown = self.engine._impl.attention_rows(*columns, self._flags, _ATTENTION, self._relevant_table.view(np.uint8),
                                                             self._port_table.view(np.uint8))
            if rows is not None:
                return rows
            for index in np.unique(unknown).tolist():  # signatures hit for the first time
                self._flags[index] = self._signature_flag(index)

    def evaluate(self, batch, local=None, remote=None) -> list[Finding]:
        """Findings at or above Notice (every connection with ``all_connections``).

        ``local``/``remote``: the lip/rip columns already parsed (engine.ParsedAddresses),
        when the caller has them (the flow pipeline): they are not parsed again.
        """
        flagged = self.evaluate_columns(batch, local, remote)
        return flagged.findings() if flagged is not None else []

    def evaluate_columns(self, batch, local=None, remote=None) -> FlaggedRows | None:
        """The findings of ``evaluate`` in columns (None when there are none): what the
        flow writer renders without a Finding object per row."""
        table = _as_table(batch)
        missing = [name for name in _REQUIRED_COLUMNS if name not in table.column_names]
        if missing:
            raise ValueError(f"connection batch lacks column(s) {', '.join(missing)} (docs/ARCHITECTURE.md)")
        if table.num_rows == 0:
            return None

        def lookup(engine, side):
            parsed, name = (local, "lip") if side == "local" else (remote, "rip")
            return engine.lookup_parsed(parsed) if parsed is not None else engine.lookup(table.column(name))

        check_local = _bool_column(table, "check_local")
        local_sig = None
        if check_local.any():
            local_sig = np.where(check_local, np.asarray(lookup(self.engine, "local").signature, dtype=np.int64), -1)
        return self.evaluate_sides(
            lookup(self.engine, "remote"), local_sig,
            inbound=_equals(table, "direction", "inbound"), outbound=_equals(table, "direction", "outbound"),
            lport=_int_column(table, "lport"), rport=_int_column(table, "rport"),
            lookup=lookup, pick=lambda rows: table.take(pa.array(rows)),
        )

    def evaluate_sides(self, remote_found, local_sig, *, inbound, outbound, lport, rport, lookup, pick) -> FlaggedRows | None:
        """``evaluate_columns`` on arrays, for a caller that looked the addresses up itself
        (the flow pipeline looks up both ends once and builds a table only for flagged rows).

        ``remote_found``: the engine's LookupResult of the remote addresses (with ``valid``);
        ``local_sig``: the local addresses' signature indices (-1 none), None when the local
        side is not checked; ``inbound``/``outbound``: bool per row; ``lport``/``rport``:
        int64, -1 unknown; ``lookup(engine, "local" | "remote")``: a side looked up in
        another engine (only the direct-Internet rule asks); ``pick(rows)``: the table of
        those rows, with evaluate_columns' columns.
        """
        cfg = self.config
        rsig = np.asarray(remote_found.signature)  # int32 from the engine: no int64 copy of every row
        country = np.asarray(remote_found.country, dtype="S2")
        nodirect_net = None
        if self._nodirect_engine is not None:
            nodirect_net = np.asarray(lookup(self._nodirect_engine, "local").signature, dtype=np.int64)
            public = np.asarray(remote_found.valid, dtype=bool) & (
                np.asarray(lookup(_special_purpose_engine(), "remote").signature) < 0
            )
            if self.home_engine is not None:
                public &= np.asarray(lookup(self.home_engine, "remote").signature) < 0
            nodirect_net = np.where(outbound & public, nodirect_net, -1)
        if cfg.all_connections:
            rows = np.arange(len(rsig))
        else:
            rows = self._attention_rows(rsig, local_sig, country, inbound, lport, rport)
            if nodirect_net is not None:
                rows = np.union1d(rows, np.flatnonzero(nodirect_net >= 0))
        if len(rows) == 0:
            return None
        return self._flagged(pick(rows), rows, rsig, local_sig, country, inbound, nodirect_net, lport, rport)

    def _relevant_country(self, country: np.ndarray) -> np.ndarray:
        return self._relevant_table[np.ascontiguousarray(country, "S2").view(np.uint16)]

    def _suspicious_port(self, port: np.ndarray) -> np.ndarray:
        """Per port (int64; negative: unknown): whether it is a suspicious one."""
        return self._port_table[np.where((port >= 0) & (port <= 0xFFFF), port + 1, 0)]

    def _flagged(self, picked, rows, rsig, lsig, country, inbound, nodirect_net, lport, rport) -> FlaggedRows | None:
        """FlaggedRows of the attention ``rows`` (``picked``: their table, row k = rows[k])."""
        cfg = self.config
        n = len(rows)
        none = np.full(n, -1, np.int64)
        rsig, rport = rsig[rows], rport[rows]
        lsig = lsig[rows] if lsig is not None else none
        lport = lport[rows]
        nodirect = nodirect_net[rows] if nodirect_net is not None else none
        country, inbound = country[rows], inbound[rows]
        service = np.where(inbound, lport, rport)  # the local port of inbound flows
        suspicious = np.where(self._suspicious_port(service), service, -1)
        relevant = self._relevant_country(country)
        allowed = [None] * n
        check_process = bool(self._allow_names or self._allow_paths)
        if check_process:
            names, exes = (_text_column(picked, name, None) for name in ("name", "exe"))
            allowed = [self._process_allowlisted(name, exe) for name, exe in zip(names, exes)]
        # Rows with equal reason-relevant values get equal reasons: group them and work
        # out reasons, score, level and message once per group (and per run: the keys
        # mean the same in every batch), not once per row.
        if len(self._key_codes) > 50_000 or len(self._group_outcomes) > 50_000:
            self._key_codes.clear()  # bound memory on long flow runs (the keys change meaning)
            self._group_outcomes.clear()
        keys = np.stack([
            *self._signature_keys(rsig, picked.column("rip"), rport),
            *self._signature_keys(lsig, picked.column("lip"), lport),
            nodirect, suspicious, np.where(relevant, country.view(np.uint16), 0), relevant & inbound,
            [self._key_code(("process", entry)) for entry in allowed] if check_process else np.zeros(n, np.int64),
        ], axis=1).astype(np.int64)
        # Each key row as one opaque value: np.unique over those is ~6x faster than axis=0.
        packed = keys.view(np.dtype((np.void, keys.itemsize * keys.shape[1]))).reshape(-1)
        unique, first, group_of = np.unique(packed, return_index=True, return_inverse=True)
        group_of = group_of.reshape(-1)
        geoip = np.where(relevant, country, b"")
        keys = unique.tolist()
        outcomes = list(map(self._group_outcomes.get, keys))
        new = [g for g, outcome in enumerate(outcomes) if outcome is None]  # groups not seen before
        if new:
            at = first[new]
            for g, k, *values in zip(new, at.tolist(), *(column[at].tolist() for column in (
                    rsig, rport, lsig, lport, nodirect, suspicious, geoip, inbound))):
                outcomes[g] = self._group_outcomes[keys[g]] = self._group_outcome(picked, k, *values, allowed[k])
        keep = np.arange(n)
        if not cfg.all_connections:
            informative = np.array([level != "Info" for _, level, _, _ in outcomes], bool)
            keep = np.flatnonzero(informative[group_of])
        if len(keep) == 0:
            return None
        if len(keep) < n:
            picked = picked.take(pa.array(keep))
        return FlaggedRows(datetime.now(timezone.utc), self.hostname, picked, rows[keep],
                           group_of[keep], outcomes, lport[keep], rport[keep], country[keep])

    def _key_code(self, value: tuple) -> int:
        return self._key_codes.setdefault(value, len(self._key_codes))

    def _group_outcome(self, table, row, rsig, rport, lsig, lport, nodirect, suspicious, country, inbound, allowed):
        """(score, level, message, listed reasons) of one group of rows, from its first row
        (``country``: the relevant country code, b"" when none)."""
        reasons: list[Reason] = []
        negatives: list[Reason] = []
        if rsig >= 0:
            self._signature_reasons(lambda: table.column("rip")[row].as_py(), rport, rsig, reasons, negatives)
        if lsig >= 0:
            self._signature_reasons(lambda: table.column("lip")[row].as_py(), lport, lsig, reasons, negatives)
        if nodirect >= 0:
            reasons.append(self._direct_reason(nodirect))
        if suspicious >= 0:
            reasons.append(self._port_reason(suspicious))
        if country:
            reasons.append(self._geoip_reason(country.decode("ascii"), inbound))
        if allowed is not None:
            negatives.append(self._process_reason(allowed))
        reasons += negatives
        score, level, message = self._outcome(reasons)
        return score, level, message, tuple(reasons[:self.config.max_reasons or None])

    def _signature_keys(self, sig: np.ndarray, addresses, ports: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Two grouping key columns for one address side: which signatures match (the
        most specific one when every address it covers has the same matches, else the
        address) and the port when an IP+port signature among them makes it matter."""
        key = sig.copy()
        port_key = np.full(len(sig), -1, np.int64)
        hit = np.flatnonzero(sig >= 0)
        flags = self._signature_flags(sig[hit])
        by_port = hit[flags & _BY_PORT != 0]
        port_key[by_port] = ports[by_port]
        varying = flags & _VARYING != 0
        if varying.any():  # matches vary inside these signatures: one group per address
            at = hit[varying]
            text = addresses.take(pa.array(at)).to_pylist()
            key[at] = [-2 - self._key_code(("address", address)) for address in text]
        return key, port_key

    def _constant_cover(self, index: int) -> tuple[int, ...] | None:
        """Every signature matching the addresses whose most specific signature is
        ``index`` (most specific first), or None when that differs between addresses."""
        if index in self._cover_cache:
            return self._cover_cache[index]
        if self._isolated is None:
            self._isolated = _isolated_signatures(self.signatures)
        cover = None
        if index < len(self._isolated) and self._isolated[index]:
            cover = (index,)
        else:
            version, first, last, is_range = self.signatures.bounds(index)
            if not is_range:
                # A signature containing both ends of the CIDR contains all of it; one
                # holding a single end lies inside it (more specific: never these addresses'
                # best match) or partly overlaps it, and then the matches vary.
                at_first, at_last = self.engine.matches_at(version, first), self.engine.matches_at(version, last)
                one_end = set(at_first).symmetric_difference(at_last)
                if all(self._inside(i, version, first, last) for i in one_end):
                    cover = tuple(i for i in at_first if i in set(at_last))
        self._cover_cache[index] = cover
        return cover

    def _inside(self, index: int, version: int, first: int, last: int) -> bool:
        """Whether signature ``index`` lies inside the addresses first..last of ``version``."""
        its_version, its_first, its_last, _ = self.signatures.bounds(index)
        return its_version == version and first <= its_first and its_last <= last

    # Reasons are immutable: the evaluator builds each distinct one once and shares it.

    def _outcome(self, reasons: list[Reason]) -> tuple[float, str, str]:
        """(score, level, message) of a reason list; cached by reason identity (shared objects)."""
        key = tuple(map(id, reasons))
        known = self._outcome_cache.get(key)
        if known is None:
            if len(self._outcome_cache) > 200_000:
                self._outcome_cache.clear()  # bound memory on long flow runs
            score = combine_scores([reason.score for reason in reasons])
            known = self._outcome_cache[key] = (score, level_for(score, self.config), _message(reasons))
        return known

    def _process_reason(self, allowed: str) -> Reason:
        reason = self._reason_cache.get(("process", allowed))
        if reason is None:
            reason = self._reason_cache[("process", allowed)] = Reason(
                "allowlist", -abs(float(self.config.allow_process_score)), allowed, f"process {allowed}",
                "allow_processes")
        return reason

    def _port_reason(self, port: int) -> Reason:
        reason = self._reason_cache.get(("port", port))
        if reason is None:
            note = BUILTIN_SUSPICIOUS_PORTS.get(port, (None, None))[1]
            reason = self._reason_cache[("port", port)] = Reason(
                "port", float(self.config.suspicious_ports[port]), str(port), note,
                "built-in" if port in BUILTIN_SUSPICIOUS_PORTS else "config")
        return reason

    def _geoip_reason(self, cc: str, inbound: bool) -> Reason:
        reason = self._reason_cache.get(("geoip", cc, inbound))
        if reason is None:
            score = self.config.geoip_score_inbound if inbound else self.config.geoip_score
            reason = self._reason_cache[("geoip", cc, inbound)] = Reason(
                "geoip", float(score), cc, "Relevant remote region", "relevant_countries")
        return reason

    def _direct_reason(self, net_index: int) -> Reason:
        reason = self._reason_cache.get(("direct", net_index))
        if reason is None:
            net = self._nodirect_engine.signatures[net_index].network
            reason = self._reason_cache[("direct", net_index)] = Reason(
                "direct-internet", float(self.config.direct_internet_score), net,
                "outbound connection to a public address", "no_direct_internet")
        return reason

    def _signature_info(self, index: int) -> tuple[Reason, int | None]:
        """The reason a signature gives and its port (IP+port signatures), built once."""
        info = self._signature_infos.get(index)
        if info is None:
            sig = self._signature(index)
            kind = "allowlist" if sig.kind == "allowlist" or sig.score < 0 else "c2"
            score = -abs(float(sig.score)) if kind == "allowlist" else float(sig.score)
            info = self._signature_infos[index] = (
                Reason(kind, score, sig.network, sig.description, sig.source), sig.port)
        return info

    def _signature_reasons(self, address, port, most_specific: int, reasons, negatives) -> None:
        """``address()`` gives the address text, needed only when the matches vary."""
        indices = self._constant_cover(most_specific)
        if indices is None:
            addr = address()
            indices = self._matches_cache.get(addr)
            if indices is None:
                if len(self._matches_cache) > 100_000:
                    self._matches_cache.clear()  # bound memory on long flow runs
                indices = self._matches_cache[addr] = list(self.engine.matches(addr))
        for i in indices:
            reason, sig_port = self._signature_info(i)
            if sig_port is not None and sig_port != port:
                continue  # an IP+port signature (e.g. Feodo) matches only on its port
            (negatives if reason.kind == "allowlist" else reasons).append(reason)

    def _process_allowlisted(self, name, exe) -> str | None:
        if name and self._allow_names:
            folded = name.casefold()
            for entry in self._allow_names:
                if folded == entry:
                    return name
        if exe and (self._allow_paths or self._allow_names):
            folded = exe.casefold()
            for entry in self._allow_paths:
                if folded == entry:
                    return exe
            base = folded.replace("\\", "/").rsplit("/", 1)[-1]
            for entry in self._allow_names:
                if base == entry:
                    return exe
        return None


# Per-signature flags: a hit needs a look; its matches vary between addresses; an IP+port
# signature is among its matches (so the port decides).
_ATTENTION, _VARYING, _BY_PORT = 1, 2, 4
_KIND_C2 = KINDS.index("c2")

_REQUIRED_COLUMNS = ("lip", "lport", "rip", "rport", "proto", "direction")


def _ports(values: np.ndarray) -> list:
    """Port numbers as Python ints, None for the unknown (negative) ones."""
    out = values.astype(object)
    out[values < 0] = None
    return out.tolist()


def _column(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows


def _text_column(table: pa.Table, name: str, rows, default=None) -> list:
    """A text column's values (at ``rows`` when given), empty and null ones as ``default``."""
    if name not in table.column_names:
        return [default] * (table.num_rows if rows is None else len(rows))
    column = table.column(name) if rows is None else table.column(name).take(pa.array(rows))
    return [value or default for value in column.to_pylist()]


def _message(reasons: list[Reason]) -> str:
    kinds = {reason.kind for reason in reasons if reason.score > 0}
    if "c2" in kinds:
        return "Connection to known C2 server"
    if "direct-internet" in kinds:
        return "Direct Internet connection from internal host"
    if "port" in kinds:
        return "Connection on suspicious port"
    if "geoip" in kinds:
        return "Relevant remote region GEO IP lookup"
    return "Established connection"
