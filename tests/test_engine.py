"""Engine: the native and pure-Python lookups against brute-force ipaddress oracles."""
from __future__ import annotations

import ipaddress
import os
import threading
import time

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support import impl_fixture
from connscan import _native
from connscan.engine import Engine, ParsedAddresses, parse_addresses
from connscan.errors import CacheError, InputError
from connscan.geoip import GeoTable
from connscan.signatures import SignatureSet
from connscan.tables import read_tables, write_tables

engine_impl = impl_fixture("engine")

V4_MAX = (1 << 32) - 1
V6_MAX = (1 << 128) - 1
# CONNSCAN_HYPOTHESIS_EXAMPLES raises the example count for a longer (non-CI) search.
HYPOTHESIS = settings(max_examples=int(os.environ.get("CONNSCAN_HYPOTHESIS_EXAMPLES", "60")), deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture,
                                             HealthCheck.too_slow])


def impl_name(module) -> str:
    return module.__name__.rsplit("_", 1)[1]


# --------------------------------------------------------------------------- oracles


def oracle_address(text: str):
    """(version, int) of an address text via ipaddress; ::ffff:a.b.c.d is IPv4."""
    ip = ipaddress.ip_address(text)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.version, int(ip)


def oracle_span(network: str):
    """(version, first, last) of a normalised signature network ("a/n" or "a-b")."""
    if "-" in network:
        first, last = (ipaddress.ip_address(part) for part in network.split("-"))
        return first.version, int(first), int(last)
    net = ipaddress.ip_network(network, strict=False)
    return net.version, int(net.network_address), int(net.broadcast_address)


def oracle_matches(spans, text: str) -> list[int]:
    """Every signature containing the address, fewest addresses first, then lower index."""
    version, value = oracle_address(text)
    found = [(last - first, index) for index, (v, first, last) in enumerate(spans)
             if v == version and first <= value <= last]
    return [index for _size, index in sorted(found)]


def oracle_country(geo_ranges, text: str) -> bytes:
    """The country of the last GeoTable.from_ranges entry containing the address."""
    version, value = oracle_address(text)
    for network, code in reversed(geo_ranges[version]):
        v, first, last = oracle_span(network)
        if first <= value <= last:
            return code.encode()
    return b""


def oracle_parse(text: str):
    """(kind, v4, hi, lo) with ipaddress; brackets hold IPv6 only; invalid -> kind 0."""
    try:
        if text.startswith("[") and text.endswith("]"):
            ip = ipaddress.IPv6Address(text[1:-1])
        else:
            ip = ipaddress.ip_address(text)
    except ValueError:
        return 0, 0, 0, 0
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.version == 4:
        return 4, int(ip), 0, 0
    return 6, 0, int(ip) >> 64, int(ip) & ((1 << 64) - 1)


def v6_text(value: int) -> str:
    return str(ipaddress.IPv6Address(value))


def v4_text(value: int) -> str:
    return str(ipaddress.IPv4Address(value))


# --------------------------------------------------------------------------- strategies

# Values near the ends of the address spaces are where off-by-one bugs live.
v4_values = st.one_of(st.integers(0, V4_MAX), st.integers(0, 300), st.integers(V4_MAX - 300, V4_MAX),
                      st.sampled_from([0x0A000000, 0x0A0000FF, 0x0A000100, 0x7FFFFFFF, 0x80000000]))
v6_values = st.one_of(st.integers(0, V6_MAX), st.integers(0, 1 << 70),
                      st.integers(V6_MAX - (1 << 70), V6_MAX),
                      st.integers(0, V4_MAX).map(lambda v: 0xFFFF_0000_0000 | v),  # mapped IPv4
                      st.integers(0, 1 << 20).map(lambda v: (0x2001_0DB8 << 96) | v))


@st.composite
def v4_network(draw):
    if draw(st.booleans()):
        first, last = sorted((draw(v4_values), draw(v4_values)))
        return f"{v4_text(first)}-{v4_text(last)}"
    prefix = draw(st.integers(0, 32))
    return f"{v4_text(draw(v4_values))}/{prefix}"


@st.composite
def v6_network(draw):
    choice = draw(st.integers(0, 3))
    if choice == 0:  # a range may not start or end in ::ffff:0:0/96 (that would mix families)
        unmapped = v6_values.filter(lambda v: v >> 32 != 0xFFFF)
        first, last = sorted((draw(unmapped), draw(unmapped)))
        return f"{v6_text(first)}-{v6_text(last)}"
    if choice == 1:  # IPv4-mapped networks are IPv4 signatures
        return f"::ffff:{v4_text(draw(v4_values))}/{draw(st.integers(96, 128))}"
    return f"{v6_text(draw(v6_values))}/{draw(st.integers(0, 128))}"


@st.composite
def signature_networks(draw):
    pool = draw(st.lists(st.one_of(v4_network(), v6_network()), min_size=1, max_size=12))
    extra = draw(st.sampled_from([[], ["0.0.0.0/0"], ["::/0"], ["::/0", "0.0.0.0/0"]]))
    # Drawing from a small pool gives duplicate and nested networks.
    return draw(st.lists(st.sampled_from(pool + extra), min_size=0, max_size=25))


@st.composite
def geo_ranges(draw):
    codes = st.sampled_from(["US", "DE", "CN", "BR"])
    return {4: draw(st.lists(st.tuples(v4_network(), codes), max_size=6)),
            6: draw(st.lists(st.tuples(v6_network().filter(lambda n: "ffff:" not in n), codes),
                             max_size=6))}


def probe_addresses(spans, geo, draw_values):
    """Random addresses plus every range edge and its neighbours, as text."""
    texts = []
    for version, first, last in spans + [oracle_span(n) for n, _ in geo[4] + geo[6]]:
        top = V4_MAX if version == 4 else V6_MAX
        for value in (first - 1, first, last, last + 1):
            if 0 <= value <= top:
                texts.append(v4_text(value) if version == 4 else v6_text(value))
    texts += draw_values
    return texts


def make_geo(ranges):
    return GeoTable.from_ranges(v4=ranges[4], v6=ranges[6])


# --------------------------------------------------------------------------- lookups


@HYPOTHESIS
@given(networks=signature_networks(), geo=geo_ranges(),
       extra=st.lists(st.one_of(v4_values.map(v4_text), v6_values.map(v6_text)), max_size=30))
def test_lookups_match_brute_force_oracle(engine_impl, networks, geo, extra):
    sigs = SignatureSet.from_networks(networks)
    spans = [oracle_span(s.network) for s in sigs]
    engine = Engine(sigs, make_geo(geo), impl=impl_name(engine_impl))
    texts = probe_addresses(spans, geo, extra + ["0.0.0.0", "255.255.255.255", "::", v6_text(V6_MAX)])
    expected = [oracle_matches(spans, t) for t in texts]
    expected_sig = np.array([m[0] if m else -1 for m in expected], np.int32)
    expected_country = np.array([oracle_country(geo, t) for t in texts], "S2")

    result = engine.lookup(texts)
    np.testing.assert_array_equal(result.signature, expected_sig)
    np.testing.assert_array_equal(result.country, expected_country)
    assert result.valid.all()

    # The numeric entry points give the same answers.
    parsed = [oracle_address(t) for t in texts]
    is4 = np.array([v == 4 for v, _ in parsed])
    v4 = engine.lookup_ipv4(np.array([x for v, x in parsed if v == 4], np.uint32))
    np.testing.assert_array_equal(v4.signature, expected_sig[is4])
    np.testing.assert_array_equal(v4.country, expected_country[is4])
    values6 = [x for v, x in parsed if v == 6]
    v6 = engine.lookup_ipv6(np.array([x >> 64 for x in values6], np.uint64),
                            np.array([x & ((1 << 64) - 1) for x in values6], np.uint64))
    np.testing.assert_array_equal(v6.signature, expected_sig[~is4])
    np.testing.assert_array_equal(v6.country, expected_country[~is4])

    for text, want in zip(texts, expected):
        assert engine.matches(text) == want, text


@given(networks=signature_networks(), values=st.lists(v4_values, min_size=1, max_size=40))
@HYPOTHESIS
def test_native_equals_twin(networks, values):
    if "c" not in _native.implementations("engine"):
        pytest.skip("connscan._engine_c not built")
    sigs = SignatureSet.from_networks(networks)
    addrs = np.array(values, np.uint32)
    c, py = (Engine(sigs, impl=impl).lookup_ipv4(addrs) for impl in ("c", "py"))
    np.testing.assert_array_equal(c.signature, py.signature)
    np.testing.assert_array_equal(c.country, py.country)


def test_ipv6_default_route_never_matches_ipv4(engine_impl):
    sigs = SignatureSet.from_networks(["::/0", "2001:db8::/32"])
    engine = Engine(sigs, impl=impl_name(engine_impl))
    result = engine.lookup(["1.2.3.4", "::ffff:1.2.3.4", "::1.2.3.4", "2001:db8::1"])
    assert result.signature.tolist() == [-1, -1, 0, 1]
    assert result.is_ipv4.tolist() == [True, True, False, False]
    assert engine.matches("::ffff:1.2.3.4") == []
    assert engine.matches("2001:db8::1") == [1, 0]
    hi = np.array([0, 0], np.uint64)
    lo = np.array([0xFFFF_0102_0304, 0x0102_0304], np.uint64)
    assert engine.lookup_ipv6(hi, lo).signature.tolist() == [-1, 0]


def test_most_specific_first_ties_by_index(engine_impl):
    sigs = SignatureSet.from_networks(["10.0.0.0/8", "10.1.0.0/16", "10.1.0.0/16", "10.1.2.3",
                                       "10.1.2.0-10.1.2.255", "0.0.0.0/0"])
    engine = Engine(sigs, impl=impl_name(engine_impl))
    assert engine.matches("10.1.2.3") == [3, 4, 1, 2, 0, 5]
    assert engine.matches("10.2.0.0") == [0, 5]
    assert engine.matches("not an address") == []
    assert engine.lookup(["10.1.2.3", "10.1.9.9", "11.0.0.0"]).signature.tolist() == [3, 1, 5]


def test_hit_rows_bitmap(engine_impl):
    engine = Engine(SignatureSet.from_networks(["192.0.2.0/24"]), impl=impl_name(engine_impl))
    result = engine.lookup(["192.0.2.1", "x", "198.51.100.1", "192.0.2.255", None])
    assert list(result.hit_rows()) == [0, 3]


def test_two_threads_equal_one_call(engine_impl):
    rng = np.random.default_rng(7)
    networks = [f"{v4_text(int(v))}/{int(p)}" for v, p in
                zip(rng.integers(0, 1 << 32, 3000), rng.integers(8, 33, 3000))]
    geo = GeoTable.from_ranges(v4=[("0.0.0.0/1", "US"), ("64.0.0.0/3", "DE")])
    engine = Engine(SignatureSet.from_networks(networks), geo, impl=impl_name(engine_impl))
    addrs = rng.integers(0, 1 << 32, 20_000, dtype=np.uint64).astype(np.uint32)
    whole = engine.lookup_ipv4(addrs)
    halves = [None, None]

    def run(part):
        halves[part] = engine.lookup_ipv4(addrs[part * 10_000:(part + 1) * 10_000])

    threads = [threading.Thread(target=run, args=(part,)) for part in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    np.testing.assert_array_equal(np.concatenate([h.signature for h in halves]), whole.signature)
    np.testing.assert_array_equal(np.concatenate([h.country for h in halves]), whole.country)
    assert (whole.signature >= 0).any() and (whole.country == b"DE").any()


def test_native_lookup_releases_the_gil():
    if "c" not in _native.implementations("engine"):
        pytest.skip("connscan._engine_c not built")
    engine = Engine(SignatureSet.from_networks(["10.0.0.0/8", "192.0.2.0/24"]), impl="c")
    addrs = np.random.default_rng(3).integers(0, 1 << 32, 4_000_000, dtype=np.uint64).astype(np.uint32)
    started, finished = [], []

    def work():
        started.append(time.perf_counter())
        engine.lookup_ipv4(addrs)
        finished.append(time.perf_counter())

    thread = threading.Thread(target=work)
    ticks = []
    thread.start()
    while thread.is_alive():  # this loop needs the GIL: it stalls while the lookup holds it
        ticks.append(time.perf_counter())
    thread.join()
    during = [t for t in ticks if started[0] <= t <= finished[0]]
    gaps = np.diff([started[0]] + during + [finished[0]])
    assert gaps.max() < (finished[0] - started[0]) / 2


def test_numeric_input_is_checked(engine_impl):
    engine = Engine(SignatureSet.from_networks(["1.0.0.0/8"]), impl=impl_name(engine_impl))
    assert engine.lookup_ipv4([0x01020304, 5]).signature.tolist() == [0, -1]
    with pytest.raises(ValueError, match="out of range"):
        engine.lookup_ipv4(np.array([1 << 32], np.int64))
    with pytest.raises(ValueError, match="differ in length"):
        engine.lookup_ipv6(np.zeros(2, np.uint64), np.zeros(3, np.uint64))


# --------------------------------------------------------------------------- parser

hextet = st.integers(0, 0xFFFF).map(lambda v: format(v, "x"))


@st.composite
def address_texts(draw):
    kind = draw(st.integers(0, 6))
    if kind == 0:
        return v4_text(draw(v4_values))
    if kind == 1:
        return v6_text(draw(v6_values))
    if kind == 2:  # exploded, upper case, IPv4 tail, zone, brackets
        value = draw(v6_values)
        text = ipaddress.IPv6Address(value).exploded
        if draw(st.booleans()):
            text = text.upper()
        if draw(st.booleans()):
            text = text[:30] + v4_text(value & V4_MAX)
        if draw(st.booleans()):
            text += "%" + draw(st.sampled_from(["eth0", "1", "", "a%b", "x:y"]))
        if draw(st.booleans()):
            text = f"[{text}]"
        return text
    if kind == 3:  # groups joined with random separators
        parts = draw(st.lists(hextet, min_size=0, max_size=9))
        seps = draw(st.lists(st.sampled_from([":", "::", ":::", "."]),
                             min_size=len(parts), max_size=len(parts)))
        text = "".join(p + s for p, s in zip(parts, seps))
        return draw(st.sampled_from([text, text[:-1], "::" + text, text + "1.2.3.4"]))
    if kind == 4:  # dotted quads with bad parts
        parts = draw(st.lists(st.sampled_from(["0", "00", "01", "1", "255", "256", "999", "1000", "", "a"]),
                              min_size=1, max_size=5))
        return ".".join(parts)
    if kind == 5:
        return draw(st.text(alphabet="0123456789abcdefABCDEFx:.%[] \n", max_size=45))
    text = draw(address_texts())  # one random edit of a valid address
    position = draw(st.integers(0, len(text)))
    edit = draw(st.sampled_from(["", "0", ":", ".", " ", "g", "\u0661"]))
    return text[:position] + edit + text[position + draw(st.integers(0, 1)):]


@given(texts=st.lists(address_texts(), min_size=1, max_size=40))
@HYPOTHESIS
def test_parser_matches_ipaddress(engine_impl, texts):
    want = [oracle_parse(t) for t in texts]
    # Alone, and followed by more text in the buffer (the native path reads 16-byte words
    # when there is room after the text, and byte by byte near the buffer's end).
    for padding in ([], ["9" * 20], ["1.2.3.4"]):
        parsed = parse_addresses(texts + padding, engine_impl)
        got = list(zip(parsed.kind.tolist(), parsed.v4.tolist(), parsed.hi.tolist(), parsed.lo.tolist()))
        assert got[:len(texts)] == want


def test_parser_on_many_dotted_quads(engine_impl):
    """Random dotted quads, valid and nearly valid, in one buffer (the 16-byte path)."""
    rng = np.random.default_rng(11)
    parts = [str(v) for v in range(256)] + ["00", "01", "000", "007", "256", "999", "1000", "", "a", " 1", "1 ", "-1", "+1", "1e1"]
    texts = []
    for _ in range(4000 if impl_name(engine_impl) == "c" else 400):
        count = rng.choice([3, 4, 4, 4, 4, 5])
        text = ".".join(parts[i] if rng.random() < 0.2 else str(rng.integers(0, 256)) for i in rng.integers(0, len(parts), count))
        texts.append(text if rng.random() < 0.9 else text + rng.choice([".", ":", "/24", "%x", "\u0661"]))
    parsed = parse_addresses(texts, engine_impl)
    got = list(zip(parsed.kind.tolist(), parsed.v4.tolist(), parsed.hi.tolist(), parsed.lo.tolist()))
    assert got == [oracle_parse(t) for t in texts]
    assert sum(kind == 4 for kind, *_ in got) > len(texts) // 3


def test_parser_known_cases(engine_impl):
    cases = {
        "1.2.3.4": (4, 0x01020304, 0, 0), "0.0.0.0": (4, 0, 0, 0), "255.255.255.255": (4, V4_MAX, 0, 0),
        "01.2.3.4": (0, 0, 0, 0), "1.2.3": (0, 0, 0, 0), "1.2.3.4.": (0, 0, 0, 0), " 1.2.3.4": (0, 0, 0, 0),
        "::": (6, 0, 0, 0), "::1": (6, 0, 0, 1), "1::": (6, 0, 1 << 48, 0),
        "::ffff:1.2.3.4": (4, 0x01020304, 0, 0), "[::ffff:1.2.3.4]": (4, 0x01020304, 0, 0),
        "::FFFF:102:304": (4, 0x01020304, 0, 0), "::1.2.3.4": (6, 0, 0, 0x01020304),
        "fe80::1%eth0": (6, 0, 0xFE80 << 48, 1), "[2001:db8::1]": (6, 0, 0x2001_0DB8 << 32, 1),
        "1:2:3:4:5:6:7::": (6, 0, 0x0001_0002_0003_0004, 0x0005_0006_0007_0000),
        "1:2:3:4:5:6:7:8::": (0, 0, 0, 0), ":::": (0, 0, 0, 0), "1:::2": (0, 0, 0, 0),
        "[1.2.3.4]": (0, 0, 0, 0), "fe80::1%": (0, 0, 0, 0), "[::1": (0, 0, 0, 0), "": (0, 0, 0, 0),
        "12345::": (0, 0, 0, 0), "1:2:3:4:5:6:1.2.3.4": (6, 0, 0x0001_0002_0003_0004, 0x0005_0006_0102_0304),
    }
    parsed = parse_addresses(list(cases), engine_impl)
    got = list(zip(parsed.kind.tolist(), parsed.v4.tolist(), parsed.hi.tolist(), parsed.lo.tolist()))
    assert dict(zip(cases, got)) == cases
    for text, want in cases.items():
        if not text.startswith("[") and "%" not in text:
            assert oracle_parse(text) == want, text


def test_parser_input_types(engine_impl):
    texts = ["1.2.3.4", None, "::1", "bad", "::ffff:10.0.0.1", ""]
    want = [4, 0, 6, 0, 4, 0]
    arrow = pa.array(texts)
    variants = [
        texts,
        np.array(texts, dtype=object),
        np.array([t or "" for t in texts]),
        np.array([(t or "").encode() for t in texts], dtype="S"),
        arrow,
        arrow.cast(pa.large_string()),
        arrow.cast(pa.binary()),
        pa.chunked_array([arrow[:2], arrow[2:]]),
        arrow.dictionary_encode(),
        [1.5, "1.2.3.4"],
    ]
    for variant in variants[:-1]:
        assert parse_addresses(variant, engine_impl).kind.tolist() == want, type(variant)
    assert parse_addresses(variants[-1], engine_impl).kind.tolist() == [0, 4]
    # A slice keeps its offset into the parent's buffers and validity bitmap.
    sliced = pa.array(["x"] * 5 + texts)[5:]
    assert parse_addresses(sliced, engine_impl).kind.tolist() == want
    assert parse_addresses([], engine_impl).kind.tolist() == []


def test_corrupt_arrow_offsets_raise(engine_impl):
    data = pa.py_buffer(b"1.2.3.41.2.3.5")

    def arrow(offsets):
        offsets_buffer = pa.py_buffer(np.array(offsets, np.int32).tobytes())
        return pa.Array.from_buffers(pa.string(), 2, [None, offsets_buffer, data])

    # pyarrow's own (cheap) validation lets decreasing offsets through: ours must not.
    for offsets in ([0, 7, 3], [0, 9, 7]):
        with pytest.raises(InputError, match="offsets"):
            parse_addresses(arrow(offsets), engine_impl)
    assert parse_addresses(arrow([0, 7, 14]), engine_impl).v4.tolist() == [0x01020304, 0x01020305]
    # The native entry point itself checks every offset against the buffer.
    raw = np.frombuffer(b"1.2.3.41.2.3.5", np.uint8)
    outputs = (np.zeros(2, np.uint8), np.zeros(2, np.uint32), np.zeros(2, np.uint64), np.zeros(2, np.uint64))
    for offsets in ([0, 7, 99], [-1, 7, 14], [0, 7, 15]):
        with pytest.raises(ValueError, match="offsets"):
            engine_impl.parse_text(np.array(offsets, np.int64), raw, None, 0, *outputs)


def test_lookup_parsed_rejects_ragged(engine_impl):
    engine = Engine(SignatureSet.from_networks([]), impl=impl_name(engine_impl))
    parsed = ParsedAddresses(np.array([4, 6, 0], np.uint8), np.array([1, 0, 0], np.uint32),
                             np.zeros(3, np.uint64), np.zeros(2, np.uint64))
    with pytest.raises(ValueError, match="differ in length"):
        engine.lookup_parsed(parsed)


# --------------------------------------------------------------------------- flow ends

HOME = ["10.0.0.0/8", "192.168.0.0/16", "fd00::/8", "::ffff:172.16.0.0/108"]


def oracle_ends(spans, home_spans, geo, src: str | None, dst: str | None):
    """(bad, src_home, inbound, remote signature, remote country, local signature) of one
    flow, from ipaddress: the destination is the local end only when it alone is home."""
    ends = [oracle_parse(t) if t is not None else (0, 0, 0, 0) for t in (src, dst)]
    if ends[0][0] == 0 or ends[1][0] == 0:
        return 1 if ends[0][0] == 0 else 2, False, False, -1, b"", -1
    # The parsed value as canonical text, which the other oracles take.
    src, dst = (v4_text(v4) if kind == 4 else v6_text(hi << 64 | lo) for kind, v4, hi, lo in ends)
    src_in, dst_in = (bool(oracle_matches(home_spans, t)) for t in (src, dst))
    inbound = dst_in and not src_in
    remote, local = (src, dst) if inbound else (dst, src)
    found, local_found = oracle_matches(spans, remote), oracle_matches(spans, local)
    return (0, src_in, inbound, found[0] if found else -1, oracle_country(geo, remote),
            local_found[0] if local_found else -1)


@st.composite
def flow_texts(draw, n):
    home_like = st.one_of(st.integers(0x0A000000, 0x0AFFFFFF).map(v4_text), st.just("192.168.1.1"),
                          st.just("fd00::1"), st.just("::ffff:172.16.0.9"), st.just("[fd12::5%eth0]"))
    texts = st.one_of(address_texts(), home_like, st.none())
    return draw(st.lists(texts, min_size=n, max_size=n))


def ends_engines(engine_impl, networks, geo):
    """(engine, home engine, oracle of one flow's ends) for look_up_ends tests."""
    sigs, home_sigs = SignatureSet.from_networks(networks), SignatureSet.from_networks(HOME)
    spans, home_spans = ([oracle_span(s.network) for s in group] for group in (sigs, home_sigs))
    engine = Engine(sigs, make_geo(geo), impl=impl_name(engine_impl))
    home = Engine(home_sigs, impl=impl_name(engine_impl))
    return engine, home, lambda s, d: oracle_ends(spans, home_spans, geo, s, d)


def assert_ends(got, want):
    columns = list(zip(*want)) or [()] * 6
    assert got.bad.tolist() == list(columns[0])
    assert got.src_home.tolist() == list(columns[1])
    assert got.inbound.tolist() == list(columns[2])
    assert got.remote.signature.tolist() == list(columns[3])
    assert got.remote.country.tolist() == list(columns[4])
    assert got.local_sig.tolist() == list(columns[5])
    assert got.remote.valid.tolist() == [b == 0 for b in columns[0]]
    return columns


@given(networks=signature_networks(), geo=geo_ranges(), data=st.data())
@HYPOTHESIS
def test_look_up_ends_matches_oracle(engine_impl, networks, geo, data):
    engine, home, oracle = ends_engines(engine_impl, networks, geo)
    n = data.draw(st.integers(0, 200))  # beyond one native block: test_look_up_ends_across_blocks
    src, dst = data.draw(flow_texts(n)), data.draw(flow_texts(n))
    # Text types that differ between the two columns, and chunked columns.
    src_array = pa.array(src, data.draw(st.sampled_from([pa.string(), pa.large_string()])))
    dst_array = pa.array(dst, data.draw(st.sampled_from([pa.string(), pa.binary()])))
    if n > 3 and data.draw(st.booleans()):
        src_array = pa.chunked_array([src_array[:n // 3], src_array[n // 3:]])
    assert_ends(engine.look_up_ends(home, src_array, dst_array), [oracle(s, d) for s, d in zip(src, dst)])


def test_look_up_ends_across_blocks(engine_impl):
    """More rows than the native pass takes per block (1,024), with bad ends among them."""
    rng = np.random.default_rng(3)
    networks = ["10.1.0.0/16", "45.9.148.0/24", "45.9.148.7", "2a0e::/16", "91.92.0.0-91.92.3.255"]
    geo = {4: [("45.0.0.0/8", "RU")], 6: [("2a0e::/16", "IR")]}
    engine, home, oracle = ends_engines(engine_impl, networks, geo)
    pool = ["10.1.2.3", "10.9.9.9", "192.168.1.1", "45.9.148.7", "45.9.148.200", "45.1.1.1", "2a0e::5", "fd00::1",
            "91.92.2.2", "8.8.8.8", "::ffff:172.16.0.9", "not-an-ip", None, ""]
    src, dst = ([pool[i] for i in rng.integers(0, len(pool), 2600)] for _ in range(2))
    columns = assert_ends(engine.look_up_ends(home, pa.array(src), pa.array(dst)), [oracle(s, d) for s, d in zip(src, dst)])
    assert 0 < sum(b != 0 for b in columns[0]) < 2600 and any(columns[2])


def test_look_up_ends_checks_its_input(engine_impl):
    engine = small_engine(impl_name(engine_impl))
    home = Engine(SignatureSet.from_networks(HOME), impl=impl_name(engine_impl))
    with pytest.raises(ValueError, match="differ in length"):
        engine.look_up_ends(home, pa.array(["1.2.3.4"]), pa.array([]))
    # Decreasing offsets (pyarrow's cheap validation lets them through): an InputError.
    data = pa.py_buffer(b"1.2.3.410.0.0.1")

    def arrow(offsets):
        return pa.Array.from_buffers(pa.string(), 2, [None, pa.py_buffer(np.array(offsets, np.int32).tobytes()), data])

    bad, good = arrow([0, 9, 7]), arrow([0, 7, 15])
    for src, dst in ((bad, good), (good, bad)):
        with pytest.raises(InputError, match="offsets"):
            engine.look_up_ends(home, src, dst)
    # The native entry point itself checks every offset against its buffer.
    raw = np.frombuffer(b"1.2.3.410.0.0.1", np.uint8)
    outputs = (np.zeros(2, np.uint8), np.zeros(2, np.uint8), np.zeros(2, np.uint8), np.zeros(2, np.int32),
               np.zeros(2, np.uint16), np.zeros(2, np.int32))
    ok = (np.array([0, 7, 15], np.int64), raw, None, 0)
    for offsets in ([0, 7, 99], [-1, 7, 15], [0, 7, 16]):
        broken = (np.array(offsets, np.int64), raw, None, 0)
        for src, dst in ((broken, ok), (ok, broken)):
            with pytest.raises(ValueError, match="offsets"):
                engine_impl.look_up_ends(engine._tables, home._tables, *src, *dst, *outputs)
    got = engine.look_up_ends(home, good, good[::-1])
    assert got.inbound.tolist() == [True, False] and got.remote.signature.tolist() == [1, 1]


@given(flows=st.lists(st.tuples(st.booleans(), st.integers(-1, 65535), st.integers(-1, 65535)), max_size=300),
       wide=st.booleans())
@HYPOTHESIS
def test_side_ports_takes_the_local_port_from_the_home_side(engine_impl, flows, wide):
    engine = small_engine(impl_name(engine_impl))
    inbound = np.array([f[0] for f in flows], bool)
    dtype = np.int64 if wide else np.int32  # int32: the native pass; other widths: numpy
    sport, dport = (np.array([f[k] for f in flows], dtype) for k in (1, 2))
    lport, rport = engine.side_ports(inbound, sport, dport)
    assert lport.dtype == rport.dtype == np.int64
    assert lport.tolist() == [d if flip else s for flip, s, d in flows]
    assert rport.tolist() == [s if flip else d for flip, s, d in flows]


def test_side_ports_checks_lengths(engine_impl):
    engine = small_engine(impl_name(engine_impl))
    with pytest.raises(ValueError, match="differ in length"):
        engine.side_ports(np.zeros(2, bool), np.zeros(2, np.int32), np.zeros(1, np.int32))
    out = np.zeros(2, np.int64)
    with pytest.raises(ValueError, match="differ in length"):
        engine_impl.side_ports(np.zeros(2, np.uint8), np.zeros(2, np.int32), np.zeros(2, np.int32), out, np.zeros(1, np.int64))


# --------------------------------------------------------------------------- save / load


def small_engine(impl):
    sigs = SignatureSet.from_networks(["1.2.3.0/24", "1.2.3.4", "2001:db8::/32", "9.9.9.9-9.9.10.1"])
    geo = GeoTable.from_ranges(v4=[("1.0.0.0/8", "AU")], v6=[("2001:db8::/48", "NL")])
    return Engine(sigs, geo, impl=impl)


PROBES = ["1.2.3.4", "1.2.3.5", "1.9.9.9", "2001:db8::1", "2001:db8:1::", "9.9.10.0", "8.8.8.8"]


def test_save_load_round_trip(engine_impl, tmp_path):
    impl = impl_name(engine_impl)
    engine = small_engine(impl)
    path = tmp_path / "engine.cstab"
    engine.save(path)
    loaded = Engine.load(path, expected_sha256=engine.sha256, impl=impl)
    assert loaded.implementation == impl
    before, after = engine.lookup(PROBES), loaded.lookup(PROBES)
    np.testing.assert_array_equal(before.signature, after.signature)
    np.testing.assert_array_equal(before.country, after.country)
    assert after.country.tolist() == [b"AU", b"AU", b"AU", b"NL", b"", b"", b""]
    assert list(loaded.signatures) == list(engine.signatures)
    assert loaded.signatures[-1].network == "9.9.9.9-9.9.10.1"
    for a, b in zip(loaded.signatures.v4_ranges() + loaded.signatures.v6_ranges(),
                    engine.signatures.v4_ranges() + engine.signatures.v6_ranges()):
        np.testing.assert_array_equal(a, b)
    assert loaded.matches("1.2.3.4") == [1, 0]
    with pytest.raises(CacheError, match="sha256"):
        Engine.load(path, expected_sha256="0" * 64, impl=impl)


@given(networks=signature_networks())
@HYPOTHESIS
def test_saved_signatures_answer_as_the_set(networks, tmp_path_factory):
    """What the rules ask of the signatures (bounds, rule columns) survives a save/load."""
    sigs = SignatureSet.from_networks(networks)
    sigs += SignatureSet.from_networks(networks[:3], kind="allowlist")
    path = tmp_path_factory.mktemp("saved") / "engine.cstab"
    Engine(sigs).save(path)
    loaded = Engine.load(path).signatures
    assert [loaded.bounds(i) for i in range(len(sigs))] == [sigs.bounds(i) for i in range(len(sigs))]
    for got, want in zip(loaded.rule_columns(), sigs.rule_columns()):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype
    # and independently of the set: the text's own range
    for i, signature in enumerate(sigs):
        version, first, last, is_range = loaded.bounds(i)
        assert (version, first, last) == oracle_span(signature.network) and is_range == ("-" in signature.network)


def test_empty_engine_round_trip(engine_impl, tmp_path):
    impl = impl_name(engine_impl)
    path = tmp_path / "empty.cstab"
    Engine(SignatureSet.from_networks([]), impl=impl).save(path)
    loaded = Engine.load(path, impl=impl)
    result = loaded.lookup(["1.2.3.4", "::1", "nonsense"])
    assert result.signature.tolist() == [-1, -1, -1]
    assert result.country.tolist() == [b"", b"", b""]
    assert result.valid.tolist() == [True, True, False]
    assert len(loaded.signatures) == 0 and loaded.matches("1.2.3.4") == []


def test_lookup_parsed_maps_ipv4_mapped_ipv6(engine_impl):
    engine = Engine(SignatureSet.from_networks(["10.0.0.0/8", "::/0"]), impl=impl_name(engine_impl))
    # kind 6 carrying ::ffff:10.1.2.3 (as another parser might produce) is still IPv4.
    parsed = ParsedAddresses(np.array([6, 6, 4, 0], np.uint8), np.array([0, 0, 0x0A000001, 0], np.uint32),
                             np.zeros(4, np.uint64),
                             np.array([0xFFFF_0A01_0203, 1, 0, 0], np.uint64))
    assert engine.lookup_parsed(parsed).signature.tolist() == [0, 1, 0, -1]


def test_truncated_or_flipped_file_raises(engine_impl, tmp_path):
    impl = impl_name(engine_impl)
    path = tmp_path / "engine.cstab"
    small_engine(impl).save(path)
    raw = path.read_bytes()
    for damaged in (raw[:len(raw) // 2], raw[:100], raw[:-1],
                    raw[:300] + bytes([raw[300] ^ 0xFF]) + raw[301:],
                    raw[:-9] + bytes([raw[-9] ^ 0x01]) + raw[-8:]):
        path.write_bytes(damaged)
        with pytest.raises(CacheError):
            Engine.load(path, impl=impl)


def _rewrite(path, edit):
    """Rewrite a saved engine with one table edited (the checksum stays valid)."""
    table = read_tables(path, "engine")
    arrays = {name: np.array(array) for name, array in table.arrays.items()}
    edit(arrays)
    write_tables(path, "engine", table.meta, arrays)


def _set(name, index, value):
    def edit(arrays):
        arrays[name].reshape(-1)[index] = value
    return edit


def _replace(name, value):
    def edit(arrays):
        if value is None:
            del arrays[name]
        else:
            arrays[name] = value
    return edit


BAD_TABLES = {
    "l1 value id": _set("v4_l1", 5, 0x7FFF_FFFF),
    "l1 segment": _set("v4_l1", 0x0102, 0x8000_FFFF),
    "segment past end": _set("v4_seg", 1, 1 << 30),
    "segment empty": _set("v4_seg", 1, 0),
    "v4 value id": _set("v4_value", 0, 1 << 20),
    "v4 unsorted": _set("v4_starts", 1, 0),
    "v6 index": _set("v6_index", 3, 1 << 30),
    "v6 value id": _set("v6_value", 0, 999),
    "v6 unsorted": _set("v6_keys", 2, 0),
    "signature id": _set("values", 0, 0xFFFF_0000_7000_0000),
    "csr offsets": _set("m4_offsets", -1, 10**9),
    "csr signature": _set("m6_sigs", 0, 77),
    "l1 length": _replace("v4_l1", np.zeros(1000, np.uint32)),
    "dtype": _replace("v4_starts", np.zeros(4, np.int64)),
    "missing": _replace("v6_value", None),
    "signature text offsets": _set("sig_network_offsets", 1, 10**6),
    "signature code": _set("sig_source_code", 0, 99),
    "signature range index": _set("sig_v4_index", 0, 77),
    "signature range twice": _set("sig_v4_index", 0, 1),
    "signature range reversed": _set("sig_v4_end", 0, 0),
    "signature range v6 reversed": _set("sig_v6_end_hi", 0, 0),
    "signature range dtype": _replace("sig_v6_index", np.zeros(1, np.int64)),
}


def test_signature_text_cut_inside_a_character_is_refused(tmp_path):
    # Each text is decoded only when asked for: the load checks that every one would decode.
    sigs = SignatureSet.from_networks(["1.2.3.4"], description="é") + SignatureSet.from_networks(["5.6.7.8"], description="x")
    path = tmp_path / "engine.cstab"
    Engine(sigs).save(path)
    loaded = Engine.load(path)
    assert [s.description for s in loaded.signatures] == ["é", "x"]
    table = read_tables(path, "engine")
    data, offsets = table.arrays["sig_description_data"], table.arrays["sig_description_offsets"]
    cut = int(np.flatnonzero(data == 0xA9)[0])  # the second byte of é
    _rewrite(path, _set("sig_description_offsets", int(np.flatnonzero(offsets == cut + 1)[0]), cut))
    with pytest.raises(CacheError, match="UTF-8"):
        Engine.load(path)


@pytest.mark.parametrize("fault", sorted(BAD_TABLES))
def test_bad_offsets_raise_cache_error(engine_impl, tmp_path, fault):
    impl = impl_name(engine_impl)
    path = tmp_path / "engine.cstab"
    small_engine(impl).save(path)
    _rewrite(path, BAD_TABLES[fault])
    with pytest.raises(CacheError):
        Engine.load(path, impl=impl)


# --------------------------------------------------------------------------- real data

REAL_SIGNATURES = ["c2/ipsum/ipsum.txt", "c2/firehol/firehol_level4.netset",
                   "c2/spamhaus/drop-wsock-trace.txt", "c2/spamhaus/dropv6-2025-01-15.txt",
                   "c2/c2-tracker/2023-12-07/data/all.txt"]


@pytest.fixture(scope="module")
def real_engine_file(tmp_path_factory):
    """The real signature lists and DB-IP compiled once and saved; the py twin loads the file."""
    from support import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available at {SHARED_DATA}")
    sigs = SignatureSet.load([SHARED_DATA / p for p in REAL_SIGNATURES], strict=False)
    geo = GeoTable.open(SHARED_DATA / "geoip/dbip-country-lite/dbip-country.mmdb",
                        cache_dir=tmp_path_factory.mktemp("geocache"))
    engine = Engine(sigs, geo)
    path = tmp_path_factory.mktemp("engine") / "real.cstab"
    engine.save(path)
    return sigs, path


@pytest.fixture(scope="module")
def real_expected(real_engine_file):
    """Probe addresses and the oracle's matches for each."""
    sigs, _path = real_engine_file
    texts = real_probes(sigs, np.random.default_rng(2026))
    matches = real_oracle(sigs)
    return texts, [matches(t) for t in texts]


def real_oracle(sigs):
    """Most specific signatures by exact network lookup per prefix length (no tries)."""
    by_network: dict[tuple[int, int, int], list[int]] = {}
    ranges = []
    for index in range(len(sigs)):
        network = sigs.network(index)
        if "-" in network:
            ranges.append((oracle_span(network), index))
            continue
        net = ipaddress.ip_network(network)
        by_network.setdefault((net.version, int(net.network_address), net.prefixlen), []).append(index)

    def matches(text):
        version, value = oracle_address(text)
        bits = 32 if version == 4 else 128
        found = []
        for prefix in range(bits, -1, -1):
            base = value >> (bits - prefix) << (bits - prefix)
            found += [((1 << (bits - prefix)) - 1, i) for i in by_network.get((version, base, prefix), [])]
        found += [(last - first, i) for (v, first, last), i in ranges
                  if v == version and first <= value <= last]
        return [i for _size, i in sorted(found)]

    return matches


def real_probes(sigs, rng, n=1500):
    starts, ends, _ = sigs.v4_ranges()
    pick = rng.integers(0, len(starts), n)
    values = np.concatenate([starts[pick], ends[pick], starts[pick].astype(np.int64) - 1,
                             ends[pick].astype(np.int64) + 1,
                             rng.integers(0, 1 << 32, n)]).astype(np.int64)
    values = values[(values >= 0) & (values <= V4_MAX)]
    texts = [v4_text(int(v)) for v in values]
    hi, lo, end_hi, end_lo, _ = sigs.v6_ranges()
    for h, low, eh, el in zip(hi.tolist(), lo.tolist(), end_hi.tolist(), end_lo.tolist()):
        first, last = h << 64 | low, eh << 64 | el
        texts += [v6_text(v) for v in (first, last, (first + last) // 2, max(first - 1, 0))]
    return texts


def test_real_data_against_oracle(engine_impl, real_engine_file, real_expected):
    _sigs, path = real_engine_file
    texts, expected = real_expected
    engine = Engine.load(path, impl=impl_name(engine_impl))
    result = engine.lookup(pa.array(texts))
    np.testing.assert_array_equal(result.signature, [m[0] if m else -1 for m in expected])
    assert (result.signature >= 0).mean() > 0.3  # the probes do hit signatures
    rng = np.random.default_rng(5)
    for i in rng.choice(len(texts), 300, replace=False):
        assert engine.matches(texts[i]) == expected[i], texts[i]


def test_real_countries_equal_golden_lookups(engine_impl, real_engine_file, shared_data):
    _sigs, path = real_engine_file
    engine = Engine.load(path, impl=impl_name(engine_impl))
    golden = shared_data / "geoip/dbip-country-lite/golden-lookups-dbip-2026-06.tsv"
    rows = [line.split("\t") for line in golden.read_text().splitlines()[1:] if line]
    ips = [row[0] for row in rows]
    want = np.array([row[2].encode() if len(row) > 2 else b"" for row in rows], "S2")
    result = engine.lookup(ips)
    assert result.valid.all()
    np.testing.assert_array_equal(result.country, want)
    assert len(rows) == 8000 and (want != b"").sum() > 7000


def test_matches_at_an_integer_address_equals_matches_of_its_text(engine_impl):
    networks = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3", "192.0.2.10-192.0.2.20", "2001:db8::/32",
                "2001:db8:1::/48", "::ffff:198.51.100.0/120", "0.0.0.0/0", "::/0"]
    engine = Engine(SignatureSet.from_networks(networks), None, impl=impl_name(engine_impl))
    rng = np.random.default_rng(11)
    addresses = [ipaddress.ip_address(int(v)) for v in rng.integers(0, 2**32, 200, dtype=np.uint64)]
    addresses += [ipaddress.ip_address(text) for text in (
        "10.1.2.3", "10.255.255.255", "192.0.2.15", "192.0.2.21", "2001:db8:1::5", "2001:db8:ffff::1",
        "::ffff:198.51.100.7", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::")]
    for address in addresses:
        assert engine.matches_at(address.version, int(address)) == engine.matches(str(address)), address


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), n=st.integers(0, 40), with_local=st.booleans())
def test_attention_rows_against_a_per_row_reference(engine_impl, data, n, with_local):
    """The rules' row filter (native and twin) against the rule read row by row."""
    n_flags = 6
    flags = np.array(data.draw(st.lists(st.integers(-1, 7), min_size=n_flags, max_size=n_flags)), np.int8)
    column = lambda values, dtype: np.array(data.draw(st.lists(values, min_size=n, max_size=n)), dtype)  # noqa: E731
    rsig = column(st.integers(-1, n_flags - 1), np.int32)
    lsig = column(st.integers(-1, n_flags - 1), np.int32) if with_local else None
    country = column(st.sampled_from([0, 0x4e43, 0x5255, 0x5553]), np.uint16)  # "", CN, RU, US as uint16
    inbound = column(st.booleans(), np.uint8)
    lport, rport = (column(st.sampled_from([-1, 0, 22, 443, 4444, 65535, 70000]), np.int64) for _ in range(2))
    relevant = np.zeros(1 << 16, np.uint8)
    relevant[0x4e43] = 1
    suspicious = np.zeros((1 << 16) + 1, np.uint8)
    suspicious[[4444 + 1, 22 + 1, 0]] = 1  # entry 0 (unknown port) set too: it must be used for -1 and 70000

    rows, unknown = engine_impl.attention_rows(rsig, lsig, country, inbound, lport, rport, flags, 1, relevant, suspicious)
    sides = [rsig] + ([lsig] if with_local else [])
    expected_unknown = sorted(int(s[i]) for s in sides for i in range(n) if s[i] >= 0 and flags[s[i]] < 0)
    if expected_unknown:
        assert rows is None and sorted(unknown.tolist()) == expected_unknown
        return
    assert unknown is None
    expected = []
    for i in range(n):
        port = int(lport[i] if inbound[i] else rport[i])
        by_sig = any(s[i] >= 0 and flags[s[i]] & 1 for s in sides)
        if by_sig or relevant[country[i]] or suspicious[port + 1 if 0 <= port <= 65535 else 0]:
            expected.append(i)
    assert rows.tolist() == expected


def test_attention_rows_refuses_indices_and_tables_that_do_not_fit(engine_impl):
    one = lambda dtype, value=0: np.full(1, value, dtype)  # noqa: E731
    args = dict(country=one(np.uint16), inbound=one(np.uint8), lport=one(np.int64), rport=one(np.int64))
    tables = (np.zeros(1 << 16, np.uint8), np.zeros((1 << 16) + 1, np.uint8))
    with pytest.raises(ValueError, match="outside"):
        engine_impl.attention_rows(one(np.int32, 5), None, *args.values(), np.zeros(5, np.int8), 1, *tables)
    with pytest.raises(ValueError, match="length"):
        engine_impl.attention_rows(np.zeros(2, np.int32), None, *args.values(), np.zeros(5, np.int8), 1, *tables)
    with pytest.raises(ValueError, match="65536"):
        engine_impl.attention_rows(one(np.int32), None, *args.values(), np.zeros(5, np.int8), 1, tables[0][:10], tables[1])
