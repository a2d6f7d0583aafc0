"""SignatureSet: every signature format, bad lines, and the real lists against ipaddress."""
from __future__ import annotations

import csv
import ipaddress
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connscan import SignatureError
from connscan.signatures import Signature, SignatureSet

DATA = Path(__file__).resolve().parent / "data" / "signatures"
MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def fixture(name: str) -> str:
    return str(DATA / name)


def expected_span(text: str) -> tuple[int, int, int]:
    """(family, first, last) of one entry, computed with ipaddress only (the oracle)."""
    if "-" in text:
        first, last = (ipaddress.ip_address(part.strip()) for part in text.split("-"))
        fam_a, a = _unmap(first)
        fam_b, b = _unmap(last)
        assert fam_a == fam_b
        return fam_a, a, b
    net = ipaddress.ip_network(text, strict=False)
    if net.version == 6 and net.prefixlen >= 96 and net.subnet_of(MAPPED):
        net = ipaddress.IPv4Network((int(net.network_address) - int(MAPPED.network_address),
                                     net.prefixlen - 96))
    return net.version, int(net.network_address), int(net.broadcast_address)


def _unmap(addr) -> tuple[int, int]:
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return 4, int(addr.ipv4_mapped)
    return addr.version, int(addr)


def span_of(sigs: SignatureSet, index: int) -> tuple[int, int, int]:
    """(family, first, last) of signature ``index`` as the matcher sees it (range columns)."""
    start, end, rows4 = sigs.v4_ranges()
    s_hi, s_lo, e_hi, e_lo, rows6 = sigs.v6_ranges()
    hit4, hit6 = np.flatnonzero(rows4 == index), np.flatnonzero(rows6 == index)
    assert len(hit4) + len(hit6) == 1, f"signature {index} must be in exactly one range row"
    if len(hit4):
        return 4, int(start[hit4[0]]), int(end[hit4[0]])
    j = hit6[0]
    return 6, int(s_hi[j]) << 64 | int(s_lo[j]), int(e_hi[j]) << 64 | int(e_lo[j])


# The ranges hosts use among themselves (RFC 1918, RFC 6598, loopback, link-local, multicast,
# reserved, ULA): written out here, from the IANA registries, not taken from the loader.
LOCAL_USE = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4", "::/128", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8")]


def covers_local_use(span: tuple[int, int, int]) -> bool:
    """Whether a (family, first, last) span holds a whole local-use range: a bogon entry."""
    family, first, last = span
    return any(net.version == family and first <= int(net.network_address) and int(net.broadcast_address) <= last
               for net in LOCAL_USE)


def is_bogon_warning(warning: str) -> bool:
    return "bogon entries, not C2 servers" in warning


# -- formats --------------------------------------------------------------------------------

def test_thor_c2_file_descriptions_scores_and_families():
    path = fixture("thor_c2.txt")
    sigs = SignatureSet.load(path)
    alpha, beta = "Operation Alpha https://example.org/alpha", "Operation Beta"
    expected = [
        ("192.0.2.10/32", 100, alpha, 9),
        ("198.51.100.0/24", 80, alpha, 10),
        ("203.0.113.5-203.0.113.9", 70, alpha, 13),  # "#" and "# ----" keep the description
        ("2001:db8:beef::/48", 100, beta, 16),
        ("192.0.2.77/32", 100, beta, 17),  # ::ffff:a.b.c.d is IPv4
        ("198.51.100.128/25", -20, beta, 18),  # mapped CIDR /121 -> IPv4 /25
        ("198.18.0.0/15", 100, "Operation Gamma", 21),
        ("2001:db8::1/128", 100, "Operation Gamma", 22),
        ("192.0.2.200/32", 90, "Last entry without newline", 24),  # no final newline
    ]
    assert [(s.network, s.score, s.description, s.source) for s in sigs] == [
        (net, score, desc, f"{path}:{line}") for net, score, desc, line in expected]
    assert all(s.kind == "c2" and s.port is None for s in sigs)
    assert [(d.network, d.score, d.description, d.source) for d in sigs.domains] == [
        ("alpha-c2.example.com", 100, alpha, f"{path}:8"),
        ("bad-actor.example.net", 50, beta, f"{path}:19"),
    ]
    assert sigs.warnings == []
    assert [(f.format, f.signatures, f.domains) for f in sigs.files] == [("ioc", 9, 2)]
    # iteration (column-wise) and indexing (one row) must agree
    assert [sigs[i] for i in range(len(sigs))] == list(sigs)
    assert sigs.networks() == [net for net, *_ in expected]
    assert [sigs.network(i) for i in range(len(sigs))] == sigs.networks()


def test_thor_ranges_in_range_tables():
    sigs = SignatureSet.load(fixture("thor_c2.txt"))
    assert span_of(sigs, 2) == (4, int(ipaddress.ip_address("203.0.113.5")),
                                int(ipaddress.ip_address("203.0.113.9")))
    net = ipaddress.ip_network("2001:db8:beef::/48")
    assert span_of(sigs, 3) == (6, int(net.network_address), int(net.broadcast_address))
    start, end, index = sigs.v4_ranges()
    assert (start.dtype, end.dtype, index.dtype) == (np.uint32, np.uint32, np.int32)
    assert list(index) == [0, 1, 2, 4, 5, 6, 8]
    assert [a.dtype for a in sigs.v6_ranges()] == [np.uint64] * 4 + [np.int32]
    assert list(sigs.v6_ranges()[4]) == [3, 7]


def test_range_arrays_are_cached_and_read_only():
    sigs = SignatureSet.load(fixture("thor_c2.txt"))
    first, again = sigs.v4_ranges(), sigs.v4_ranges()
    assert all(a is b for a, b in zip(first, again))
    assert all(a is b for a, b in zip(sigs.v6_ranges(), sigs.v6_ranges()))
    with pytest.raises(ValueError):
        first[0][0] = 1


def test_plain_list_with_bom_and_crlf():
    path = fixture("plain_bom_crlf.txt")
    sigs = SignatureSet.load(path)
    assert [(s.network, s.description, s.source) for s in sigs] == [
        ("192.0.2.1/32", "Plain list with BOM and CRLF", f"{path}:2"),
        ("192.0.2.2/31", "Plain list with BOM and CRLF", f"{path}:4"),
        ("2001:db8::/64", "Plain list with BOM and CRLF", f"{path}:5"),
    ]


def test_list_without_header_is_described_by_its_file_name():
    sigs = SignatureSet.load(fixture("no_header.txt"))
    assert [(s.network, s.description) for s in sigs] == [
        ("192.0.2.1/32", "no_header"), ("192.0.2.64/26", "no_header")]


def test_firehol_netset_named_by_header():
    path = fixture("firehol_test.netset")
    sigs = SignatureSet.load(path)
    assert [(s.network, s.description, s.source) for s in sigs] == [
        ("192.0.2.1/32", "test_level9", f"{path}:13"),
        ("192.0.2.128/25", "test_level9", f"{path}:14"),
        ("198.51.100.0/22", "test_level9", f"{path}:15"),
        ("203.0.113.7/32", "test_level9", f"{path}:16"),
    ]
    assert sigs.files[0].format == "firehol"


def test_ipsum_keeps_the_count_in_the_description():
    sigs = SignatureSet.load(fixture("ipsum_test.txt"))
    assert [(s.network, s.description) for s in sigs] == [
        ("192.0.2.1/32", "IPsum-like test feed: on 10 blocklists"),
        ("192.0.2.2/32", "IPsum-like test feed: on 3 blocklists"),
        ("198.51.100.9/32", "IPsum-like test feed: on 3 blocklists"),
    ]
    assert sigs.files[0].format == "ipsum"


def test_spamhaus_drop_v4_and_v6():
    sigs = SignatureSet.load([fixture("drop_test.txt"), fixture("dropv6_test.txt")])
    assert [(s.network, s.description) for s in sigs] == [
        ("192.0.2.0/24", "SBL000001"),
        ("198.51.100.0/22", "SBL000002"),
        # an entry without an SBL id is described by the list's name
        ("203.0.113.64/26", "Test DROP list (Spamhaus layout, written for connscan's tests)"),
        ("2001:db8:1::/48", "SBL000101"),
        ("2001:db8:2000::/36", "SBL000102"),
    ]
    assert [s.source.rsplit(":", 1)[1] for s in sigs] == ["3", "4", "5", "2", "3"]
    assert [f.format for f in sigs.files] == ["drop", "drop"]


def test_feodo_csv_ip_and_port():
    path = fixture("feodo_test.csv")
    sigs = SignatureSet.load(path)
    assert [(s.network, s.port, s.description, s.source) for s in sigs] == [
        ("192.0.2.50/32", 443, "Pikabot", f"{path}:6"),
        ("198.51.100.7/32", 8080, "QakBot", f"{path}:7"),
        ("2001:db8::50/128", None, "feodo_test", f"{path}:8"),  # empty port, empty malware
    ]


def test_csv_with_ip_and_score_columns():
    sigs = SignatureSet.load(fixture("csv_ip_score.csv"))
    assert [(s.network, s.score, s.description, s.port) for s in sigs] == [
        ("192.0.2.60/32", 40, "scanner", None),
        ("198.51.100.0/30", 100, "csv_ip_score", None),
    ]


def test_csv_without_address_column_is_an_error():
    with pytest.raises(SignatureError, match=r"csv_no_address\.csv:1: CSV header names no address"):
        SignatureSet.load(fixture("csv_no_address.csv"), strict=False)


def test_mixed_formats_in_one_load_keep_order_and_sources():
    paths = [fixture("ipsum_test.txt"), fixture("thor_c2.txt"), fixture("feodo_test.csv")]
    sigs = SignatureSet.load(paths)
    assert len(sigs) == 3 + 9 + 3
    assert [f.format for f in sigs.files] == ["ipsum", "ioc", "csv"]
    assert sigs[3].source == f"{paths[1]}:9"
    assert sigs[-1].source == f"{paths[2]}:8"


# -- host bits, bad lines, bad files ----------------------------------------------------------

def test_host_bits_are_normalised_with_a_warning_even_when_strict():
    path = fixture("host_bits.txt")
    sigs = SignatureSet.load(path, strict=True)
    assert [s.network for s in sigs] == ["192.0.2.0/24", "2001:db8::/32", "198.51.100.0/24"]
    assert sigs.warnings == [
        f"{path}:2: 192.0.2.77/24 has host bits set, using 192.0.2.0/24",
        f"{path}:3: 2001:db8::1/32 has host bits set, using 2001:db8::/32",
        f"{path}:4: ::ffff:198.51.100.9/120 has host bits set, using 198.51.100.0/24",
    ]


BAD_LINES = [  # (line in bad_lines.txt, words the reason must contain)
    (3, "invalid score '101'"),
    (4, "invalid score 'abc'"),
    (5, "invalid score ''"),
    (6, "starts after its end"),
    (7, "mixes IPv4 and IPv6"),
    (8, "invalid network '192.0.2.0/33'"),
    (9, "invalid network '2001:db8::/129'"),
    (10, "invalid address '999.1.2.3'"),
    (11, "not an IP address, network, range or domain: 'hello world'"),
    (12, "scoped IPv6 address"),
    (13, "not an IP address, network, range or domain: 'http://evil"),
    (14, "invalid address '01.2.3.4'"),
    (15, "empty entry"),
    (16, "invalid address ''"),
    (17, "invalid network '192.0.2.0/24/8'"),
]


def test_bad_lines_skipped_with_warnings_when_not_strict():
    path = fixture("bad_lines.txt")
    sigs = SignatureSet.load(path, strict=False)
    assert [s.network for s in sigs] == ["192.0.2.1/32", "2001:db8::2/128"]
    assert sigs.domains == []
    assert len(sigs.warnings) == len(BAD_LINES)
    for warning, (line, reason) in zip(sigs.warnings, BAD_LINES):
        assert warning.startswith(f"{path}:{line}: ")
        assert reason in warning
    assert sigs.files[0].skipped == len(BAD_LINES)


@pytest.mark.parametrize("line, reason", BAD_LINES, ids=[str(line) for line, _ in BAD_LINES])
def test_each_bad_line_is_a_strict_error_naming_file_and_line(tmp_path, line, reason):
    text = (DATA / "bad_lines.txt").read_text().split("\n")
    path = tmp_path / "one_bad.txt"
    path.write_text(f"192.0.2.1\n{text[line - 1]}\n192.0.2.2\n")
    with pytest.raises(SignatureError) as caught:
        SignatureSet.load(path)
    assert str(caught.value).startswith(f"{path}:2: ")
    assert reason in str(caught.value)


@pytest.mark.parametrize("name, line, reason, good", [
    ("ipsum_bad.txt", 3, "expected 'address<TAB>count'", "192.0.2.1/32"),
    ("csv_bad.csv", 3, "invalid port '70000'", "192.0.2.1/32"),
    ("drop_bad.txt", 3, "invalid network '192.0.2.300/24'", "192.0.2.0/24"),
    # FireHOL sets hold addresses only: a domain there is a bad line
    ("firehol_bad.netset", 5, "not an IP address, network or range: 'evil.example.com'",
     "192.0.2.1/32"),
])
def test_bad_lines_in_each_format(name, line, reason, good):
    path = fixture(name)
    with pytest.raises(SignatureError, match=f"^{path}:{line}: {reason}"):
        SignatureSet.load(path)
    sigs = SignatureSet.load(path, strict=False)
    assert sigs.warnings and sigs.warnings[0].startswith(f"{path}:{line}: {reason}")
    assert sigs[0].network == good


def test_csv_bad_lines_all_reported():
    path = fixture("csv_bad.csv")
    sigs = SignatureSet.load(path, strict=False)
    assert [s.network for s in sigs] == ["192.0.2.1/32"]
    assert [w.split(": ", 1)[0] for w in sigs.warnings] == [f"{path}:{n}" for n in (3, 4, 5)]
    assert "2 fields, the header has 3" in sigs.warnings[1]
    assert "invalid port 'http'" in sigs.warnings[2]


def test_ipsum_line_with_three_fields_is_bad():
    sigs = SignatureSet.load(fixture("ipsum_bad.txt"), strict=False)
    assert [s.network for s in sigs] == ["192.0.2.1/32"]
    assert [w.split(": ", 1)[0].rsplit(":", 1)[1] for w in sigs.warnings] == ["3", "4"]


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("name, message", [
    ("binary.bin", r"binary\.bin:2: binary file"),
    ("latin1.txt", r"latin1\.txt:1: not UTF-8 text"),
    ("does_not_exist.txt", r"does_not_exist\.txt: cannot read: No such file"),
])
def test_unreadable_files_are_errors_never_empty_sets(name, message, strict):
    with pytest.raises(SignatureError, match=message):
        SignatureSet.load(fixture(name), strict=strict)


def test_directory_is_an_error():
    with pytest.raises(SignatureError, match="cannot read"):
        SignatureSet.load(str(DATA))


@pytest.mark.parametrize("name", ["empty.txt", "comments_only.txt", "csv_no_rows.csv"])
def test_file_without_signatures_loads_empty_with_a_warning(name):
    path = fixture(name)
    sigs = SignatureSet.load(path)
    assert len(sigs) == 0 and sigs.domains == []
    assert sigs.warnings == [f"{path}: no signatures in this file"]
    assert all(len(column) == 0 for column in (*sigs.v4_ranges(), *sigs.v6_ranges()))


# -- options, from_networks, concatenation ----------------------------------------------------

def test_score_option_applies_to_entries_without_a_score():
    sigs = SignatureSet.load(fixture("thor_c2.txt"), score=60)
    assert [s.score for s in sigs] == [60, 80, 70, 60, 60, -20, 60, 60, 90]


def test_allowlist_kind_defaults_to_negative_score():
    sigs = SignatureSet.load(fixture("no_header.txt"), kind="allowlist")
    assert [(s.kind, s.score) for s in sigs] == [("allowlist", -100)] * 2


@pytest.mark.parametrize("kwargs", [{"kind": "block"}, {"score": 101}, {"score": -101},
                                    {"score": True}, {"score": "50"}])
def test_bad_options_are_rejected(kwargs):
    with pytest.raises(ValueError):
        SignatureSet.load(fixture("no_header.txt"), **kwargs)


def test_from_networks():
    sigs = SignatureSet.from_networks(
        ["10.0.0.0/8", " 192.168.1.5-192.168.1.9 ", "fd00::/8", "::ffff:172.16.0.0/108",
         ipaddress.ip_network("100.64.0.0/10")],
        description="home", kind="allowlist", score=-50, source="--home-net")
    assert [(s.network, s.description, s.kind, s.score, s.source) for s in sigs] == [
        ("10.0.0.0/8", "home", "allowlist", -50, "--home-net:1"),
        ("192.168.1.5-192.168.1.9", "home", "allowlist", -50, "--home-net:2"),
        ("fd00::/8", "home", "allowlist", -50, "--home-net:3"),
        ("172.16.0.0/12", "home", "allowlist", -50, "--home-net:4"),
        ("100.64.0.0/10", "home", "allowlist", -50, "--home-net:5"),
    ]
    assert SignatureSet.from_networks(["192.0.2.0/24"])[0] == Signature(
        "192.0.2.0/24", 100, "", "<config>:1", None, "c2")


def test_from_networks_rejects_bad_entries():
    with pytest.raises(SignatureError, match="^<config>:2: invalid network '10.0.0.0/40'"):
        SignatureSet.from_networks(["10.0.0.0/8", "10.0.0.0/40"])
    with pytest.raises(SignatureError, match="^<config>:1: not an IP address, network or range"):
        SignatureSet.from_networks(["example.com"])


def test_concatenation_shifts_indices_of_the_right_operand():
    c2 = SignatureSet.load(fixture("thor_c2.txt"))
    allow = SignatureSet.from_networks(["2001:db8::/32", "192.0.2.0/24"], kind="allowlist")
    both = c2 + allow
    assert len(both) == len(c2) + len(allow) == 11
    assert list(both) == list(c2) + list(allow)
    assert both.domains == c2.domains and both.warnings == c2.warnings + allow.warnings
    v4_start, _, v4_index = both.v4_ranges()
    assert list(v4_index) == [0, 1, 2, 4, 5, 6, 8, 10]
    assert list(both.v6_ranges()[4]) == [3, 7, 9]
    assert int(v4_start[-1]) == int(ipaddress.ip_address("192.0.2.0"))
    assert span_of(both, 9) == span_of(allow, 0)
    assert [both[i].kind for i in (8, 9, 10)] == ["c2", "allowlist", "allowlist"]
    assert both[-1] == allow[-1] and both[len(c2) - 1] == c2[-1]
    with pytest.raises(IndexError):
        both[11]


def test_pickle_round_trip_for_workers():
    sigs = SignatureSet.load([fixture("thor_c2.txt"), fixture("host_bits.txt")])
    again = pickle.loads(pickle.dumps(sigs))
    assert list(again) == list(sigs) and again.domains == sigs.domains
    assert again.warnings == sigs.warnings and again.files == sigs.files
    for ours, theirs in zip((*sigs.v4_ranges(), *sigs.v6_ranges()),
                            (*again.v4_ranges(), *again.v6_ranges())):
        assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)


def test_indexing_negative_and_slices():
    sigs = SignatureSet.load(fixture("firehol_test.netset"))
    assert sigs[-1] == sigs[3]
    assert sigs[1:3] == [sigs[1], sigs[2]]
    with pytest.raises(IndexError):
        sigs[-5]


# -- real lists vs independent counts ---------------------------------------------------------

def _entries(path: Path, comment: str = "#", split: str | None = None):
    """[(line, entry, rest)] of every data line, by plain string processing."""
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        line = line.strip()
        if line and not line.startswith(comment):
            entry, _, rest = line.partition(split) if split else (line, "", "")
            out.append((number, entry.strip(), rest.strip()))
    return out


def _check_sample(sigs: SignatureSet, entries, path: Path, seed: int, k: int = 300) -> None:
    rng = random.Random(seed)
    for i in rng.sample(range(len(entries)), min(k, len(entries))):
        line, entry, _ = entries[i]
        assert sigs[i].network == str(ipaddress.ip_network(entry, strict=False))
        assert sigs[i].source == f"{path}:{line}"
        assert span_of(sigs, i) == expected_span(entry)


def test_real_signature_base_c2_iocs(shared_data):
    path = shared_data / "c2/signature-base/c2-iocs.txt"
    ips, domains = [], []
    for line, entry, score in _entries(path, split=";"):
        try:
            ipaddress.ip_network(entry)
            ips.append((line, entry, int(score) if score else 100))
        except ValueError:
            domains.append((line, entry.lower(), int(score) if score else 100))
    assert len(ips) + len(domains) == 1844 and len(ips) == 135
    sigs = SignatureSet.load(path)
    assert [(s.network, s.score, s.source) for s in sigs] == [
        (str(ipaddress.ip_network(e)), score, f"{path}:{line}") for line, e, score in ips]
    assert [(d.network, d.score, d.source) for d in sigs.domains] == [
        (e, score, f"{path}:{line}") for line, e, score in domains]
    assert sigs.warnings == []


def test_real_ipsum(shared_data):
    path = shared_data / "c2/ipsum/ipsum.txt"
    entries = _entries(path, split="\t")
    assert len(entries) == 120_430
    sigs = SignatureSet.load(path)
    assert len(sigs) == len(entries) and len(sigs.v4_ranges()[0]) == len(entries)
    _check_sample(sigs, entries, path, seed=1)
    for i in random.Random(2).sample(range(len(entries)), 100):
        assert sigs[i].description.endswith(f": on {int(entries[i][2])} blocklists")


def test_real_spamhaus_drop(shared_data):
    for name, count in [("drop-wsock-trace.txt", 1385), ("dropv6-2025-01-15.txt", 78)]:
        path = shared_data / "c2/spamhaus" / name
        entries = _entries(path, comment=";", split=";")
        assert len(entries) == count
        sigs = SignatureSet.load(path)
        assert [(s.network, s.description) for s in sigs] == [
            (str(ipaddress.ip_network(e)), sbl) for _, e, sbl in entries]
        assert [span_of(sigs, i) for i in range(0, count, 7)] == [
            expected_span(entries[i][1]) for i in range(0, count, 7)]


def test_real_c2_tracker_all(shared_data):
    path = shared_data / "c2/c2-tracker/2023-12-07/data/all.txt"
    entries = _entries(path)
    v6 = sum(ipaddress.ip_address(e).version == 6 for _, e, _ in entries)
    sigs = SignatureSet.load(path)
    assert len(sigs) == len(entries) == 15_362
    assert len(sigs.v6_ranges()[0]) == v6 and len(sigs.v4_ranges()[0]) == len(entries) - v6
    _check_sample(sigs, entries, path, seed=3)
    v6_rows = [i for i, (_, e, _) in enumerate(entries) if ":" in e]
    assert list(sigs.v6_ranges()[4]) == v6_rows


def test_real_firehol_level4(shared_data):
    path = shared_data / "c2/firehol/firehol_level4.netset"
    entries = _entries(path)
    sigs = SignatureSet.load(path)
    assert len(sigs) == len(entries) == 131_420
    cidrs = [e for _, e, _ in entries if "/" in e]
    assert len(cidrs) == 7_242
    assert sum(not n.endswith("/32") for n in sigs.networks()) == sum(
        ipaddress.ip_network(e).prefixlen < 32 for e in cidrs)
    assert {s.description for s in sigs[:50]} == {"firehol_level4"}
    _check_sample(sigs, entries, path, seed=4)


def test_real_firehol_level1_bogons_are_left_out_unless_kept(shared_data):
    """firehol_level1 lists the private ranges (as bogons): matched, they would flag every
    internal host. Left out with a warning naming them; kept on request."""
    path = shared_data / "c2/firehol/firehol_level1.netset"
    entries = [(n, l.strip()) for n, l in enumerate(path.read_text().splitlines(), 1) if l.strip() and not l.startswith("#")]
    bogons = [(n, e) for n, e in entries if covers_local_use(expected_span(e))]
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8"} <= {e for _, e in bogons}
    sigs = SignatureSet.load(path)
    networks = {sigs.network(i) for i in range(len(sigs))}
    assert len(sigs) == len(entries) - len(bogons) and not networks & {e for _, e in bogons}
    assert "192.0.2.0/24" in networks  # documentation ranges carry no traffic: kept
    [warning] = [w for w in sigs.warnings if is_bogon_warning(w)]
    assert f"{len(bogons)} entries" in warning and f"line {bogons[1][0]}: {bogons[1][1]}" in warning
    assert sigs.files[0].special == len(bogons)
    kept = SignatureSet.load(path, keep_special_ranges=True)
    assert len(kept) == len(entries) and {"10.0.0.0/8", "192.168.0.0/16"} <= {kept.network(i) for i in range(len(kept))}
    assert not any(is_bogon_warning(w) for w in kept.warnings)
    allow = SignatureSet.load(path, kind="allowlist")  # an allowlist of private ranges is meant
    assert len(allow) == len(entries)


def test_real_feodo_csv(shared_data):
    path = shared_data / "c2/abusech-feodo/ipblocklist-2024-04-04.csv"
    rows = list(csv.DictReader(l for l in path.read_text().splitlines() if not l.startswith("#")))
    sigs = SignatureSet.load(path)
    assert [(s.network, s.port, s.description) for s in sigs] == [
        (f"{r['dst_ip']}/32", int(r["dst_port"]), r["malware"]) for r in rows]
    assert len(sigs) == 28


# -- random round trip against ipaddress --------------------------------------------------------

def _v4_entry():
    return st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)).map(
        lambda t: f"{ipaddress.IPv4Address(t[0])}/{t[1]}")


def _v6_entry():
    return st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128)).map(
        lambda t: f"{ipaddress.IPv6Address(t[0])}/{t[1]}")


def _mapped_entry():
    return st.tuples(st.integers(0, 2**32 - 1), st.integers(96, 128)).map(
        lambda t: f"::ffff:{ipaddress.IPv4Address(t[0])}/{t[1]}")


def _range(bits: int, text):
    return st.tuples(st.integers(0, 2**bits - 1), st.integers(0, 2**bits - 1)).map(
        lambda t: f"{text(min(t))}-{text(max(t))}")


def _host(bits: int, text):
    return st.integers(0, 2**bits - 1).map(lambda v: str(text(v)))


ENTRIES = st.one_of(
    _v4_entry(), _v6_entry(), _mapped_entry(),
    _range(32, ipaddress.IPv4Address), _range(128, ipaddress.IPv6Address),
    _host(32, ipaddress.IPv4Address), _host(128, ipaddress.IPv6Address),
    _host(32, lambda v: f"::ffff:{ipaddress.IPv4Address(v)}"),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(ENTRIES, min_size=1, max_size=40), st.sampled_from(["\n", "\r\n"]))
def test_round_trip_random_entries_against_ipaddress(tmp_path_factory, entries, newline):
    path = tmp_path_factory.mktemp("rt") / "random.txt"
    path.write_bytes(newline.join(entries).encode())
    sigs = SignatureSet.load(path)
    kept = [entry for entry in entries if not covers_local_use(expected_span(entry))]  # bogons left out
    assert len(sigs) == len(kept)
    host_bits = 0
    for entry in entries:
        if "/" in entry:
            net = ipaddress.ip_network(entry, strict=False)
            host_bits += int(ipaddress.ip_interface(entry).ip) != int(net.network_address)
    for i, entry in enumerate(kept):
        assert span_of(sigs, i) == expected_span(entry), entry
        net = ipaddress.ip_network(entry, strict=False) if "/" in entry else None
        if net is not None and expected_span(entry)[0] == net.version:
            assert sigs[i].network == str(net)
    bogon_warnings = [w for w in sigs.warnings if is_bogon_warning(w)]
    assert len(bogon_warnings) == (len(kept) < len(entries))
    assert len(sigs.warnings) - len(bogon_warnings) == host_bits
    assert all(" has host bits set, using " in w for w in sigs.warnings if not is_bogon_warning(w))


def _oracle(token: str) -> tuple[int, int, int] | None:
    """ipaddress's reading of one entry, or None where an entry must be rejected."""
    if "%" in token:  # scoped addresses are host-local: never a signature
        return None
    try:
        if "-" in token:
            first, last = (ipaddress.ip_address(part.strip()) for part in token.split("-", 1))
            (fam_a, a), (fam_b, b) = _unmap(first), _unmap(last)
            return (fam_a, a, b) if fam_a == fam_b and a <= b else None
        return expected_span(token)
    except ValueError:
        return None


FUZZ_LINES = st.one_of(ENTRIES, st.text(alphabet="0123456789abcdef.:/-% ", max_size=24))


@settings(max_examples=150, deadline=None)
@given(st.lists(FUZZ_LINES, min_size=1, max_size=30))
def test_fuzz_every_line_is_a_signature_or_a_warning(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("fuzz") / "fuzz.netset"  # FireHOL: addresses only
    path.write_text("\n".join(lines))
    sigs = SignatureSet.load(path, strict=False)
    loaded = {int(s.source.rsplit(":", 1)[1]): i for i, s in enumerate(sigs)}
    line_warnings = [w for w in sigs.warnings if w != f"{path}: no signatures in this file" and not is_bogon_warning(w)]
    rejected = {int(w.split(": ", 1)[0].rsplit(":", 1)[1])
                for w in line_warnings if "has host bits set" not in w}
    bogons = 0
    for number, line in enumerate(lines, 1):
        token = line.strip()
        if not token:
            continue
        expected = _oracle(token)
        if expected is None:
            assert number in rejected and number not in loaded, token
        elif covers_local_use(expected):
            assert number not in loaded and number not in rejected, token
            bogons += 1
        else:
            assert number in loaded and number not in rejected, token
            assert span_of(sigs, loaded[number]) == expected, token
    assert len(loaded) + len(rejected) + bogons == sum(bool(line.strip()) for line in lines)
    assert sigs.files[0].special == bogons


def test_bounds_of_networks_and_ranges():
    texts = ["10.0.0.0/8", "192.0.2.7", "198.51.100.5-198.51.100.9", "2001:db8::/32", "2001:db8::1-2001:db8::ff", "::/0"]
    signatures = SignatureSet.from_networks(texts)
    for index, text in enumerate(texts):
        if "-" in text:
            first, last = (ipaddress.ip_address(end) for end in text.split("-"))
        else:
            network = ipaddress.ip_network(text)
            first, last = network.network_address, network.broadcast_address
        assert signatures.bounds(index) == (first.version, int(first), int(last), "-" in text)
