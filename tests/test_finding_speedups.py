"""The shortcuts of the fast finding path give exactly what the plain computation gives.

- JSON Lines built from cached pieces == json.dumps(finding_to_dict(...)), byte for byte.
- A signature's cached "constant cover" == every signature containing the address, most
  specific first, computed independently with ipaddress.
- Grouped evaluation of a batch == evaluating each row on its own with a fresh evaluator.
"""
from __future__ import annotations

import io
import ipaddress
import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connscan.engine import Engine
from connscan.findings import LEVELS, Finding, Reason
from connscan.output import FindingWriter, finding_to_dict
from connscan.rules import Evaluator, RuleConfig
from connscan.signatures import SignatureSet

# --------------------------------------------------------------------------- JSON Lines

# Text with everything JSON must escape (quotes, backslashes, control characters) and
# what it must not (non-ASCII, U+2028).
_TEXT = st.text(alphabet=st.sampled_from(['a', 'Z', '0', ' ', ':', '"', '\\', '\n', '\t', '\x00', '\x1f',
                                          '\x7f', 'é', '\u2028', '😀', '/']), max_size=12)
_OPTIONAL_TEXT = st.none() | _TEXT
_MOMENT = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1),
                       timezones=st.none() | st.just(timezone.utc) | st.just(timezone(timedelta(hours=-5, minutes=-30))))
_SCORE = st.integers(-100, 100) | st.floats(-100, 100, allow_nan=False)
_REASON = st.builds(Reason, st.sampled_from(["c2", "geoip", "port", "direct-internet", "allowlist"]), _SCORE,
                    _OPTIONAL_TEXT, _OPTIONAL_TEXT, _OPTIONAL_TEXT)
_PORT = st.none() | st.integers(0, 65535)


@st.composite
def findings(draw, reasons):
    return Finding(
        draw(st.none() | _MOMENT), draw(_TEXT), draw(st.sampled_from(LEVELS)), draw(_TEXT), draw(_SCORE),
        draw(_TEXT), draw(_TEXT), draw(_PORT), draw(_TEXT), draw(_PORT), draw(_TEXT), draw(_OPTIONAL_TEXT),
        draw(st.lists(st.sampled_from(reasons), max_size=3)), draw(_TEXT),
        draw(st.none() | st.integers(0, 2**22)), draw(_OPTIONAL_TEXT), draw(_OPTIONAL_TEXT), draw(_OPTIONAL_TEXT),
        draw(_OPTIONAL_TEXT), draw(_OPTIONAL_TEXT), draw(_OPTIONAL_TEXT), draw(st.none() | st.integers(1, 10**9)),
        draw(st.none() | _MOMENT), draw(st.none() | st.integers(1, 10**6)), draw(st.none() | _MOMENT),
        draw(st.none() | _MOMENT),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_jsonl_lines_equal_json_dumps(data):
    # A small pool of shared reasons, as the evaluator shares them, so the caches are hit.
    pool = data.draw(st.lists(_REASON, min_size=1, max_size=4))
    batch = data.draw(st.lists(findings(pool), min_size=1, max_size=8))
    batch += batch[:2]  # the same findings again: served from the caches
    buf = io.StringIO()
    writer = FindingWriter(buf, "jsonl")
    writer.write_all(batch[:3])
    for finding in batch[3:]:
        writer.write(finding)
    expected = [json.dumps(finding_to_dict(f), ensure_ascii=False, separators=(",", ":")) for f in batch]
    assert buf.getvalue().split("\n") == expected + [""]
    assert writer.written == len(batch)


def test_jsonl_keeps_number_types_apart():
    # 100 == 100.0, 0.0 == -0.0, 1 == True: equal keys, but JSON writes them differently.
    moment = datetime(2026, 1, 2, 3, 4, 5, 600, tzinfo=timezone.utc)
    base = dict(time=moment, hostname="h", level="Alert", message="m", proto="tcp", lip="10.0.0.1", lport=1,
                rip="192.0.2.1", rport=2, direction="outbound")
    batch = [Finding(score=100.0, **base), Finding(score=100, **base), Finding(score=100.0, pid=1, **base),
             Finding(score=100.0, pid=True, **base), Finding(score=100.0, start=moment, file="f", row=3, **base),
             Finding(score=0.0, **base), Finding(score=-0.0, **base)]
    buf = io.StringIO()
    FindingWriter(buf, "jsonl").write_all(batch)
    lines = buf.getvalue().splitlines()
    assert [line.split('"score":')[1].split(",")[0] for line in lines[:2]] == ["100.0", "100"]
    assert '"pid":1,' in lines[2] and '"pid":true,' in lines[3]
    assert lines[4].endswith('"file":"f","row":3,"start":"2026-01-02T03:04:05.000600Z"}')
    assert '"score":-0.0,' in lines[6]
    assert lines == [json.dumps(finding_to_dict(f), ensure_ascii=False, separators=(",", ":")) for f in batch]


# --------------------------------------------------------------------------- covers


def _random_signatures(draw) -> list[str]:
    """Nested and partly overlapping CIDRs and ranges inside 10.0.0.0/20."""
    out = []
    for _ in range(draw(st.integers(1, 25))):
        start = draw(st.integers(0, 4095))
        if draw(st.booleans()):
            prefix = draw(st.integers(20, 32))
            out.append(str(ipaddress.ip_network(f"10.0.{start >> 8}.{start & 255}/{prefix}", strict=False)))
        else:
            end = min(4095, start + draw(st.integers(0, 600)))
            out.append(f"{ipaddress.ip_address(0x0A000000 + start)}-{ipaddress.ip_address(0x0A000000 + end)}")
    return out


def _bounds(network: str) -> tuple[int, int]:
    if "-" in network:
        first, last = network.split("-")
        return int(ipaddress.ip_address(first)), int(ipaddress.ip_address(last))
    net = ipaddress.ip_network(network)
    return int(net.network_address), int(net.broadcast_address)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_constant_cover_is_every_containing_signature(data):
    networks = _random_signatures(data.draw)
    sigs = SignatureSet.from_networks(networks)
    evaluator = Evaluator(Engine(sigs, None), RuleConfig(), hostname="h")
    bounds = np.array([_bounds(s.network) for s in sigs])
    addresses = np.arange(0x0A000000, 0x0A001000)  # every address the signatures can hold
    inside = (bounds[:, 0][None, :] <= addresses[:, None]) & (addresses[:, None] <= bounds[:, 1][None, :])
    found = evaluator.engine.lookup([str(ipaddress.ip_address(int(a))) for a in addresses]).signature.tolist()
    size = (bounds[:, 1] - bounds[:, 0]).tolist()
    for n, best in enumerate(found):
        containing = np.flatnonzero(inside[n]).tolist()
        # most specific first: fewest addresses, then lowest index
        oracle = sorted(containing, key=lambda i: (size[i], i))
        assert best == (oracle[0] if oracle else -1)
        if best < 0:
            continue
        cover = evaluator._constant_cover(best)
        if cover is not None:
            assert list(cover) == oracle
        if all("-" not in net for net in networks):
            assert cover is not None  # CIDRs nest: their covers never vary


# --------------------------------------------------------------------------- grouping


def _port_signatures(tmp_path, entries) -> SignatureSet:
    path = tmp_path / "ports.csv"
    path.write_text("first_seen_utc,dst_ip,dst_port,c2_status,last_online,malware\n" + "".join(
        f"2024-01-01 10:00:00,{ip},{port},online,2024-04-01,M{n}\n" for n, (ip, port) in enumerate(entries)))
    return SignatureSet.load(path)


def _without_time(finding: Finding) -> tuple:
    data = finding_to_dict(finding)
    data.pop("time")
    return tuple(sorted((k, json.dumps(v)) for k, v in data.items()))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.data())
def test_grouped_batch_equals_rows_alone(tmp_path, data):
    networks = _random_signatures(data.draw)
    allow = SignatureSet.from_networks(data.draw(st.lists(st.sampled_from(networks), max_size=2)), kind="allowlist")
    ports = _port_signatures(tmp_path, [("10.0.1.7", 447), ("10.0.1.7", 8080), ("10.0.2.9", 443)])
    engine = Engine(SignatureSet.from_networks(networks) + allow + ports, None)
    config = RuleConfig(no_direct_internet=("10.0.0.0/8",), relevant_countries=())
    address = st.sampled_from(["10.0.1.7", "10.0.2.9"]) | st.integers(0x0A000000, 0x0A000FFF).map(
        lambda a: str(ipaddress.ip_address(a)))
    rows = data.draw(st.lists(st.fixed_dictionaries({
        "lip": address, "lport": st.sampled_from([447, 4444, 50000]), "rip": address | st.just("8.8.8.8"),
        "rport": st.sampled_from([443, 447, 8080, 9001]), "proto": st.just("tcp"),
        "direction": st.sampled_from(["outbound", "inbound", "unknown"]), "check_local": st.booleans(),
    }), min_size=1, max_size=30))
    rows += rows[:5]  # repeated rows: the same group
    table = pa.Table.from_pylist([dict(r, row=n) for n, r in enumerate(rows, 1)])
    together = Evaluator(engine, config, hostname="h").evaluate(table)
    alone = [f for n in range(len(rows)) for f in Evaluator(engine, config, hostname="h").evaluate(table.slice(n, 1))]
    assert [_without_time(f) for f in together] == [_without_time(f) for f in alone]
