"""GeoTable and the MaxMind DB walker, checked against the official maxminddb reader."""
from __future__ import annotations

import base64
import bisect
import ipaddress
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import maxminddb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from maxminddb.decoder import Decoder

from support import impl_fixture
from connscan import _native
from connscan.errors import GeoIPError
from connscan.geoip import GeoTable, default_cache_dir
from connscan.tables import read_tables, write_tables

mmdb = impl_fixture("mmdb")

FIXTURES = Path(__file__).resolve().parent / "data" / "geoip"
COUNTRY_TEST_DB = FIXTURES / "GeoIP2-Country-Test.mmdb"
IPV4_TEST_DB = FIXTURES / "MaxMind-DB-test-ipv4-24.mmdb"
MARKER = b"\xab\xcd\xefMaxMind.com"

# The 25 corrupt databases of the MaxMind DB test suite (paths under maxmind-test-data/).
CORRUPT_DBS = [
    "test-data/GeoIP2-City-Test-Broken-Double-Format.mmdb",
    "test-data/GeoIP2-City-Test-Invalid-Node-Count.mmdb",
    "test-data/MaxMind-DB-test-broken-pointers-24.mmdb",
    "test-data/MaxMind-DB-test-broken-search-tree-24.mmdb",
] + [f"bad-data/libmaxminddb/libmaxminddb-{name}.mmdb" for name in (
    "corrupt-search-tree", "deep-array-nesting", "deep-nesting", "empty-array-last-in-metadata",
    "empty-map-last-in-metadata", "metadata-marker-only", "offset-integer-overflow",
    "oversized-array", "oversized-map", "separator-record-max-left", "separator-record-min-left",
    "separator-record-min-right", "uint64-max-epoch")] + [
    f"bad-data/maxminddb-golang/{name}.mmdb" for name in (
        "cyclic-data-structure", "invalid-bytes-length", "invalid-data-record-offset",
        "invalid-map-key-length", "invalid-string-length", "metadata-is-an-uint128",
        "unexpected-bytes")] + [
    "bad-data/maxminddb-python/bad-unicode-in-map-key.mmdb"]

# Every valid test database that has an expected dump (the *broken* one is in CORRUPT_DBS).
VALID_DBS = [
    "GeoIP-Anonymous-Plus-Test", "GeoIP-Residential-Proxy-Test", "GeoIP2-Anonymous-IP-Test",
    "GeoIP2-City-Shield-Test", "GeoIP2-City-Test", "GeoIP2-Connection-Type-Test",
    "GeoIP2-Country-Shield-Test", "GeoIP2-Country-Test", "GeoIP2-DensityIncome-Test",
    "GeoIP2-Domain-Test", "GeoIP2-Enterprise-Shield-Test", "GeoIP2-Enterprise-Test",
    "GeoIP2-IP-Risk-Test", "GeoIP2-ISP-Test", "GeoIP2-Precision-Enterprise-Shield-Test",
    "GeoIP2-Precision-Enterprise-Test", "GeoIP2-Static-IP-Score-Test", "GeoIP2-User-Count-Test",
    "GeoLite2-ASN-Test", "GeoLite2-City-Test", "GeoLite2-Country-Test",
    "MaxMind-DB-no-ipv4-search-tree", "MaxMind-DB-string-value-entries",
    "MaxMind-DB-test-decoder", "MaxMind-DB-test-ipv4-24", "MaxMind-DB-test-ipv4-28",
    "MaxMind-DB-test-ipv4-32", "MaxMind-DB-test-ipv6-24", "MaxMind-DB-test-ipv6-28",
    "MaxMind-DB-test-ipv6-32", "MaxMind-DB-test-metadata-pointers", "MaxMind-DB-test-mixed-24",
    "MaxMind-DB-test-mixed-28", "MaxMind-DB-test-mixed-32", "MaxMind-DB-test-nested",
    "MaxMind-DB-test-pointer-decoder",
]
COUNTRY_DBS = {"GeoIP2-City-Shield-Test", "GeoIP2-City-Test", "GeoIP2-Country-Shield-Test",
               "GeoIP2-Country-Test", "GeoIP2-Enterprise-Shield-Test", "GeoIP2-Enterprise-Test",
               "GeoIP2-Precision-Enterprise-Shield-Test", "GeoIP2-Precision-Enterprise-Test",
               "GeoLite2-City-Test", "GeoLite2-Country-Test"}


def expected_country(record) -> str:
    """The country a record says, written independently of connscan.geoip."""
    if not isinstance(record, dict):
        return ""
    for key in ("country", "registered_country"):
        code = (record.get(key) or {}).get("iso_code") if isinstance(record.get(key), dict) else None
        if isinstance(code, str) and code:
            return code
    code = record.get("country_code")
    return code if isinstance(code, str) else ""


def reader_country(reader, addr: str) -> str:
    try:
        return expected_country(reader.get(addr))
    except ValueError:
        # maxminddb refuses IPv6 lookups in an IPv4-only database: not located.
        if reader.metadata().ip_version == 4 and ":" in addr:
            return ""
        raise


def as_dumped(value):
    """A decoded record in the expected dumps' JSON form (bytes as base64 objects)."""
    if isinstance(value, bytes):
        return {"__bytes_b64__": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {k: as_dumped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_dumped(v) for v in value]
    return value


def network_ends(network: str):
    net = ipaddress.ip_network(network)
    return str(net.network_address), str(net.broadcast_address)


def random_addresses(rng: random.Random, count: int) -> list[str]:
    """Half IPv4, half IPv6 (some in the first /32s where the test databases keep data)."""
    out = []
    for i in range(count):
        if i % 2:
            out.append(str(ipaddress.IPv4Address(rng.getrandbits(32))))
        else:
            value = rng.getrandbits(128) >> rng.choice((0, 0, 16, 96, 100))
            address = ipaddress.IPv6Address(value)
            if address.ipv4_mapped is None:
                out.append(str(address))
    return out


_compiled: dict[tuple[str, str], GeoTable] = {}


def compiled(path: Path, walker) -> GeoTable:
    """Compile once per (database, walker) for the whole run."""
    key = (str(path), walker.__name__)
    if key not in _compiled:
        _compiled[key] = GeoTable.compile(path, walker=walker)
    return _compiled[key]


# -- the MaxMind DB test suite ----------------------------------------------------------------

@pytest.mark.parametrize("name", VALID_DBS)
def test_expected_dump_countries(shared_data, mmdb, name):
    maxmind = shared_data / "geoip" / "maxmind-test-data"
    table = compiled(maxmind / "test-data" / f"{name}.mmdb", mmdb)
    lines = (maxmind / "expected-dumps" / f"{name}.jsonl").read_text().splitlines()
    located = 0
    for line in lines:
        entry = json.loads(line)
        want = expected_country(entry["record"])
        located += want != ""
        for addr in network_ends(entry["network"]):
            assert table.country(addr) == want, (name, entry["network"], addr)
    assert lines
    assert (located > 0) == (name in COUNTRY_DBS)


@pytest.mark.parametrize("name", VALID_DBS)
def test_walker_leaves_hold_the_dumped_records(shared_data, mmdb, name):
    # Record level, so that the databases without countries test the walk too.
    maxmind = shared_data / "geoip" / "maxmind-test-data"
    path = maxmind / "test-data" / f"{name}.mmdb"
    data = path.read_bytes()
    meta = maxminddb.open_database(str(path), maxminddb.MODE_FILE).metadata()
    tree_size = meta.node_count * meta.record_size // 4
    data_size = data.rfind(MARKER) - tree_size - 16
    decoder = Decoder(data, tree_size + 16)
    bits = 128 if meta.ip_version == 6 else 32
    hi, lo, record, _visited = mmdb.walk(data, meta.node_count, meta.record_size, bits,
                                         data_size, 10**6)
    starts = [h << 64 | low for h, low in zip(hi.tolist(), lo.tolist())]
    records = record.tolist()
    for line in (maxmind / "expected-dumps" / f"{name}.jsonl").read_text().splitlines():
        entry = json.loads(line)
        for addr in network_ends(entry["network"]):
            # An IPv4 address a.b.c.d sits at ::a.b.c.d in an IPv6 tree: the same integer.
            leaf = bisect.bisect_right(starts, int(ipaddress.ip_address(addr))) - 1
            got = decoder.decode(records[leaf] - meta.node_count + tree_size)[0]
            assert as_dumped(got) == entry["record"], (name, addr)


@pytest.mark.parametrize("name", ["GeoIP2-City-Test", "GeoIP2-Country-Test", "GeoLite2-City-Test",
                                  "GeoIP2-Enterprise-Test"])
def test_alias_subtrees_match_reader(shared_data, mmdb, name):
    # MaxMind aliases 2001::/32 (Teredo) and 2002::/16 (6to4) to the IPv4 tree.
    path = shared_data / "geoip" / "maxmind-test-data" / "test-data" / f"{name}.mmdb"
    table = compiled(path, mmdb)
    reader = maxminddb.open_database(str(path), maxminddb.MODE_FILE)
    located = 0
    for start in table.v4_starts.tolist():
        for v4 in (start, max(start - 1, 0)):
            for alias in ((0x2002 << 112) | (v4 << 80), (0x20010000 << 96) | (v4 << 64)):
                addr = str(ipaddress.IPv6Address(alias))
                want = reader_country(reader, addr)
                located += want != ""
                assert table.country(addr) == want, addr
    assert located > 0


@pytest.mark.parametrize("name", ["GeoIP2-City-Test", "GeoIP2-Country-Test", "GeoLite2-City-Test",
                                  "GeoIP2-Enterprise-Test", "MaxMind-DB-test-ipv4-28"])
def test_random_addresses_match_reader(shared_data, mmdb, name):
    path = shared_data / "geoip" / "maxmind-test-data" / "test-data" / f"{name}.mmdb"
    table = compiled(path, mmdb)
    rng = random.Random(name)
    probes = random_addresses(rng, 3000)
    # Interval edges are where a wrong walk shows first.
    probes += [str(ipaddress.IPv4Address(int(s))) for s in table.v4_starts]
    probes += [str(ipaddress.IPv4Address(int(s) - 1)) for s in table.v4_starts[1:]]
    for mode in (maxminddb.MODE_FILE, maxminddb.MODE_MMAP_EXT):
        reader = maxminddb.open_database(str(path), mode)
        for addr in probes:
            assert table.country(addr) == reader_country(reader, addr), (mode, addr)


def test_walkers_agree_on_every_test_database(shared_data):
    if len(_native.implementations("mmdb")) < 2:
        pytest.skip("needs both walkers")
    maxmind = shared_data / "geoip" / "maxmind-test-data"
    paths = [maxmind / "test-data" / f"{n}.mmdb" for n in VALID_DBS] + [maxmind / p for p in CORRUPT_DBS]
    for path in paths:
        compile_both(path)


@pytest.mark.parametrize("relative", CORRUPT_DBS)
def test_corrupt_database_is_refused_or_answers_like_reader(shared_data, mmdb, relative):
    path = shared_data / "geoip" / "maxmind-test-data" / relative
    try:
        table = GeoTable.compile(path, walker=mmdb)
    except GeoIPError as exc:
        assert str(path) in str(exc)
        return
    reader = maxminddb.open_database(str(path), maxminddb.MODE_FILE)
    probes = random_addresses(random.Random(relative), 400)
    probes += [str(ipaddress.IPv4Address(int(s))) for s in table.v4_starts]
    for addr in probes:
        assert table.country(addr) == reader_country(reader, addr), addr


def test_native_walker_survives_every_corrupt_database(shared_data):
    # A crash in the native walker would kill pytest: run it in a child process.
    pytest.importorskip("connscan._mmdb_c")
    maxmind = shared_data / "geoip" / "maxmind-test-data"
    script = (
        "import sys\n"
        "from connscan import _mmdb_c\n"
        "from connscan.geoip import GeoTable\n"
        "from connscan.errors import GeoIPError\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        GeoTable.compile(path, walker=_mmdb_c)\n"
        "        print('ok', path)\n"
        "    except GeoIPError:\n"
        "        print('refused', path)\n"
    )
    paths = [str(maxmind / p) for p in CORRUPT_DBS]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    outcomes = done.stdout.splitlines()
    assert len(outcomes) == len(CORRUPT_DBS)
    assert sum(line.startswith("refused") for line in outcomes) >= 20


def test_missing_and_non_mmdb_files(tmp_path):
    with pytest.raises(GeoIPError, match="nope.mmdb"):
        GeoTable.compile(tmp_path / "nope.mmdb")
    empty = tmp_path / "empty.mmdb"
    empty.write_bytes(b"")
    with pytest.raises(GeoIPError, match="empty.mmdb: empty file"):
        GeoTable.compile(empty)
    text = tmp_path / "text.mmdb"
    text.write_text("not a database\n" * 100)
    with pytest.raises(GeoIPError, match="text.mmdb: not a MaxMind DB"):
        GeoTable.compile(text)


def test_truncated_database_is_refused(tmp_path, mmdb):
    data = COUNTRY_TEST_DB.read_bytes()
    cut = tmp_path / "cut.mmdb"
    for length in list(range(0, len(data), 97)) + [len(data) - 1]:
        cut.write_bytes(data[:length])
        with pytest.raises(GeoIPError, match="cut.mmdb"):
            GeoTable.compile(cut, walker=mmdb)


# -- DB-IP: the embedded default ---------------------------------------------------------------

def dbip_path() -> Path:
    return Path(__file__).resolve().parents[1] / "src" / "connscan" / "data" / "dbip-country.mmdb"


@pytest.fixture
def dbip_c():
    required = os.environ.get("CONNSCAN_REQUIRE_EXTENSION", "") not in ("", "0")
    if "c" not in _native.implementations("mmdb") and not required:
        pytest.skip("connscan._mmdb_c not built")
    return compiled(dbip_path(), _native.load("mmdb", impl="c"))


def test_dbip_golden_lookups(shared_data, dbip_c):
    golden = shared_data / "geoip" / "dbip-country-lite" / "golden-lookups-dbip-2026-06.tsv"
    rows = golden.read_text().splitlines()[1:]
    assert len(rows) == 8000
    for row in rows:
        addr, _prefix, country = row.split("\t")
        assert dbip_c.country(addr) == country, row


def test_dbip_random_and_edges_match_reader(dbip_c):
    reader = maxminddb.open_database(str(dbip_path()), maxminddb.MODE_MMAP_EXT)
    rng = random.Random(2026)
    probes = random_addresses(rng, 4000)
    for i in rng.sample(range(1, len(dbip_c.v4_starts)), 1500):
        start = int(dbip_c.v4_starts[i])
        probes += [str(ipaddress.IPv4Address(start)), str(ipaddress.IPv4Address(start - 1))]
    for i in rng.sample(range(1, len(dbip_c.v6_hi)), 1500):
        start = int(dbip_c.v6_hi[i]) << 64 | int(dbip_c.v6_lo[i])
        for value in (start, start - 1):
            address = ipaddress.IPv6Address(value)
            if address.ipv4_mapped is None:
                probes.append(str(address))
    for addr in probes:
        assert dbip_c.country(addr) == reader_country(reader, addr), addr


def test_dbip_tables_have_the_documented_shape(dbip_c):
    assert dbip_c.countries[0] == ""
    assert len(dbip_c.countries) > 200
    assert all(len(code) == 2 for code in dbip_c.countries[1:])
    assert dbip_c.v4_starts.dtype == np.uint32 and dbip_c.v4_country.dtype == np.uint16
    assert dbip_c.v6_hi.dtype == np.uint64 and dbip_c.v6_country.dtype == np.uint16
    # Merged: no two neighbouring intervals share a country.
    assert np.all(dbip_c.v4_country[1:] != dbip_c.v4_country[:-1])
    assert np.all(dbip_c.v6_country[1:] != dbip_c.v6_country[:-1])


@pytest.mark.slow
def test_dbip_python_walker_equals_native(dbip_c):
    from connscan import _mmdb_py
    slow = compiled(dbip_path(), _mmdb_py)
    assert slow.countries == dbip_c.countries
    for name in ("v4_starts", "v4_country", "v6_hi", "v6_lo", "v6_country"):
        assert np.array_equal(getattr(slow, name), getattr(dbip_c, name)), name


def test_open_default_is_embedded_dbip(tmp_path):
    table = GeoTable.open(cache_dir=tmp_path)
    assert table.source.endswith("dbip-country.mmdb")
    reader = maxminddb.open_database(str(dbip_path()), maxminddb.MODE_MMAP_EXT)
    for addr in ("8.8.8.8", "1.1.1.1", "2a00:1450:4001:80b::200e", "127.0.0.1", "::1"):
        assert table.country(addr) == reader_country(reader, addr)


# -- synthetic databases: random (often corrupt) trees, c vs py vs the reader -----------------

def _control(type_number: int, size: int) -> bytes:
    assert size < 29
    if type_number < 8:
        return bytes([type_number << 5 | size])
    return bytes([size, type_number - 7])


def _encode(value) -> bytes:
    """Just enough of the MaxMind DB data format for small records and the metadata."""
    if isinstance(value, str):
        return _control(2, len(value.encode())) + value.encode()
    if isinstance(value, dict):
        return _control(7, len(value)) + b"".join(_encode(k) + _encode(v) for k, v in value.items())
    if isinstance(value, list):
        return _control(11, len(value)) + b"".join(_encode(v) for v in value)
    payload = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return _control(6, len(payload)) + payload


def _node(left: int, right: int, record_size: int) -> bytes:
    if record_size == 24:
        return left.to_bytes(3, "big") + right.to_bytes(3, "big")
    if record_size == 28:
        middle = (left >> 24) << 4 | (right >> 24)
        return ((left & 0xFFFFFF).to_bytes(3, "big") + bytes([middle])
                + (right & 0xFFFFFF).to_bytes(3, "big"))
    return left.to_bytes(4, "big") + right.to_bytes(4, "big")


def write_mmdb(path: Path, nodes, records, record_size: int, ip_version: int, **metadata_changes) -> None:
    data = b""
    for record in records:
        data += _encode(record)
    tree = b"".join(_node(left, right, record_size) for left, right in nodes)
    metadata = {"node_count": len(nodes), "record_size": record_size, "ip_version": ip_version,
                "database_type": "connscan-test", "languages": ["en"],
                "binary_format_major_version": 2, "binary_format_minor_version": 0,
                "build_epoch": 1, "description": {"en": "random"}} | metadata_changes
    metadata = {key: value for key, value in metadata.items() if value is not None}
    path.write_bytes(tree + bytes(16) + data + MARKER + _encode(metadata))


@st.composite
def random_trees(draw):
    n = draw(st.integers(1, 10))
    codes = draw(st.lists(st.sampled_from(["", "DE", "FR", "US", "CN"]), min_size=1, max_size=4))
    records = [{"country_code": c} if c else {"city": "x"} for c in codes]
    offsets, position = [], 0
    for record in records:
        offsets.append(position)
        position += len(_encode(record))

    def value(node: int):
        # Mostly forward pointers (valid, acyclic), sometimes back edges and bad pointers.
        choices = [st.integers(node + 1, n - 1)] if node + 1 < n else []
        choices += [st.just(n), st.sampled_from([n + 16 + o for o in offsets])]
        bad = [st.integers(0, n - 1), st.integers(n + 1, n + 15), st.integers(n + 16 + position, n + 200)]
        return draw(st.one_of(*choices) if draw(st.integers(0, 9)) else st.one_of(*bad))

    nodes = [(value(i), value(i)) for i in range(n)]
    return nodes, records, draw(st.sampled_from([24, 28, 32])), draw(st.sampled_from([4, 6]))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=random_trees(), seed=st.integers(0, 2**32))
def test_random_trees_walkers_and_reader_agree(tmp_path_factory, tree, seed):
    nodes, records, record_size, ip_version = tree
    path = tmp_path_factory.mktemp("mmdb") / "random.mmdb"
    write_mmdb(path, nodes, records, record_size, ip_version)
    table = compile_both(path)
    if isinstance(table, str):
        return
    reader = maxminddb.open_database(str(path), maxminddb.MODE_FILE)
    rng = random.Random(seed)
    probes = random_addresses(rng, 60)
    probes += [str(ipaddress.IPv4Address(int(s))) for s in table.v4_starts]
    probes += [str(ipaddress.IPv4Address(int(s) - 1)) for s in table.v4_starts[1:]]
    for hi, lo in zip(table.v6_hi.tolist(), table.v6_lo.tolist()):
        for value in (hi << 64 | lo, (hi << 64 | lo) - 1):
            if 0 <= value and ipaddress.IPv6Address(value).ipv4_mapped is None:
                probes.append(str(ipaddress.IPv6Address(value)))
    for addr in probes:
        assert table.country(addr) == reader_country(reader, addr), addr


def compile_both(path: Path):
    """The table (or GeoIPError text) from each available walker, checked to be identical."""
    outcomes = []
    for impl in _native.implementations("mmdb"):
        try:
            outcomes.append(GeoTable.compile(path, walker=_native.load("mmdb", impl=impl)))
        except GeoIPError as exc:
            outcomes.append(str(exc))
    first = outcomes[0]
    for other in outcomes[1:]:
        if isinstance(first, str):
            assert other == first
        else:
            assert not isinstance(other, str), other
            assert other.countries == first.countries
            for name in ("v4_starts", "v4_country", "v6_hi", "v6_lo", "v6_country"):
                assert np.array_equal(getattr(other, name), getattr(first, name)), name
    return first


@settings(max_examples=60, deadline=None)
@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
                      min_size=1, max_size=4))
def test_damaged_real_database_is_refused_or_answers_like_reader(tmp_path_factory, flips):
    # Byte flips anywhere in a real test database: the walkers agree, and a table they accept
    # answers like the official reader everywhere (which then never fails a lookup either).
    data = bytearray(COUNTRY_TEST_DB.read_bytes())
    for where, mask in flips:
        data[int(where * len(data))] ^= mask
    path = tmp_path_factory.mktemp("flip") / "flipped.mmdb"
    path.write_bytes(bytes(data))
    table = compile_both(path)
    if isinstance(table, str):
        assert str(path) in table
        return
    try:
        reader = maxminddb.open_database(str(path), maxminddb.MODE_FILE)
    except TypeError:
        # A flipped optional key ("languages"): the format allows keys a reader does not
        # know, but the official reader's Metadata(**keys) refuses them. No oracle here.
        return
    probes = [str(ipaddress.IPv4Address(int(s))) for s in table.v4_starts]
    probes += [str(ipaddress.IPv6Address(int(h) << 64 | int(lo)))
               for h, lo in zip(table.v6_hi, table.v6_lo)
               if ipaddress.IPv6Address(int(h) << 64 | int(lo)).ipv4_mapped is None]
    probes += random_addresses(random.Random(len(data)), 100)
    for addr in probes:
        assert table.country(addr) == reader_country(reader, addr), addr


@pytest.mark.parametrize("version", [None, 1, 3, "2"])
def test_binary_format_other_than_2_is_refused(tmp_path, mmdb, version):
    # As the official reader does (it cannot open such a file); None: the key is missing.
    path = tmp_path / "format.mmdb"
    write_mmdb(path, [(1 + 16, 1)], [{"country": {"iso_code": "DE"}}], 24, 4, binary_format_major_version=version)
    with pytest.raises(GeoIPError, match="format.mmdb.*binary_format_major_version"):
        GeoTable.compile(path, walker=mmdb)


def test_metadata_without_a_required_key_is_refused(tmp_path, mmdb):
    path = tmp_path / "epoch.mmdb"
    write_mmdb(path, [(1 + 16, 1)], [{"country": {"iso_code": "DE"}}], 24, 4, build_epoch=None)
    with pytest.raises(GeoIPError, match="epoch.mmdb: MaxMind DB metadata lacks build_epoch"):
        GeoTable.compile(path, walker=mmdb)


def test_country_code_that_does_not_fit_is_refused(tmp_path, mmdb):
    path = tmp_path / "long.mmdb"
    write_mmdb(path, [(1 + 16, 1)], [{"country": {"iso_code": "DEU"}}], 24, 4)  # left: data, right: empty
    with pytest.raises(GeoIPError, match="long.mmdb.*'DEU' is not a two-letter code"):
        GeoTable.compile(path, walker=mmdb)


def test_shared_subtrees_cannot_explode(tmp_path, mmdb):
    # Every node points twice at the next: 2**40 paths through 40 nodes.
    n = 40
    nodes = [(i + 1, i + 1) for i in range(n - 1)] + [(n + 16, n + 16)]
    path = tmp_path / "dag.mmdb"
    write_mmdb(path, nodes, [{"country_code": "DE"}], 24, 6)
    with pytest.raises(GeoIPError, match="dag.mmdb.*more than"):
        GeoTable.compile(path, walker=mmdb)


def test_cycle_is_refused(tmp_path, mmdb):
    path = tmp_path / "cycle.mmdb"
    write_mmdb(path, [(1, 2), (0, 2)], [{"country_code": "DE"}], 24, 4)
    with pytest.raises(GeoIPError, match="cycle.mmdb.*deeper than 32 bits"):
        GeoTable.compile(path, walker=mmdb)


# The mmdb fixture is a module, with no state to reset between examples.
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(record_size=st.sampled_from([24, 28, 32]), data=st.data())
def test_walker_decodes_large_record_values(mmdb, record_size, data):
    # One node whose two records are data pointers anywhere in the record range: checks
    # the bit layout (the 28-bit nibbles) that the small test databases never reach.
    top = 2**record_size - 1
    left = data.draw(st.integers(17, top))
    right = data.draw(st.integers(17, top))
    tree = _node(left, right, record_size)
    for bits in (32, 128):
        hi, lo, record, visited = mmdb.walk(tree, 1, record_size, bits, 2**40, 10)
        starts = [h << 64 | lo_ for h, lo_ in zip(hi.tolist(), lo.tolist())]
        if left == right:
            assert (starts, record.tolist(), visited) == ([0], [left], 1)
        else:
            assert (starts, record.tolist(), visited) == ([0, 1 << (bits - 1)], [left, right], 1)


def test_walker_argument_checks(mmdb):
    data = bytes(64)
    with pytest.raises(ValueError, match="record size"):
        mmdb.walk(data, 1, 20, 32, 0, 10)
    with pytest.raises(ValueError, match="exceeds the file"):
        mmdb.walk(data, 100, 24, 32, 0, 10)
    with pytest.raises(ValueError, match="bad walk"):
        mmdb.walk(data, 1, 24, 64, 0, 10)


# -- GeoTable.from_ranges and the table invariants --------------------------------------------

def test_from_ranges_loopback_and_ranges():
    table = GeoTable.from_ranges(
        v4=[("127.0.0.0/8", "ZZ"), ("1.2.3.4-1.2.3.9", "DE"), ("1.2.3.6", "FR")],
        v6=[("2001:db8::/32", "NL"), ("::1", "ZZ")])
    assert table.country("127.0.0.1") == "ZZ"
    assert table.country("127.255.255.255") == "ZZ"
    assert table.country("128.0.0.0") == ""
    assert [table.country(f"1.2.3.{i}") for i in range(3, 11)] == \
        ["", "DE", "DE", "FR", "DE", "DE", "DE", ""]
    assert table.country("::ffff:127.0.0.1") == "ZZ"  # IPv4-mapped is IPv4
    assert table.country("::127.0.0.1") == ""  # IPv4-compatible stays IPv6
    assert table.country("2001:db8:ffff::1") == "NL"
    assert table.country("2001:db9::") == ""
    assert table.country("::1") == "ZZ"
    assert table.countries == ["", "DE", "FR", "NL", "ZZ"]


def test_from_ranges_whole_spaces():
    table = GeoTable.from_ranges(v4=[("0.0.0.0/0", "AA")], v6=[("::/0", "BB")])
    assert table.v4_starts.tolist() == [0]
    assert table.country("255.255.255.255") == "AA"
    assert table.country("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff") == "BB"


def test_from_ranges_rejects_wrong_family():
    with pytest.raises(ValueError):
        GeoTable.from_ranges(v4=[("::/0", "AA")])
    with pytest.raises(ValueError):
        GeoTable.from_ranges(v6=[("10.0.0.0/8", "AA")])
    with pytest.raises(ValueError):
        GeoTable.from_ranges(v4=[("10.0.0.9-10.0.0.1", "AA")])


@settings(max_examples=100, deadline=None)
@given(spans=st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 300),
                                st.sampled_from(["DE", "FR", "US", ""])), max_size=8),
       probes=st.lists(st.integers(0, 2**32 - 1), max_size=20))
def test_from_ranges_matches_painting_oracle(spans, probes):
    entries = []
    for first, width, code in spans:
        last = min(first + width, 2**32 - 1)
        entries.append((f"{ipaddress.IPv4Address(first)}-{ipaddress.IPv4Address(last)}", code, first, last))
    table = GeoTable.from_ranges(v4=[(text, code) for text, code, _f, _l in entries])
    edges = [e for _t, _c, f, l in entries for e in (f, l, max(f - 1, 0), min(l + 1, 2**32 - 1))]
    for addr in probes + edges:
        want = next((c for _t, c, f, l in reversed(entries) if f <= addr <= l), "")
        assert table.country(str(ipaddress.IPv4Address(addr))) == want


# IPv6 addresses near the 64-bit halves' seams, where the (hi, lo) search has to be right.
v6_addresses = st.builds(lambda hi, lo: hi << 64 | lo,
                         st.sampled_from([0, 1, 2, 2**63, 2**64 - 1]),
                         st.one_of(st.integers(0, 40), st.integers(2**64 - 40, 2**64 - 1)))


@settings(max_examples=100, deadline=None)
@given(spans=st.lists(st.tuples(v6_addresses, v6_addresses, st.sampled_from(["DE", "FR", "US"])),
                      max_size=6),
       probes=st.lists(v6_addresses, max_size=20))
def test_from_ranges_v6_matches_painting_oracle(spans, probes):
    entries = [(min(a, b), max(a, b), code) for a, b, code in spans]
    table = GeoTable.from_ranges(
        v6=[(f"{ipaddress.IPv6Address(f)}-{ipaddress.IPv6Address(l)}", c) for f, l, c in entries])
    edges = [e for f, l, _c in entries for e in (f, l, max(f - 1, 0), min(l + 1, 2**128 - 1))]
    for addr in probes + edges:
        text = str(ipaddress.IPv6Address(addr))
        if ipaddress.IPv6Address(addr).ipv4_mapped is not None:
            continue  # looked up in the IPv4 table
        want = next((c for f, l, c in reversed(entries) if f <= addr <= l), "")
        assert table.country(text) == want, text


@pytest.mark.parametrize("change,message", [
    ({"countries": ["DE"]}, "countries must start"),
    ({"v4_starts": [1]}, "start at address 0"),
    ({"v4_starts": [0, 5, 5], "v4_country": [0, 1, 0]}, "strictly increasing"),
    ({"v4_country": [7]}, "index beyond"),
    ({"countries": ["", "DEU"]}, "two ASCII letters"),
    ({"countries": ["", "D\u00c9"]}, "two ASCII letters"),
    ({"v6_hi": [0, 0], "v6_lo": [0, 0], "v6_country": [0, 1]}, "strictly increasing"),
    ({"v6_lo": [0, 1]}, "equal length"),
])
def test_geotable_refuses_inconsistent_tables(change, message):
    fields = {"countries": ["", "DE"], "v4_starts": [0], "v4_country": [0], "v6_hi": [0],
              "v6_lo": [0], "v6_country": [0]}
    fields.update(change)
    with pytest.raises(ValueError, match=message):
        GeoTable(**fields)


# -- the disk cache ---------------------------------------------------------------------------

def cache_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("geoip-*.cstab"))


def test_cache_miss_then_hit(tmp_path, monkeypatch):
    table = GeoTable.open(COUNTRY_TEST_DB, cache_dir=tmp_path)
    [cached] = cache_files(tmp_path)
    assert table.sha256 in cached.name

    def no_compile(*args, **kwargs):
        raise AssertionError("compiled again despite a valid cache")

    monkeypatch.setattr(GeoTable, "_compile", classmethod(no_compile))
    again = GeoTable.open(COUNTRY_TEST_DB, cache_dir=tmp_path)
    assert again.countries == table.countries
    assert np.array_equal(again.v4_starts, table.v4_starts)
    assert np.array_equal(again.v6_lo, table.v6_lo)
    assert not again.v4_starts.flags.writeable  # memory-mapped from the cache file
    reader = maxminddb.open_database(str(COUNTRY_TEST_DB), maxminddb.MODE_FILE)
    for addr in ("81.2.69.160", "2.125.160.216", "2001:218::1", "89.160.20.112", "::1"):
        assert again.country(addr) == reader_country(reader, addr)


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "foreign"])
def test_damaged_cache_is_rebuilt_with_a_warning(tmp_path, damage):
    table = GeoTable.open(COUNTRY_TEST_DB, cache_dir=tmp_path)
    [cached] = cache_files(tmp_path)
    good = cached.read_bytes()
    if damage == "flip":
        bad = bytearray(good)
        bad[len(bad) // 2] ^= 0x40
        cached.write_bytes(bytes(bad))
    elif damage == "truncate":
        cached.write_bytes(good[: len(good) - 13])
    elif damage == "empty":
        cached.write_bytes(b"")
    else:  # a valid table file of another database under this name
        other = tmp_path / "other"
        GeoTable.open(IPV4_TEST_DB, cache_dir=other)
        cached.write_bytes(cache_files(other)[0].read_bytes())
    with pytest.warns(RuntimeWarning, match="GeoIP cache rebuilt"):
        rebuilt = GeoTable.open(COUNTRY_TEST_DB, cache_dir=tmp_path)
    assert rebuilt.countries == table.countries
    assert np.array_equal(rebuilt.v6_hi, table.v6_hi)
    assert cached.read_bytes() == good


@pytest.mark.parametrize("damage", ["unsorted", "country index", "missing section", "dtype"])
def test_inconsistent_cache_with_valid_checksum_is_rebuilt(tmp_path, damage):
    # A well-formed table file whose content the lookups must not trust.
    table = GeoTable.open(COUNTRY_TEST_DB, cache_dir=tmp_path)
    [cached] = cache_files(tmp_path)
    good = cached.read_bytes()
    loaded = read_tables(cached, "geoip")
    arrays = {name: np.array(array) for name, array in loaded.arrays.items()}
    if damage == "unsorted":
        arrays["v4_starts"][[1, 2]] = arrays["v4_starts"][[2, 1]]
    elif damage == "country index":
        arrays["v6_country"][-1] = len(table.countries)
    elif damage == "missing section":
        del arrays["v6_lo"]
    else:
        arrays["v4_country"] = arrays["v4_country"].astype(np.uint32)
    write_tables(cached, "geoip", loaded.meta, arrays)
    with pytest.warns(RuntimeWarning, match="GeoIP cache rebuilt"):
        rebuilt = GeoTable.open(COUNTRY_TEST_DB, cache_dir=tmp_path)
    assert np.array_equal(rebuilt.v4_starts, table.v4_starts)
    assert cached.read_bytes() == good


def test_unwritable_cache_dir_warns_and_works_in_memory(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    with pytest.warns(RuntimeWarning, match="GeoIP cache not written"):
        table = GeoTable.open(COUNTRY_TEST_DB, cache_dir=blocker / "cache")
    assert table.country("81.2.69.160") == "GB"


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("CONNSCAN_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("CONNSCAN_CACHE_DIR")
    assert default_cache_dir() == tmp_path / "xdg" / "connscan"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "connscan"
    GeoTable.open(IPV4_TEST_DB)
    assert len(cache_files(tmp_path / "home" / ".cache" / "connscan")) == 1

