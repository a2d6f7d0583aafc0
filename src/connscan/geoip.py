"""GeoTable: a MaxMind DB compiled into country range partitions, cached on disk.

The search tree is walked once (connscan._mmdb_c, or its twin _mmdb_py); each distinct data
record is decoded once with maxminddb's own decoder. The result is a partition of the IPv4
and of the IPv6 address space into sorted intervals, each with a country index (0 = unknown),
that answers exactly what ``maxminddb.open_database(db).get(addr)`` answers.
"""
from __future__ import annotations

import hashlib
import importlib.resources
import ipaddress
import os
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
from maxminddb.decoder import Decoder

from connscan import _native
from connscan.errors import CacheError, GeoIPError
from connscan.tables import FORMAT_VERSION, read_tables, write_tables

_METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"
_METADATA_WINDOW = 128 * 1024  # the marker is within the last 128 KiB (MaxMind DB spec)
_SEPARATOR = 16  # zero bytes between the search tree and the data section
# Bump when the compiled partitions change meaning; part of the cache key with FORMAT_VERSION.
TABLE_VERSION = 1
CACHE_KIND = "geoip"
_MAX_COUNTRIES = 1 << 16  # country indices are uint16
_U64 = (1 << 64) - 1


def default_cache_dir() -> Path:
    """$CONNSCAN_CACHE_DIR, else $XDG_CACHE_HOME/connscan, else ~/.cache/connscan."""
    if os.environ.get("CONNSCAN_CACHE_DIR"):
        return Path(os.environ["CONNSCAN_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "connscan"
    return Path.home() / ".cache" / "connscan"


def country_of_record(record) -> str:
    """The ISO country code of a MaxMind DB data record, "" when it has none.

    GeoIP2/GeoLite2 Country and City: ``country.iso_code``, else
    ``registered_country.iso_code``; DB-IP / ip-location-db: ``country_code``.
    """
    if not isinstance(record, dict):
        return ""
    for key in ("country", "registered_country"):
        section = record.get(key)
        if isinstance(section, dict):
            code = section.get("iso_code")
            if isinstance(code, str) and code:
                return code
    code = record.get("country_code")
    return code if isinstance(code, str) else ""


class GeoTable:
    """Country partitions of the IPv4 and IPv6 address spaces (see docs/ARCHITECTURE.md).

    ``countries[0]`` is "" (unknown); interval i of IPv4 is
    ``[v4_starts[i], v4_starts[i + 1] - 1]`` with country ``countries[v4_country[i]]``;
    IPv6 likewise with 128-bit starts split into ``v6_hi``/``v6_lo``.
    """

    def __init__(self, countries, v4_starts, v4_country, v6_hi, v6_lo, v6_country,
                 source: str = "", sha256: str = ""):
        self.countries = list(countries)
        self.v4_starts = np.asarray(v4_starts, dtype=np.uint32)
        self.v4_country = np.asarray(v4_country, dtype=np.uint16)
        self.v6_hi = np.asarray(v6_hi, dtype=np.uint64)
        self.v6_lo = np.asarray(v6_lo, dtype=np.uint64)
        self.v6_country = np.asarray(v6_country, dtype=np.uint16)
        self.source = source
        self.sha256 = sha256
        self._check()

    def _check(self) -> None:
        """Refuse tables that would make a lookup read out of bounds or answer wrongly."""
        if not self.countries or self.countries[0] != "" or len(self.countries) > _MAX_COUNTRIES:
            raise ValueError("countries must start with '' (unknown) and hold at most 65536")
        if not all(_is_country_code(c) for c in self.countries[1:]):
            raise ValueError("country codes must be two ASCII letters or digits")
        n4, n6 = len(self.v4_starts), len(self.v6_hi)
        if self.v4_starts.ndim != 1 or n4 == 0 or len(self.v4_country) != n4:
            raise ValueError("v4_starts and v4_country must be 1-D, non-empty, of equal length")
        if len(self.v6_lo) != n6 or len(self.v6_country) != n6 or n6 == 0 or self.v6_hi.ndim != 1:
            raise ValueError("v6_hi, v6_lo and v6_country must be 1-D, non-empty, of equal length")
        if self.v4_starts[0] != 0 or self.v6_hi[0] != 0 or self.v6_lo[0] != 0:
            raise ValueError("the first interval must start at address 0")
        if np.any(self.v4_starts[1:] <= self.v4_starts[:-1]):
            raise ValueError("v4_starts must be strictly increasing")
        hi, lo = self.v6_hi, self.v6_lo
        if np.any((hi[1:] < hi[:-1]) | ((hi[1:] == hi[:-1]) & (lo[1:] <= lo[:-1]))):
            raise ValueError("IPv6 starts must be strictly increasing")
        for name in ("v4_country", "v6_country"):
            values = getattr(self, name)
            if values.size and int(values.max()) >= len(self.countries):
                raise ValueError(f"{name} holds an index beyond the country list")

    def __repr__(self) -> str:
        return (f"GeoTable({self.source!r}, {len(self.countries) - 1} countries, "
                f"{len(self.v4_starts)} IPv4 / {len(self.v6_hi)} IPv6 intervals)")

    # -- lookups (convenience; the engine has its own native lookups) --------------------

    def country(self, addr: str) -> str:
        """The country code of one address ("" when unknown); ``::ffff:a.b.c.d`` is IPv4."""
        ip = ipaddress.ip_address(addr.strip() if isinstance(addr, str) else addr)
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.version == 4:
            i = int(np.searchsorted(self.v4_starts, int(ip), side="right")) - 1
            return self.countries[int(self.v4_country[i])]
        value = int(ip)
        hi, lo = np.uint64(value >> 64), np.uint64(value & _U64)
        first = int(np.searchsorted(self.v6_hi, hi, side="left"))
        last = int(np.searchsorted(self.v6_hi, hi, side="right"))
        # Starts with the same high half are sorted by the low half.
        i = first + int(np.searchsorted(self.v6_lo[first:last], lo, side="right")) - 1
        return self.countries[int(self.v6_country[i])]

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def open(cls, path=None, cache_dir=None) -> GeoTable:
        """Compile (or load from the disk cache) a MaxMind DB; ``path`` None = embedded DB-IP.

        The cache lives in ``cache_dir`` (default: :func:`default_cache_dir`), keyed by the
        database's SHA-256 and the table format; a damaged cache is rebuilt with a warning,
        an unwritable cache directory gives a warning and an in-memory table.
        """
        if path is None:
            resource = importlib.resources.files("connscan") / "data" / "dbip-country.mmdb"
            with importlib.resources.as_file(resource) as embedded:
                return cls._open(Path(embedded), cache_dir)
        return cls._open(Path(path), cache_dir)

    @classmethod
    def _open(cls, path: Path, cache_dir) -> GeoTable:
        data = _read_database(path)
        sha256 = hashlib.sha256(data).hexdigest()
        cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        cache_path = cache_dir / f"geoip-{sha256}-f{FORMAT_VERSION}t{TABLE_VERSION}.cstab"
        if cache_path.exists():
            try:
                return cls._from_cache(cache_path, str(path), sha256)
            except CacheError as exc:
                warnings.warn(f"connscan: GeoIP cache rebuilt: {exc}", RuntimeWarning, stacklevel=3)
        table = cls._compile(data, str(path), sha256, _native.load("mmdb"))
        try:
            table._save(cache_path)
        except OSError as exc:
            warnings.warn(f"connscan: GeoIP cache not written ({cache_path}: "
                          f"{exc.strerror or exc}); using the table in memory",
                          RuntimeWarning, stacklevel=3)
        return table

    @classmethod
    def compile(cls, path, walker: ModuleType | None = None) -> GeoTable:
        """Compile a MaxMind DB without the cache; ``walker`` = _mmdb_c or _mmdb_py module."""
        path = Path(path)
        data = _read_database(path)
        return cls._compile(data, str(path), hashlib.sha256(data).hexdigest(),
                            walker or _native.load("mmdb"))

    @classmethod
    def _compile(cls, data: bytes, source: str, sha256: str, walker: ModuleType) -> GeoTable:
        meta = _read_metadata(data, source)
        node_count, record_size = meta["node_count"], meta["record_size"]
        tree_size = node_count * record_size // 4
        data_size = meta["data_end"] - tree_size - _SEPARATOR
        # A valid tree visits each node once, except MaxMind's aliases of the IPv4 subtree
        # (::ffff:0:0/96, 2001::/32, 2002::/16): allow four visits, never more.
        max_nodes = 4 * node_count + 128
        bits = 128 if meta["ip_version"] == 6 else 32
        try:
            walked = walker.walk(data, node_count, record_size, bits, data_size, max_nodes)
        except ValueError as exc:
            raise GeoIPError(f"{source}: corrupt MaxMind DB: {exc}") from exc
        if bits == 128:
            # IPv4 lookups in an IPv6 tree go through ::/96 (what the reader's ipv4_start
            # finds): the leaves starting below 2**32 are the IPv4 partition.
            hi, lo, record, _visited = walked
            in_first_half = int(np.searchsorted(hi, np.uint64(0), side="right"))
            below = int(np.searchsorted(lo[:in_first_half], np.uint64(1 << 32)))
            v4, v6 = (hi[:below], lo[:below], record[:below], 0), walked
        else:
            v4, v6 = walked, None  # an IPv4-only database locates no IPv6 address

        records = np.unique(np.concatenate([v4[2]] + ([v6[2]] if v6 else [])))
        codes = _decode_countries(data, records, node_count, tree_size, source)
        countries = [""] + sorted(set(codes.values()) - {""})
        if len(countries) > _MAX_COUNTRIES:
            raise GeoIPError(f"{source}: more than {_MAX_COUNTRIES - 1} distinct countries")
        position = {code: i for i, code in enumerate(countries)}
        record_country = np.array([position[codes[int(r)]] for r in records], dtype=np.uint16)

        def partition(walked):
            hi, lo, record, _visited = walked
            country = record_country[np.searchsorted(records, record)]
            keep = np.ones(len(country), dtype=bool)
            keep[1:] = country[1:] != country[:-1]  # merge adjacent equal intervals
            return hi[keep], lo[keep], country[keep]

        _hi, v4_lo, v4_country = partition(v4)
        if v6 is None:  # one unknown interval covering all of IPv6
            v6_hi, v6_lo, v6_country = [0], [0], [0]
        else:
            v6_hi, v6_lo, v6_country = partition(v6)
        return cls(countries, v4_lo.astype(np.uint32), v4_country, v6_hi, v6_lo, v6_country,
                   source=source, sha256=sha256)

    @classmethod
    def from_ranges(cls, v4=(), v6=(), source: str = "<ranges>") -> GeoTable:
        """A small table from ``[(network, country), ...]`` lists (tests, custom tables).

        A network is a CIDR ("127.0.0.0/8"), an address, or a range "first-last". Later
        entries win where entries overlap; everything not listed is unknown ("").
        """
        v4_spans = [(*_span(text, 4), code) for text, code in v4]
        v6_spans = [(*_span(text, 6), code) for text, code in v6]
        countries = [""] + sorted({code for *_, code in v4_spans + v6_spans} - {""})
        position = {code: i for i, code in enumerate(countries)}
        v4_starts, v4_country = _paint(v4_spans, position, 1 << 32)
        v6_starts, v6_country = _paint(v6_spans, position, 1 << 128)
        digest = hashlib.sha256(repr((sorted(v4), sorted(v6))).encode()).hexdigest()
        return cls(countries, v4_starts, v4_country,
                   [s >> 64 for s in v6_starts], [s & _U64 for s in v6_starts], v6_country,
                   source=source, sha256=digest)

    # -- disk cache ---------------------------------------------------------------------------

    def _save(self, path: Path) -> None:
        write_tables(path, CACHE_KIND,
                     {"countries": self.countries, "sha256": self.sha256, "source": self.source,
                      "table_version": TABLE_VERSION},
                     {"v4_starts": self.v4_starts, "v4_country": self.v4_country,
                      "v6_hi": self.v6_hi, "v6_lo": self.v6_lo, "v6_country": self.v6_country})

    @classmethod
    def _from_cache(cls, path: Path, source: str, sha256: str) -> GeoTable:
        tables = read_tables(path, CACHE_KIND)
        meta, arrays = tables.meta, tables.arrays
        if meta.get("sha256") != sha256 or meta.get("table_version") != TABLE_VERSION:
            raise CacheError(f"{path}: written for another database or table version")
        expected = {"v4_starts": np.uint32, "v4_country": np.uint16, "v6_hi": np.uint64,
                    "v6_lo": np.uint64, "v6_country": np.uint16}
        for name, dtype in expected.items():
            if name not in arrays or arrays[name].dtype != dtype:
                raise CacheError(f"{path}: section {name} missing or not {np.dtype(dtype)}")
        countries = meta.get("countries")
        if not isinstance(countries, list):
            raise CacheError(f"{path}: country list missing")
        try:
            return cls(countries, arrays["v4_starts"], arrays["v4_country"], arrays["v6_hi"],
                       arrays["v6_lo"], arrays["v6_country"], source=source, sha256=sha256)
        except ValueError as exc:
            raise CacheError(f"{path}: {exc}") from exc


def _read_database(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GeoIPError(f"{path}: cannot read GeoIP database: {exc.strerror or exc}") from exc
    if not data:
        raise GeoIPError(f"{path}: empty file, not a MaxMind DB")
    return data


# Keys the MaxMind DB format specification requires in the metadata map.
_REQUIRED_METADATA = ("node_count", "record_size", "ip_version", "database_type", "binary_format_major_version",
                      "binary_format_minor_version", "build_epoch")


def _read_metadata(data: bytes, source: str) -> dict:
    """The validated metadata of a MaxMind DB, plus ``data_end`` (where the marker starts)."""
    marker = data.rfind(_METADATA_MARKER, max(0, len(data) - _METADATA_WINDOW))
    if marker < 0:
        raise GeoIPError(f"{source}: not a MaxMind DB (no metadata marker)")
    start = marker + len(_METADATA_MARKER)
    try:
        meta, _ = Decoder(data, start).decode(start)
    except Exception as exc:  # noqa: BLE001 - any decoder failure means unreadable metadata
        raise GeoIPError(f"{source}: unreadable MaxMind DB metadata: {exc}") from exc
    if not isinstance(meta, dict):
        raise GeoIPError(f"{source}: MaxMind DB metadata is not a map")
    missing = [key for key in _REQUIRED_METADATA if key not in meta]
    if missing:
        raise GeoIPError(f"{source}: MaxMind DB metadata lacks {', '.join(missing)}")
    version = meta["binary_format_major_version"]
    if version != 2 or type(version) is not int:  # the only binary format there is (spec 2.0)
        raise GeoIPError(f"{source}: unsupported binary_format_major_version {version!r} in metadata")
    node_count, record_size, ip_version = (meta.get("node_count"), meta.get("record_size"),
                                           meta.get("ip_version"))
    if type(node_count) is not int or not 0 <= node_count < 1 << 32:
        raise GeoIPError(f"{source}: bad node_count {node_count!r} in metadata")
    if record_size not in (24, 28, 32) or type(record_size) is not int:
        raise GeoIPError(f"{source}: unsupported record_size {record_size!r}")
    if ip_version not in (4, 6) or type(ip_version) is not int:
        raise GeoIPError(f"{source}: unsupported ip_version {ip_version!r}")
    tree_size = node_count * record_size // 4
    if tree_size + _SEPARATOR > marker:
        raise GeoIPError(f"{source}: search tree of {node_count} nodes extends past the "
                         f"data section (file of {len(data)} bytes)")
    return {"node_count": node_count, "record_size": record_size, "ip_version": ip_version,
            "data_end": marker}


def _decode_countries(data: bytes, records: np.ndarray, node_count: int, tree_size: int,
                      source: str) -> dict[int, str]:
    """Country code of each distinct record value (node_count = empty = "")."""
    decoder = Decoder(data, tree_size + _SEPARATOR)
    codes = {}
    for value in records.tolist():
        if value == node_count:
            codes[value] = ""
            continue
        offset = value - node_count + tree_size  # the walker checked it is in the data section
        try:
            record, _ = decoder.decode(offset)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a corrupt record
            raise GeoIPError(f"{source}: corrupt data record at offset {offset}: {exc}") from exc
        code = country_of_record(record)
        if code and not _is_country_code(code):
            raise GeoIPError(f"{source}: data record at offset {offset}: country code {code!r} "
                             "is not a two-letter code")
        codes[value] = code
    return codes


def _is_country_code(code) -> bool:
    # Lookups return codes as 2-byte strings (numpy S2): longer codes would be cut silently.
    return isinstance(code, str) and len(code) == 2 and code.isascii() and code.isalnum()


def _span(text: str, version: int) -> tuple[int, int]:
    """(first, last) integer addresses of a CIDR, a single address or a "first-last" range."""
    text = text.strip()
    if "-" in text:
        first_text, last_text = (part.strip() for part in text.split("-", 1))
        first, last = ipaddress.ip_address(first_text), ipaddress.ip_address(last_text)
        if first.version != version or last.version != version or int(last) < int(first):
            raise ValueError(f"bad IPv{version} range {text!r}")
        return int(first), int(last)
    network = ipaddress.ip_network(text, strict=False)
    if network.version != version:
        raise ValueError(f"{text!r} is not an IPv{version} network")
    return int(network.network_address), int(network.broadcast_address)


def _paint(spans, position, size: int) -> tuple[list[int], list[int]]:
    """Interval starts and country indices of spans painted in order (later ones on top)."""
    bounds = {0}
    for first, last, _code in spans:
        bounds.add(first)
        if last + 1 < size:
            bounds.add(last + 1)
    starts, countries = [], []
    for start in sorted(bounds):
        code = next((c for first, last, c in reversed(spans) if first <= start <= last), "")
        if not countries or countries[-1] != position[code]:
            starts.append(start)
            countries.append(position[code])
    return starts, countries
