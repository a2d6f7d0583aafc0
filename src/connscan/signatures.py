"""Signature files of every supported format -> one list of address signatures.

Formats, detected per file from its content (and name where that helps):

- ``ioc``: THOR/LOKI C2 IOC files and plain lists: one ``IOC`` or ``IOC;score`` per line;
  a ``#`` line describes the IOCs below it (see ``_Loader.read_ioc``); domains kept aside.
- ``firehol``: FireHOL ``.netset``/``.ipset`` files; the header's first line names the list.
- ``ipsum``: ``IP<TAB>count`` lines; the count of blocklists goes into the description.
- ``drop``: Spamhaus DROP/DROPv6, ``;`` comments and ``cidr ; SBLnnn`` entries.
- ``csv``: feeds with a header that names the address column (abuse.ch Feodo: ``dst_ip``,
  ``dst_port`` and ``malware``).

An entry is an IPv4/IPv6 address, a CIDR or a range ``a-b``; ``::ffff:a.b.c.d`` (and CIDRs
of length >= 96 inside ``::ffff:0:0/96``) is IPv4.

C2 entries that cover a whole range of local use (LOCAL_USE_NETWORKS: ``10.0.0.0/8``,
``127.0.0.0/8``, ``224.0.0.0/4``, ...) are bogon entries of firewall lists such as
firehol_level1, not C2 servers: they are not matched (a warning per file says how many),
unless ``keep_special_ranges``. Matched, they would flag every internal host.
"""
from __future__ import annotations

import csv
import ipaddress
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, overload

import numpy as np

from connscan.errors import SignatureError

__all__ = ["LOCAL_USE_NETWORKS", "SPECIAL_PURPOSE_NETWORKS", "Signature", "SignatureFile", "SignatureSet"]

KINDS = ("c2", "allowlist")

# IANA special-purpose registries (IPv4 RFC 6890 and successors, IPv6 likewise): private,
# shared, loopback, link-local, documentation, benchmarking, multicast, reserved.
SPECIAL_PURPOSE_NETWORKS: tuple[str, ...] = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
    "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "100::/64", "2001:db8::/32", "fc00::/7", "fe80::/10", "ff00::/8",
)
# The special-purpose ranges that hosts use among themselves (private, shared, loopback,
# link-local, multicast, reserved): a C2 entry covering one whole is a bogon entry and would
# flag every internal host. Documentation and benchmarking ranges carry no real traffic.
LOCAL_USE_NETWORKS: tuple[str, ...] = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4", "::/128", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8",
)
_LOCAL_USE_BLOCKS: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
for _net in map(ipaddress.ip_network, LOCAL_USE_NETWORKS):
    _LOCAL_USE_BLOCKS[_net.version].append((int(_net.network_address), int(_net.broadcast_address)))
_SMALLEST_V4_BLOCK = min(end - start for start, end in _LOCAL_USE_BLOCKS[4])

# Strict dotted quad (no leading zeros, octets <= 255) with an optional prefix: the fast
# path; anything else goes through ipaddress.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_QUAD = re.compile(rf"({_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET})(?:/(3[0-2]|[12]?[0-9]))?")
_DOMAIN = re.compile(
    r"(?=.{1,253}\.?$)(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)+"
    r"(?:[a-z][a-z0-9-]{0,61}[a-z0-9]|xn--[a-z0-9-]{1,59})\.?",
    re.IGNORECASE,
)
_ADDRESS_CHARS = re.compile(r"[0-9A-Fa-f.:/\s-]+")
_SCORE = re.compile(r"[+-]?[0-9]{1,3}")
_COUNT = re.compile(r"[0-9]{1,9}")  # ASCII digits only (str.isdigit() accepts "²")
_DROP_ENTRY = re.compile(r"\S+\s*;\s*SBL[0-9]+")
_IPSUM_ENTRY = re.compile(r"\S+\t[0-9]+")

# CSV header names (lower case) of the columns we read, in order of preference.
_CSV_ADDRESS = ("dst_ip", "ip", "ip_address", "ipaddress", "ip_addr", "address", "addr",
                "network", "cidr", "ioc", "indicator", "dest_ip", "destination_ip")
_CSV_PORT = ("dst_port", "port", "dest_port", "destination_port")
_CSV_DESCRIPTION = ("malware", "malware_family", "family", "threat", "description", "comment")
_CSV_SCORE = ("score",)

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class Signature:
    """One signature: a network (or a domain, never matched) with its THOR score."""

    network: str  # normalised: "1.2.3.0/24", "2001:db8::/32", "1.2.3.4-1.2.3.9", or a domain
    score: int  # -100..100; allowlist entries are negative
    description: str
    source: str  # "file:line"
    port: int | None = None  # IP+port signatures (Feodo dst_port); the rules check it
    kind: str = "c2"  # "c2" or "allowlist"


class SignatureFile(NamedTuple):
    """What one file contributed to a SignatureSet (for summaries)."""

    path: str
    format: str  # "ioc", "firehol", "ipsum", "drop", "csv"; "config" for from_networks
    signatures: int  # address signatures
    domains: int
    skipped: int  # bad lines skipped (strict=False)
    special: int = 0  # C2 entries covering a whole range of local use (bogons), not matched


class _BadEntry(ValueError):
    """A line that is not a valid entry; the message is the reason."""


class _NotAddress(_BadEntry):
    """An entry with characters no address, network or range can hold."""


def _v4_text(value: int) -> str:
    return socket.inet_ntoa(value.to_bytes(4, "big"))


def _v6_text(value: int) -> str:
    return str(ipaddress.IPv6Address(value))


def _address(text: str) -> tuple[int, int]:
    """(family, integer) of one address; ::ffff:a.b.c.d is IPv4."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise _BadEntry(f"invalid address {text!r}") from None
    value = int(addr)
    if addr.version == 6 and value >> 32 == 0xFFFF:
        return 4, value & 0xFFFFFFFF
    return addr.version, value


def _parse_slow(token: str) -> tuple[int, int, int, int, str | None]:
    """(family, start, end, prefix or -1 for a range, host-bits note) of any entry."""
    if "%" in token:
        raise _BadEntry(f"scoped IPv6 address {token!r} (zone ids are host-local)")
    if not _ADDRESS_CHARS.fullmatch(token):
        raise _NotAddress(token)
    if "-" in token:
        first, _, last = token.partition("-")
        fam_a, start = _address(first.strip())
        fam_b, end = _address(last.strip())
        if fam_a != fam_b:
            raise _BadEntry(f"range {token!r} mixes IPv4 and IPv6")
        if start > end:
            raise _BadEntry(f"range {token!r} starts after its end")
        return fam_a, start, end, -1, None
    if "/" not in token:
        family, value = _address(token)
        return family, value, value, 32 if family == 4 else 128, None
    try:
        iface = ipaddress.ip_interface(token)
    except ValueError as exc:
        raise _BadEntry(f"invalid network {token!r}: {exc}") from None
    net = iface.network
    start, size, prefix = int(net.network_address), net.num_addresses, net.prefixlen
    family = net.version
    if family == 6 and prefix >= 96 and start >> 32 == 0xFFFF:
        family, start, prefix = 4, start & 0xFFFFFFFF, prefix - 96
    note = None
    if int(iface.ip) != int(net.network_address):
        text = f"{_v4_text(start)}/{prefix}" if family == 4 else f"{_v6_text(start)}/{prefix}"
        note = f"{token} has host bits set, using {text}"
    return family, start, start + size - 1, prefix, note


def covers_local_range(family: int, start: int, end: int) -> bool:
    """Whether the addresses start..end (IPv4 or IPv6 integers) hold a whole range of
    LOCAL_USE_NETWORKS."""
    return any(start <= first and last <= end for first, last in _LOCAL_USE_BLOCKS[family])


class _Loader:
    """Collects the entries of one load() call in columns, file by file."""

    def __init__(self, strict: bool, kind: str, default_score: int, keep_special_ranges: bool = True):
        self.strict = strict
        self.kind = KINDS.index(kind)
        self.skip_special = kind == "c2" and not keep_special_ranges
        self.default_score = default_score
        self.family: list[int] = []  # 4 or 6, per signature
        self.v4: tuple[list[int], list[int]] = ([], [])  # (start, end) of the IPv4 ones
        self.v6: tuple[list[int], list[int]] = ([], [])  # (start, end) of the IPv6 ones
        self.prefix: list[int] = []
        self.score: list[int] = []
        self.desc: list[int] = []
        self.file: list[int] = []
        self.line: list[int] = []
        self.port: list[int] = []
        self.descriptions: dict[str, int] = {}
        self.description_texts: list[str] = []
        self.files: list[str] = []
        self.domains: list[Signature] = []
        self.warnings: list[str] = []
        self.summaries: list[SignatureFile] = []
        self._path = ""
        self._file_id = -1
        self._skipped = 0
        self._special: list[str] = []  # this file's entries that cover a range of local use

    # -- per file ---------------------------------------------------------------------------
    def begin(self, path: str) -> None:
        self._path = path
        self._file_id = len(self.files)
        self.files.append(path)
        self._skipped = 0
        self._special = []

    def finish(self, fmt: str, first_index: int, first_domain: int) -> None:
        count = len(self.family) - first_index
        domains = len(self.domains) - first_domain
        if self._special:
            shown = ", ".join(self._special[:3]) + (", ..." if len(self._special) > 3 else "")
            self.warnings.append(
                f"{self._path}: {len(self._special)} entries cover whole private, loopback, link-local or "
                f"multicast ranges and are not matched: bogon entries, not C2 servers ({shown}; "
                "--keep-special-ranges matches them)")
        elif count == 0 and domains == 0:
            self.warnings.append(f"{self._path}: no signatures in this file")
        self.summaries.append(SignatureFile(self._path, fmt, count, domains, self._skipped, len(self._special)))

    def bad(self, line: int, reason: str) -> None:
        message = f"{self._path}:{line}: {reason}"
        if self.strict:
            raise SignatureError(message)
        self.warnings.append(message)
        self._skipped += 1

    def description_id(self, text: str) -> int:
        found = self.descriptions.get(text)
        if found is None:
            found = self.descriptions[text] = len(self.description_texts)
            self.description_texts.append(text)
        return found

    # -- per entry --------------------------------------------------------------------------
    def add(self, line: int, token: str, score: int, desc: int, port: int = -1,
            domains: bool = False) -> None:
        """Append one entry; bad entries go to bad()."""
        match = _QUAD.fullmatch(token)
        if match is not None:
            start = int.from_bytes(socket.inet_aton(match[1]), "big")
            bits = match[2]
            if bits is None:
                family, end, prefix = 4, start, 32
            else:
                prefix = int(bits)
                host = (1 << (32 - prefix)) - 1
                if start & host:
                    start &= ~host
                    self.warnings.append(f"{self._path}:{line}: {token} has host bits set, "
                                         f"using {_v4_text(start)}/{prefix}")
                family, end = 4, start | host
        else:
            try:
                family, start, end, prefix, note = _parse_slow(token)
            except _BadEntry as exc:
                if domains and _DOMAIN.fullmatch(token):
                    self.domains.append(Signature(
                        token.rstrip(".").lower(), score, self.description_texts[desc],
                        f"{self._path}:{line}", None if port < 0 else port, KINDS[self.kind]))
                    return
                if not token:
                    self.bad(line, "empty entry")
                elif isinstance(exc, _NotAddress):
                    what = "network, range or domain" if domains else "network or range"
                    self.bad(line, f"not an IP address, {what}: {token!r}")
                else:
                    self.bad(line, str(exc))
                return
            if note is not None:
                self.warnings.append(f"{self._path}:{line}: {note}")
        if self.skip_special and (family == 6 or end - start >= _SMALLEST_V4_BLOCK) and covers_local_range(family, start, end):
            self._special.append(f"line {line}: {token}")
            return
        self.family.append(family)
        starts, ends = self.v4 if family == 4 else self.v6
        starts.append(start)
        ends.append(end)
        self.prefix.append(prefix)
        self.score.append(score)
        self.desc.append(desc)
        self.file.append(self._file_id)
        self.line.append(line)
        self.port.append(port)

    def parse_score(self, line: int, text: str) -> int | None:
        text = text.strip()
        if not _SCORE.fullmatch(text) or not -100 <= int(text) <= 100:
            self.bad(line, f"invalid score {text!r} (an integer -100..100)")
            return None
        return int(text)

    # -- formats ----------------------------------------------------------------------------
    def load_file(self, path: str) -> None:
        self.begin(path)
        lines = _read_lines(path)
        fmt = _detect_format(path, lines)
        first_index, first_domain = len(self.family), len(self.domains)
        _FORMATS[fmt](self, path, lines)
        self.finish(fmt, first_index, first_domain)

    def read_ioc(self, path: str, lines: list[str]) -> None:
        # THOR semantics: a "#" line describes the IOCs below it until the next "#" line; a
        # "#" line without a letter or digit ("#", "# -----") keeps the current description,
        # and so do blank lines. IOCs above the first such line are described by the file name.
        desc = self.description_id(Path(path).stem)
        default = self.default_score
        add = self.add
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line:
                continue
            if line[0] == "#":
                text = line.lstrip("#").strip()
                if any(ch.isalnum() for ch in text):
                    desc = self.description_id(text)
                continue
            token, sep, score_text = line.partition(";")
            score = default
            if sep:
                score = self.parse_score(number, score_text)
                if score is None:
                    continue
                token = token.strip()
            add(number, token, score, desc, domains=True)

    def read_firehol(self, path: str, lines: list[str]) -> None:
        desc = self.description_id(_list_name(lines, "#") or Path(path).stem)
        score = self.default_score
        add = self.add
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if line and line[0] != "#":
                add(number, line, score, desc)

    def read_ipsum(self, path: str, lines: list[str]) -> None:
        name = _list_name(lines, "#") or Path(path).stem
        plain = self.description_id(name)
        by_count: dict[str, int] = {}
        score = self.default_score
        add = self.add
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line[0] == "#":
                continue
            fields = line.split()
            if len(fields) == 1:
                add(number, fields[0], score, plain)
                continue
            if len(fields) != 2 or not _COUNT.fullmatch(fields[1]):
                self.bad(number, f"expected 'address<TAB>count', got {line!r}")
                continue
            desc = by_count.get(fields[1])
            if desc is None:
                desc = by_count[fields[1]] = self.description_id(
                    f"{name}: on {int(fields[1])} blocklists")
            add(number, fields[0], score, desc)

    def read_drop(self, path: str, lines: list[str]) -> None:
        plain = self.description_id(_list_name(lines, ";") or Path(path).stem)
        score = self.default_score
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line[0] in ";#":
                continue
            token, _, comment = line.partition(";")
            comment = comment.strip()
            desc = self.description_id(comment) if comment else plain
            self.add(number, token.strip(), score, desc)

    def read_csv(self, path: str, lines: list[str]) -> None:
        header: dict[str, int] | None = None
        columns: tuple[int, int | None, int | None, int | None] = (0, None, None, None)
        plain = self.description_id(Path(path).stem)
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line[0] == "#":
                continue
            fields = [field.strip() for field in next(csv.reader([line]))]
            if header is None:
                header = {name.lower(): i for i, name in enumerate(fields)}
                address = _first_column(header, _CSV_ADDRESS)
                if address is None:
                    raise SignatureError(
                        f"{path}:{number}: CSV header names no address column "
                        f"(one of {', '.join(_CSV_ADDRESS)}): {line!r}")
                columns = (address, _first_column(header, _CSV_PORT),
                           _first_column(header, _CSV_DESCRIPTION),
                           _first_column(header, _CSV_SCORE))
                continue
            if len(fields) != len(header):
                self.bad(number, f"{len(fields)} fields, the header has {len(header)}")
                continue
            address, port_col, desc_col, score_col = columns
            port = -1
            if port_col is not None and fields[port_col]:
                text = fields[port_col]
                if not _COUNT.fullmatch(text) or int(text) > 65535:
                    self.bad(number, f"invalid port {text!r} (0..65535)")
                    continue
                port = int(text)
            score = self.default_score
            if score_col is not None and fields[score_col]:
                score = self.parse_score(number, fields[score_col])
                if score is None:
                    continue
            desc = plain
            if desc_col is not None and fields[desc_col]:
                desc = self.description_id(fields[desc_col])
            self.add(number, fields[address], score, desc, port, domains=True)


# The reader of each format (see _detect_format).
_FORMATS = {"ioc": _Loader.read_ioc, "firehol": _Loader.read_firehol,
            "ipsum": _Loader.read_ipsum, "drop": _Loader.read_drop, "csv": _Loader.read_csv}


def _first_column(header: dict[str, int], names: tuple[str, ...]) -> int | None:
    for name in names:
        if name in header:
            return header[name]
    return None


def _read_lines(path: str) -> list[str]:
    """The lines of a text file; a missing, unreadable or binary file is a SignatureError."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SignatureError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if b"\0" in data:
        line = data.count(b"\n", 0, data.index(b"\0")) + 1
        raise SignatureError(f"{path}:{line}: binary file (NUL byte), not a signature list")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SignatureError(f"{path}:{line}: not UTF-8 text (binary file?)") from None
    return text.split("\n")


def _list_name(lines: list[str], comment: str) -> str | None:
    """The first comment line with a letter or digit in the leading header block."""
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if line[0] != comment:
            return None
        text = line.lstrip(comment).strip()
        if any(ch.isalnum() for ch in text):
            return text
    return None


def _detect_format(path: str, lines: list[str]) -> str:
    suffix = Path(path).suffix.lower()
    first = first_data = ""
    header = []
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if not first:
            first = line
        if line[0] in "#;":
            if not first_data:
                header.append(line.lower())
            continue
        first_data = line
        break
    if suffix == ".csv" or ("," in first_data and _is_csv_header(first_data)):
        return "csv"
    if first.startswith(";") or _DROP_ENTRY.fullmatch(first_data):
        return "drop"
    if _IPSUM_ENTRY.fullmatch(first_data):
        return "ipsum"
    if suffix in (".netset", ".ipset") or any("firehol" in line for line in header):
        return "firehol"
    return "ioc"


def _is_csv_header(line: str) -> bool:
    names = {field.strip().lower() for field in next(csv.reader([line]))}
    return any(name in names for name in _CSV_ADDRESS)


class SignatureSet:
    """Address signatures (indexable, in load order) plus the domains kept aside.

    ``v4_ranges()`` / ``v6_ranges()`` give the matcher its columns; each row carries the
    index of its signature in this set.
    """

    def __init__(self) -> None:
        self.domains: list[Signature] = []
        self.warnings: list[str] = []
        self.files: list[SignatureFile] = []
        self._descriptions: list[str] = []
        self._sources: list[str] = []
        empty64 = np.zeros(0, np.uint64)
        self._family = np.zeros(0, np.uint8)
        self._pos = np.zeros(0, np.int32)  # row in the v4 or v6 columns
        self._prefix = np.zeros(0, np.int16)  # -1 for a range
        self._score = np.zeros(0, np.int8)
        self._desc = np.zeros(0, np.int32)
        self._source = np.zeros(0, np.int32)
        self._line = np.zeros(0, np.int32)
        self._port = np.zeros(0, np.int32)  # -1 for none
        self._kind = np.zeros(0, np.uint8)
        self._v4 = (np.zeros(0, np.uint32), np.zeros(0, np.uint32), np.zeros(0, np.int32))
        self._v6 = (empty64, empty64, empty64, empty64, np.zeros(0, np.int32))

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def load(cls, paths: str | Path | Iterable[str | Path], strict: bool = True,
             kind: str = "c2", score: int | None = None, keep_special_ranges: bool = False) -> SignatureSet:
        """Read signature files of any supported format.

        ``score`` is the score of entries that carry none (default 100, -100 for
        ``kind="allowlist"``). strict: a bad line raises SignatureError ("file:line:
        reason"); otherwise it is skipped and listed in ``warnings``. C2 entries that
        cover a whole range of local use are left out with a warning per file (see the
        module docstring) unless ``keep_special_ranges``.
        """
        if isinstance(paths, (str, Path)):
            paths = [paths]
        loader = _Loader(strict, _check_kind(kind), _default_score(kind, score), keep_special_ranges)
        for path in paths:
            loader.load_file(str(path))
        return cls._from_loader(loader)

    @classmethod
    def from_networks(cls, networks: Iterable[str], description: str = "", kind: str = "c2",
                      score: int | None = None, source: str = "<config>") -> SignatureSet:
        """Signatures from CIDRs/addresses/ranges given in configuration (always strict).

        Each signature's source is ``"<source>:<n>"`` (n counts from 1). ``score`` None
        means 100, or -100 for ``kind="allowlist"``.
        """
        loader = _Loader(True, _check_kind(kind), _default_score(kind, score))
        loader.begin(source)
        desc = loader.description_id(description)
        for number, network in enumerate(networks, 1):
            loader.add(number, str(network).strip(), loader.default_score, desc)
        loader.summaries.append(SignatureFile(source, "config", len(loader.family), 0, 0))
        return cls._from_loader(loader)

    @classmethod
    def _from_loader(cls, loader: _Loader) -> SignatureSet:
        sigs = cls()
        sigs.domains = loader.domains
        sigs.warnings = loader.warnings
        sigs.files = loader.summaries
        sigs._descriptions = loader.description_texts
        sigs._sources = loader.files
        family = np.array(loader.family, np.uint8)
        is_v4 = family == 4
        v4_index = np.flatnonzero(is_v4).astype(np.int32)
        v6_index = np.flatnonzero(~is_v4).astype(np.int32)
        pos = np.empty(len(family), np.int32)
        pos[v4_index] = np.arange(len(v4_index), dtype=np.int32)
        pos[v6_index] = np.arange(len(v6_index), dtype=np.int32)
        sigs._family, sigs._pos = family, pos
        sigs._prefix = np.array(loader.prefix, np.int16)
        sigs._score = np.array(loader.score, np.int8)
        sigs._desc = np.array(loader.desc, np.int32)
        sigs._source = np.array(loader.file, np.int32)
        sigs._line = np.array(loader.line, np.int32)
        sigs._port = np.array(loader.port, np.int32)
        sigs._kind = np.full(len(family), loader.kind, np.uint8)
        sigs._v4 = (np.array(loader.v4[0], np.uint32), np.array(loader.v4[1], np.uint32),
                    v4_index)
        v6_start, v6_end = loader.v6
        sigs._v6 = (np.array([v >> 64 for v in v6_start], np.uint64),
                    np.array([v & _MASK64 for v in v6_start], np.uint64),
                    np.array([v >> 64 for v in v6_end], np.uint64),
                    np.array([v & _MASK64 for v in v6_end], np.uint64), v6_index)
        sigs._freeze()
        return sigs

    def _freeze(self) -> None:
        # The matcher keeps these arrays: nobody may change them behind its back.
        for column in (*self._v4, *self._v6):
            column.flags.writeable = False

    # -- access -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._family)

    @overload
    def __getitem__(self, index: int) -> Signature: ...

    @overload
    def __getitem__(self, index: slice) -> list[Signature]: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self._family)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"signature index {index} out of range 0..{n - 1}")
        port = int(self._port[index])
        return Signature(
            network=self.network(index),
            score=int(self._score[index]),
            description=self._descriptions[self._desc[index]],
            source=f"{self._sources[self._source[index]]}:{self._line[index]}",
            port=None if port < 0 else port,
            kind=KINDS[self._kind[index]],
        )

    def __iter__(self) -> Iterator[Signature]:
        # Column-wise (Python lists, no numpy scalar per field): ~5x faster than self[i].
        sources, descriptions = self._sources, self._descriptions
        rows = zip(self.networks(), self._score.tolist(), self._desc.tolist(),
                   self._source.tolist(), self._line.tolist(), self._port.tolist(),
                   self._kind.tolist())
        for network, score, desc, source, line, port, kind in rows:
            yield Signature(network, score, descriptions[desc], f"{sources[source]}:{line}",
                            None if port < 0 else port, KINDS[kind])

    def __repr__(self) -> str:
        return (f"<SignatureSet {len(self)} signatures ({len(self._v4[0])} IPv4, "
                f"{len(self._v6[0])} IPv6), {len(self.domains)} domains>")

    def network(self, index: int) -> str:
        """The normalised network text of signature ``index`` (cheaper than ``self[index]``)."""
        pos, prefix = self._pos[index], int(self._prefix[index])
        if self._family[index] == 4:
            return _network_text(_v4_text, int(self._v4[0][pos]), int(self._v4[1][pos]), prefix)
        hi, lo, end_hi, end_lo, _ = self._v6
        return _network_text(_v6_text, int(hi[pos]) << 64 | int(lo[pos]),
                             int(end_hi[pos]) << 64 | int(end_lo[pos]), prefix)

    def networks(self) -> list[str]:
        """The normalised network text of every signature, in index order."""
        texts = [""] * len(self)
        prefix = self._prefix.tolist()
        for start, end, index in zip(*(column.tolist() for column in self._v4)):
            texts[index] = _network_text(_v4_text, start, end, prefix[index])
        for s_hi, s_lo, e_hi, e_lo, index in zip(*(column.tolist() for column in self._v6)):
            texts[index] = _network_text(_v6_text, s_hi << 64 | s_lo, e_hi << 64 | e_lo,
                                         prefix[index])
        return texts

    def bounds(self, index: int) -> tuple[int, int, int, bool]:
        """(IP version, first address, last address as ints, whether it is a range "a-b")."""
        pos, is_range = int(self._pos[index]), bool(self._prefix[index] < 0)
        if self._family[index] == 4:
            return 4, int(self._v4[0][pos]), int(self._v4[1][pos]), is_range
        hi, lo, end_hi, end_lo, _ = self._v6
        return 6, int(hi[pos]) << 64 | int(lo[pos]), int(end_hi[pos]) << 64 | int(end_lo[pos]), is_range

    def rule_columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(kind uint8 index into KINDS, score int8, port int32 -1 for none), index order."""
        return self._kind, self._score, self._port

    def v4_ranges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(start uint32, end uint32 inclusive, signature index int32), in index order."""
        return self._v4

    def v6_ranges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(start_hi, start_lo, end_hi, end_lo uint64 inclusive, index int32), index order."""
        return self._v6

    # -- combination ------------------------------------------------------------------------
    def __add__(self, other: SignatureSet) -> SignatureSet:
        if not isinstance(other, SignatureSet):
            return NotImplemented
        shift = len(self)
        both = SignatureSet()
        both.domains = self.domains + other.domains
        both.warnings = self.warnings + other.warnings
        both.files = self.files + other.files
        both._descriptions = self._descriptions + other._descriptions
        both._sources = self._sources + other._sources
        v4_shift, v6_shift = len(self._v4[0]), len(self._v6[0])
        right_pos = other._pos + np.where(other._family == 4, v4_shift, v6_shift).astype(np.int32)
        both._family = np.concatenate([self._family, other._family])
        both._pos = np.concatenate([self._pos, right_pos])
        both._prefix = np.concatenate([self._prefix, other._prefix])
        both._score = np.concatenate([self._score, other._score])
        both._desc = np.concatenate([self._desc, other._desc + len(self._descriptions)])
        both._source = np.concatenate([self._source, other._source + len(self._sources)])
        both._line = np.concatenate([self._line, other._line])
        both._port = np.concatenate([self._port, other._port])
        both._kind = np.concatenate([self._kind, other._kind])
        both._v4 = (*(np.concatenate([a, b]) for a, b in zip(self._v4[:2], other._v4[:2])),
                    np.concatenate([self._v4[2], other._v4[2] + shift]).astype(np.int32))
        both._v6 = (*(np.concatenate([a, b]) for a, b in zip(self._v6[:4], other._v6[:4])),
                    np.concatenate([self._v6[4], other._v6[4] + shift]).astype(np.int32))
        both._freeze()
        return both


def _network_text(text, start: int, end: int, prefix: int) -> str:
    """The text of a CIDR (prefix >= 0) or of a range "a-b" (prefix -1)."""
    if prefix < 0:
        return f"{text(start)}-{text(end)}"
    return f"{text(start)}/{prefix}"


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"signature kind must be one of {', '.join(KINDS)}, not {kind!r}")
    return kind


def _default_score(kind: str, score: int | None) -> int:
    if score is None:
        return -100 if kind == "allowlist" else 100
    if isinstance(score, bool) or not isinstance(score, int) or not -100 <= score <= 100:
        raise ValueError(f"signature score must be an integer -100..100, not {score!r}")
    return score
