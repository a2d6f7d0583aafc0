"""Rules, THOR scores and levels: a columnar batch of connections -> findings.

The evaluator does the per-connection work with numpy and the engine's native lookups
(one ``engine.lookup`` per address column); only the connections that need attention
(signature hit, relevant country, suspicious port, direct Internet, or every connection
with ``all_connections``) become Python ``Finding`` objects.
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connscan.errors import ConfigError
from connscan.findings import Finding, Reason

__all__ = [
    "BUILTIN_SUSPICIOUS_PORTS",
    "DEFAULT_RELEVANT_COUNTRIES",
    "SPECIAL_PURPOSE_NETWORKS",
    "Evaluator",
    "Finding",
    "Reason",
    "RuleConfig",
    "combine_scores",
    "level_for",
]

# Countries under comprehensive EU/US sanctions or embargoes and home of the most reported
# state-sponsored intrusion sets: ordinary business traffic to them is rare, so a
# connection deserves a look (Notice). CN is left out on purpose: too much legitimate
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

# IANA special-purpose registries (IPv4 RFC 6890 and successors, IPv6 likewise): an address
# inside one of these is not "the public Internet" for the direct-Internet rule.
SPECIAL_PURPOSE_NETWORKS: tuple[str, ...] = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
    "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "100::/64", "2001:db8::/32", "fc00::/7", "fe80::/10", "ff00::/8",
)


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


def _network_ends(network: str) -> tuple[str, str]:
    """First and last address of a signature network ("a/n" or "a-b")."""
    if "-" in network:
        first, last = network.split("-", 1)
        return first, last
    net = ipaddress.ip_network(network, strict=False)
    return str(net.network_address), str(net.broadcast_address)


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
        self._attention_cache: dict[int, bool] = {}
        self._relevant = np.array([cc.encode("ascii") for cc in self.config.relevant_countries], dtype="S2")
        self._ports = np.array(sorted(self.config.suspicious_ports), dtype=np.int64)
        self._nodirect_engine = _network_engine(self.config.no_direct_internet) if self.config.no_direct_internet else None
        self._relevant_set = frozenset(self.config.relevant_countries)
        self._reason_cache: dict[tuple, Reason] = {}
        self._signature_infos: dict[int, tuple[Reason, int | None]] = {}
        self._outcome_cache: dict[tuple, tuple[float, str, str]] = {}
        self._matches_cache: dict[str, list[int]] = {}
        self._isolated: np.ndarray | None = None  # computed at the first signature hit
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
        flag = self._attention_cache.get(index)
        if flag is None:
            sig = self._signature(index)
            flag = sig.kind == "c2" and sig.score > 0
            if not flag:
                first, last = _network_ends(sig.network)
                around = set(self.engine.matches(first)) | set(self.engine.matches(last))
                flag = any(self._signature(j).kind == "c2" and self._signature(j).score > 0 for j in around)
            self._attention_cache[index] = flag
        return flag

    def _attention(self, sig_index: np.ndarray) -> np.ndarray:
        """Rows whose most specific signature needs a look (vectorised over unique hits)."""
        hit = sig_index >= 0
        if not hit.any():
            return hit
        unique = np.unique(sig_index[hit])
        flags = np.array([self._sig_needs_attention(int(i)) for i in unique], dtype=bool)
        out = np.zeros(len(sig_index), dtype=bool)
        out[hit] = flags[np.searchsorted(unique, sig_index[hit])]
        return out

    def evaluate(self, batch) -> list[Finding]:
        """Findings at or above Notice (every connection with ``all_connections``)."""
        table = _as_table(batch)
        missing = [name for name in _REQUIRED_COLUMNS if name not in table.column_names]
        if missing:
            raise ValueError(f"connection batch lacks column(s) {', '.join(missing)} (docs/ARCHITECTURE.md)")
        n = table.num_rows
        if n == 0:
            return []
        cfg = self.config
        remote = self.engine.lookup(table.column("rip"))
        rsig = np.asarray(remote.signature, dtype=np.int64)
        attention = self._attention(rsig)
        check_local = _bool_column(table, "check_local")
        lsig = None
        if check_local.any():
            local = self.engine.lookup(table.column("lip"))
            lsig = np.where(check_local, np.asarray(local.signature, dtype=np.int64), -1)
            attention |= self._attention(lsig)
        country = np.asarray(remote.country, dtype="S2")
        attention |= np.isin(country, self._relevant)
        inbound = _equals(table, "direction", "inbound")
        outbound = _equals(table, "direction", "outbound")
        lport = _int_column(table, "lport")
        rport = _int_column(table, "rport")
        service_port = np.where(inbound, lport, rport)
        attention |= np.isin(service_port, self._ports)
        nodirect_net = None
        if self._nodirect_engine is not None:
            nodirect_net = np.asarray(self._nodirect_engine.lookup(table.column("lip")).signature, dtype=np.int64)
            public = np.asarray(remote.valid, dtype=bool) & (
                np.asarray(_special_purpose_engine().lookup(table.column("rip")).signature) < 0
            )
            if self.home_engine is not None:
                public &= np.asarray(self.home_engine.lookup(table.column("rip")).signature) < 0
            nodirect_net = np.where(outbound & public, nodirect_net, -1)
            attention |= nodirect_net >= 0
        if cfg.all_connections:
            attention[:] = True
        rows = np.flatnonzero(attention)
        if len(rows) == 0:
            return []
        return self._findings(table, rows, rsig, lsig, country, inbound, service_port, nodirect_net)

    def _findings(self, table, rows, rsig, lsig, country, inbound, service_port, nodirect_net) -> list[Finding]:
        cfg = self.config
        wanted = [name for name in _FINDING_COLUMNS if name in table.column_names]
        picked = table.select(wanted).take(pa.array(rows)).to_pydict()
        absent = [None] * len(rows)
        col = {name: picked.get(name, absent) for name in _FINDING_COLUMNS}
        rsig_rows = rsig[rows].tolist()
        lsig_rows = lsig[rows].tolist() if lsig is not None else absent
        nodirect_rows = nodirect_net[rows].tolist() if nodirect_net is not None else absent
        port_rows = service_port[rows].tolist()
        inbound_rows = inbound[rows].tolist()
        country_rows = [cc.decode("ascii") or None for cc in country[rows].tolist()]
        now = datetime.now(timezone.utc)
        rips, lips, rports, lports = col["rip"], col["lip"], col["rport"], col["lport"]
        names, exes, pids = col["name"], col["exe"], col["pid"]
        suspicious, relevant = cfg.suspicious_ports, self._relevant_set
        check_process = bool(self._allow_names or self._allow_paths)
        keep_info = cfg.all_connections
        hostname, limit = self.hostname, cfg.max_reasons or None
        findings = []
        for k in range(len(rows)):
            reasons: list[Reason] = []
            negatives: list[Reason] = []
            if rsig_rows[k] >= 0:
                self._signature_reasons(rips[k], rports[k], rsig_rows[k], reasons, negatives)
            if lsig_rows[k] is not None and lsig_rows[k] >= 0:
                self._signature_reasons(lips[k], lports[k], lsig_rows[k], reasons, negatives)
            if nodirect_rows[k] is not None and nodirect_rows[k] >= 0:
                reasons.append(self._direct_reason(nodirect_rows[k]))
            if port_rows[k] in suspicious:
                reasons.append(self._port_reason(port_rows[k]))
            cc = country_rows[k]
            if cc in relevant:
                reasons.append(self._geoip_reason(cc, inbound_rows[k]))
            if check_process:
                allowed = self._process_allowlisted(names[k], exes[k])
                if allowed is not None:
                    negatives.append(self._process_reason(allowed))
            reasons += negatives
            score, level, message = self._outcome(reasons)
            if level == "Info" and not keep_info:
                continue
            pid = pids[k]
            # Positional, in Finding's field order: several times faster than keywords.
            findings.append(Finding(
                now, hostname, level, message, score, col["proto"][k],
                lips[k], _port(lports[k]), rips[k], _port(rports[k]), col["direction"][k] or "unknown", cc,
                reasons[:limit], "ProcessConnections",
                None if pid is None or pid < 0 else pid, names[k] or None, col["command"][k] or None,
                exes[k] or None, col["user"][k] or None, col["status"][k] or None,
                col["file"][k], col["row"][k], col["start"][k],
            ))
        return findings

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

    def _signature_reasons(self, addr, port, most_specific: int, reasons, negatives) -> None:
        if self._isolated is None:
            self._isolated = _isolated_signatures(self.signatures)
        if most_specific < len(self._isolated) and self._isolated[most_specific]:
            indices = (most_specific,)  # it overlaps no other signature: the only match
        else:
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


_REQUIRED_COLUMNS = ("lip", "lport", "rip", "rport", "proto", "direction")
_FINDING_COLUMNS = ("lip", "rip", "lport", "rport", "proto", "direction", "pid", "name", "command", "exe",
                    "user", "status", "file", "row", "start")


def _port(value) -> int | None:
    return None if value is None or value < 0 else int(value)


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
