"""`connscan scan` end to end on real loopback sockets; exit codes, config precedence, help."""
from __future__ import annotations

import ipaddress
import itertools
import json
import os
import random
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import maxminddb
import psutil
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connscan import __version__, cli, live
from connscan.config import load_config_file, resolve_settings

# Subprocesses see the same connscan as this process (installed, or src/ in development).
CHILD_PATH = os.pathsep.join(sys.path)
LOOPBACK_NET = "127.77.0.0/16"  # the tests' own loopback addresses


# --------------------------------------------------------------------------- a tiny MMDB writer


def _ctrl(kind: int, size: int) -> bytes:
    assert size < 285
    extra = b"" if size < 29 else bytes([size - 29])  # sizes 29..284 take one more byte
    low = min(size, 29)
    if kind <= 7:
        return bytes([(kind << 5) | low]) + extra
    return bytes([low, kind - 7]) + extra  # extended type


def _encode(value) -> bytes:
    if isinstance(value, str):
        raw = value.encode()
        return _ctrl(2, len(raw)) + raw
    if isinstance(value, dict):
        return _ctrl(7, len(value)) + b"".join(_encode(k) + _encode(v) for k, v in value.items())
    if isinstance(value, list):
        return _ctrl(11, len(value)) + b"".join(_encode(v) for v in value)
    kind, width = value  # (type, int) tuples: ("u16", n), ("u32", n), ("u64", n)
    raw = width.to_bytes((width.bit_length() + 7) // 8, "big")
    return _ctrl({"u16": 5, "u32": 6, "u64": 9}[kind], len(raw)) + raw


def write_mmdb(path: Path, networks: list[tuple[str, str]]) -> None:
    """An IPv4 MaxMind DB (record size 24) mapping each CIDR to {"country_code": CC};
    list broader networks before the networks nested in them."""
    data, offsets = b"", {}
    for cc in sorted({cc for _, cc in networks}):
        offsets[cc] = len(data)
        data += _encode({"country_code": cc})
    root: list = [None, None]
    for cidr, cc in networks:
        net = ipaddress.ip_network(cidr)
        bits, length = int(net.network_address), net.prefixlen
        node = root
        for i in range(length - 1):
            bit = (bits >> (31 - i)) & 1
            if not isinstance(node[bit], list):
                node[bit] = [node[bit], node[bit]]  # a broader network's value goes down both ways
            node = node[bit]
        node[(bits >> (32 - length)) & 1] = cc
    nodes: list[list] = []

    def number(node):
        nodes.append(node)
        for child in node:
            if isinstance(child, list):
                number(child)

    number(root)
    index = {id(node): i for i, node in enumerate(nodes)}
    count = len(nodes)

    def record(child) -> int:
        if isinstance(child, list):
            return index[id(child)]
        return count if child is None else count + 16 + offsets[child]

    tree = b"".join(record(a).to_bytes(3, "big") + record(b).to_bytes(3, "big") for a, b in nodes)
    meta = {"node_count": ("u32", count), "record_size": ("u16", 24), "ip_version": ("u16", 4),
            "database_type": "connscan-test", "languages": ["en"], "binary_format_major_version": ("u16", 2),
            "binary_format_minor_version": ("u16", 0), "build_epoch": ("u64", 1_700_000_000),
            "description": {"en": "connscan test country database"}}
    path.write_bytes(tree + bytes(16) + data + b"\xab\xcd\xefMaxMind.com" + _encode(meta))


@pytest.fixture
def loopback_mmdb(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("CONNSCAN_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # GeoIP and engine caches of this test only
    path = tmp_path / "loopback-kp.mmdb"
    # 127.0.0.0/8 is located (DE) and the tests' own 127.77.0.0/16 is in a relevant country
    # (KP): other loopback traffic on the host (benchmarks, services) stays out of the findings.
    write_mmdb(path, [("127.0.0.0/8", "DE"), (LOOPBACK_NET, "KP"), ("192.0.2.0/24", "NL")])
    with maxminddb.open_database(str(path)) as reader:  # the fixture is what the official reader reads
        assert reader.get("127.1.2.3") == {"country_code": "DE"}
        assert reader.get("127.77.5.1") == {"country_code": "KP"}
        assert reader.get("127.78.0.1") == {"country_code": "DE"}
        assert reader.get("192.0.2.200") == {"country_code": "NL"}
        assert reader.get("8.8.8.8") is None
    return path


# --------------------------------------------------------------------------- real connections


_SLOTS = itertools.count(random.randrange(65536))


class Loopback:
    """A listener on a random 127/8 address and N client sockets from another one."""

    def __init__(self, count: int = 4):
        # Fresh addresses per instance: sockets of earlier tests linger in TIME_WAIT.
        slot = next(_SLOTS) % 65536
        self.server_ip = f"127.77.{slot >> 8}.{slot & 255}"  # inside LOOPBACK_NET
        self.client_ip = f"127.78.{slot >> 8}.{slot & 255}"
        self.listener = socket.socket()
        self.listener.bind((self.server_ip, 0))
        self.listener.listen(count)
        self.port = self.listener.getsockname()[1]
        self.clients, self.accepted = [], []
        for _ in range(count):
            client = socket.socket()
            client.bind((self.client_ip, 0))
            client.connect((self.server_ip, self.port))
            self.clients.append(client)
            self.accepted.append(self.listener.accept()[0])

    def client_tuples(self) -> set:
        return {(self.client_ip, c.getsockname()[1], self.server_ip, self.port) for c in self.clients}

    def server_tuples(self) -> set:
        return {(self.server_ip, self.port, self.client_ip, a.getpeername()[1]) for a in self.accepted}

    def close(self):
        for sock in self.clients + self.accepted + [self.listener]:
            sock.close()


@pytest.fixture
def loopback():
    conns = Loopback()
    yield conns
    conns.close()


def _run(argv, capsys):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _ours(findings, conns):
    return [f for f in findings if conns.server_ip in (f.get("lip"), f.get("rip"))]


def _tuple(f):
    return (f["lip"], f["lport"], f["rip"], f["rport"])


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


ME = psutil.Process()


def test_finds_exactly_our_connections_with_pid_and_command(tmp_path, loopback, loopback_mmdb, capsys):
    iocs = tmp_path / "c2.txt"
    iocs.write_text(f"# test listener\n{loopback.server_ip}\n")
    out, stats = tmp_path / "out.jsonl", tmp_path / "stats.json"
    code, _, err = _run(["scan", "--include-loopback", "--iocs", str(iocs), "--geoip", str(loopback_mmdb),
                         "--relevant-countries", "", "--format", "jsonl", "--output", str(out),
                         "--stats", str(stats)], capsys)
    findings = _jsonl(out)
    c2 = [f for f in findings if any(r["kind"] == "c2" for r in f["reasons"])]
    assert {_tuple(f) for f in c2} == loopback.client_tuples()
    assert len(c2) == len(loopback.clients)
    for f in c2:
        assert f["pid"] == os.getpid()
        assert f["name"] == ME.name()
        assert f["command"] == " ".join(ME.cmdline())
        assert f["direction"] == "outbound" and f["proto"] == "tcp" and f["status"] == "ESTABLISHED"
        assert (f["level"], f["score"], f["message"]) == ("Alert", 100.0, "Connection to known C2 server")
        assert f["reasons"] == [{"kind": "c2", "score": 100.0, "signature": f"{loopback.server_ip}/32",
                                 "description": "test listener", "source": f"{iocs}:2"}]
    assert code == 1  # Alert >= the default fail level
    data = json.loads(stats.read_text())
    assert data["findings"]["Alert"] == len(findings)
    assert data["records_scanned"] >= 2 * len(loopback.clients)
    assert data["records_read"] == data["records_scanned"] + sum(data["records_skipped"].values())
    assert "read," in err.splitlines()[-1]


def test_relevant_country_from_small_geoip_database(tmp_path, loopback, loopback_mmdb, capsys):
    out = tmp_path / "out.jsonl"
    code, _, _ = _run(["scan", "--include-loopback", "--geoip", str(loopback_mmdb), "--relevant-countries", "KP",
                       "--format", "jsonl", "--output", str(out)], capsys)
    ours = _ours(_jsonl(out), loopback)
    # Outbound (client side) scores 40: Notice; inbound (server side, a visitor) only 25: no finding.
    assert {_tuple(f) for f in ours} == loopback.client_tuples()
    for f in ours:
        assert (f["level"], f["message"], f["country"], f["score"]) == (
            "Notice", "Relevant remote region GEO IP lookup", "KP", 40.0)
        assert f["pid"] == os.getpid()
    assert code == 0  # Notice is below the default fail level (alert)
    code, _, _ = _run(["scan", "--include-loopback", "--geoip", str(loopback_mmdb), "--relevant-countries", "KP",
                       "--fail-level", "notice", "--output", str(out)], capsys)
    assert code == 1


def test_text_output_and_tag(tmp_path, loopback, loopback_mmdb, capsys):
    iocs = tmp_path / "c2.txt"
    iocs.write_text(f"{loopback.server_ip};70\n")
    code, stdout, _ = _run(["scan", "--include-loopback", "--iocs", str(iocs), "--geoip", str(loopback_mmdb),
                            "--relevant-countries", "", "--tag", "THOR"], capsys)
    lines = [line for line in stdout.splitlines() if f"RIP: {loopback.server_ip} " in line]
    assert len(lines) == len(loopback.clients)
    for line in lines:
        assert f" THOR: Warning: MODULE: ProcessConnections MESSAGE: Connection to known C2 server PID: {os.getpid()} " in line
        assert " SCORE: 70 REASON_1: Known C2 server address SUBSCORE_1: 70 SIGNATURE_1: " in line
    assert code == 0


def test_inbound_and_outbound_both_seen(tmp_path, loopback, loopback_mmdb, capsys):
    iocs = tmp_path / "c2.txt"
    iocs.write_text(f"{loopback.server_ip}\n{loopback.client_ip}\n")  # both ends of our connections
    out = tmp_path / "out.jsonl"
    code, _, _ = _run(["scan", "--include-loopback", "--iocs", str(iocs), "--geoip", str(loopback_mmdb),
                       "--relevant-countries", "", "--format", "jsonl", "--output", str(out)], capsys)
    ours = {_tuple(f): f for f in _ours(_jsonl(out), loopback)}
    assert set(ours) == loopback.client_tuples() | loopback.server_tuples()
    assert {key: f["direction"] for key, f in ours.items()} == {
        **{key: "outbound" for key in loopback.client_tuples()}, **{key: "inbound" for key in loopback.server_tuples()}}
    assert all(f["pid"] == os.getpid() and f["level"] == "Alert" for f in ours.values())
    assert code == 1


def test_all_connections_reports_unflagged_ones_as_info(tmp_path, loopback_mmdb, monkeypatch, capsys):
    rows = {"lip": ["10.0.0.1"], "lport": [50000], "rip": ["192.0.2.7"], "rport": [443], "proto": ["tcp"],
            "direction": ["outbound"], "pid": [42], "name": ["curl"], "command": ["curl https://example.org"]}
    snapshot = live.LiveSnapshot(batch=pa.table(rows), records_read=1)
    monkeypatch.setattr(live, "collect", lambda include_loopback=False: snapshot)
    out = tmp_path / "out.jsonl"
    code, _, _ = _run(["scan", "--geoip", str(loopback_mmdb), "--all-connections", "--format", "jsonl",
                       "--output", str(out)], capsys)
    [finding] = _jsonl(out)
    assert (finding["level"], finding["message"], finding["country"], finding["pid"]) == (
        "Info", "Established connection", "NL", 42)
    assert code == 0


def test_config_file_and_flag_precedence(tmp_path, loopback, loopback_mmdb, capsys):
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "c2.txt").write_text(f"{loopback.server_ip};50\n")
    config = tmp_path / "connscan.toml"
    config.write_text(
        'iocs = ["lists/c2.txt"]\n'  # relative to the config file
        f'geoip = "{loopback_mmdb}"\n'
        'relevant_countries = []\n'
        'format = "jsonl"\n'
        'tag = "FROMFILE"\n'
        'fail_level = "notice"\n'
        'include_loopback = true\n'
    )
    out = tmp_path / "out.txt"
    code, _, _ = _run(["scan", "--config", str(config), "--output", str(out)], capsys)
    ours = _ours(_jsonl(out), loopback)  # format from the file
    assert {_tuple(f) for f in ours} == loopback.client_tuples()
    assert code == 1  # fail_level notice from the file
    code, _, _ = _run(["scan", "--config", str(config), "--output", str(out), "--format", "text",
                       "--tag", "FLAG", "--fail-level", "alert"], capsys)
    lines = [line for line in out.read_text().splitlines() if loopback.server_ip in line]
    assert len(lines) == len(loopback.clients) and all(" FLAG: Notice: " in line for line in lines)
    assert code == 0


@pytest.mark.parametrize(("content", "message"), [
    ("bogus = 1\n", "unknown setting"),
    ("notice = \"high\"\n", "notice must be a number"),
    ("iocs = [1]\n", "iocs must be a list of strings"),
    ("this is not toml\n", "invalid TOML"),
    ("notice = 70\nwarning = 60\n", "notice <= warning"),
    ("relevant_countries = [\"Korea\"]\n", "ISO 3166"),
    ("[suspicious_ports]\n\"port\" = 50\n", "not a port number"),
    ("fail_level = \"panic\"\n", "fail_level"),
])
def test_bad_config_exits_2_naming_the_problem(tmp_path, capsys, content, message):
    config = tmp_path / "bad.toml"
    config.write_text(content)
    code, _, err = _run(["scan", "--config", str(config)], capsys)
    assert code == 2
    assert message in err
    if "must be" in message or "unknown" in message or "TOML" in message:
        assert str(config) in err


def test_usage_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["scan", "--no-such-option"])
    assert exc.value.code == 2
    missing = tmp_path / "missing.txt"
    code, _, err = _run(["scan", "--iocs", str(missing)], capsys)
    assert code == 2 and str(missing) in err
    code, _, err = _run(["scan", "--notice", "90", "--config", str(tmp_path / "none.toml")], capsys)
    assert code == 2 and "none.toml" in err
    code, _, err = _run(["scan", "--notice", "90"], capsys)
    assert code == 2 and "notice" in err
    code, _, err = _run(["scan", "--geoip", str(tmp_path / "no.mmdb")], capsys)
    assert code == 2 and "no.mmdb" in err
    garbage = tmp_path / "garbage.mmdb"
    garbage.write_bytes(b"not a MaxMind DB" * 100)
    code, _, err = _run(["scan", "--geoip", str(garbage)], capsys)
    assert code == 2 and "garbage.mmdb" in err
    code, _, _ = _run([], capsys)
    assert code == 2


def test_nothing_scanned_exits_3(tmp_path, loopback_mmdb, monkeypatch, capsys):
    empty = {name: pa.array([], type) for name, type in (
        ("lip", pa.string()), ("lport", pa.int32()), ("rip", pa.string()), ("rport", pa.int32()),
        ("proto", pa.string()), ("direction", pa.string()))}
    snapshot = live.LiveSnapshot(batch=pa.table(empty), records_read=3, skipped=Counter({"loopback": 3}))
    monkeypatch.setattr(live, "collect", lambda include_loopback=False: snapshot)
    stats = tmp_path / "stats.json"
    code, stdout, err = _run(["scan", "--geoip", str(loopback_mmdb), "--stats", str(stats)], capsys)
    assert code == 3 and stdout == ""
    assert "nothing was scanned" in err
    assert json.loads(stats.read_text())["records_skipped"] == {"loopback": 3}


def test_version_and_help(capsys):
    env = {**os.environ, "PYTHONPATH": CHILD_PATH}
    run = subprocess.run([sys.executable, "-m", "connscan", "--version"], capture_output=True, text=True, env=env)
    assert run.returncode == 0 and run.stdout.strip() == f"connscan {__version__}"
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for word in ("scan", "flows", "exit codes", "nothing was scanned"):
        assert word in out
    with pytest.raises(SystemExit) as exc:
        cli.main(["scan", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--iocs", "--geoip", "--relevant-countries", "--allowlist", "--allow-process",
                   "--no-direct-internet", "--format", "--output", "--stats", "--config", "--notice", "--warning",
                   "--alert", "--fail-level", "--max-reasons", "--tag", "--all-connections", "--include-loopback",
                   "--suspicious-ports"):
        assert option in out


def test_defaults_run_and_say_so(tmp_path):
    """No options at all: embedded GeoIP, no C2 list, and stderr says so (a real scan)."""
    env = {key: value for key, value in os.environ.items() if key != "CONNSCAN_CACHE_DIR"}
    env.update(PYTHONPATH=CHILD_PATH, XDG_CACHE_HOME=str(tmp_path))
    run = subprocess.run([sys.executable, "-m", "connscan", "scan"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert run.returncode in (0, 1, 3)
    assert "no C2 signature list configured" in run.stderr
    assert "embedded DB-IP Country Lite" in run.stderr
    assert " scanned, " in run.stderr.splitlines()[-1] or "nothing was scanned" in run.stderr


# --------------------------------------------------------------------------- settings


def test_example_config_file_loads():
    """The README's example config (tests/data/rules/connscan.example.toml) is valid."""
    path = Path(__file__).parent / "data" / "rules" / "connscan.example.toml"
    settings = resolve_settings({}, load_config_file(path), str(path))
    base = path.resolve().parent
    assert settings.iocs == ["/etc/connscan/c2-iocs.txt", str(base / "feeds" / "feodo.csv")]
    assert settings.allowlist == [str(base / "allowlist.txt")]
    rules = settings.rules
    assert rules.suspicious_ports[4444] == 70 and rules.suspicious_ports[8081] == 40
    assert 9001 not in rules.suspicious_ports and 50050 in rules.suspicious_ports
    assert rules.no_direct_internet == ("10.20.0.0/16",)
    assert rules.allow_processes == ("MsMpEng.exe", "/usr/lib/apt/methods/http")
    assert (settings.format, settings.tag, settings.fail_level) == ("jsonl", "THOR", "Warning")
    assert settings.flows == {"home_net": ["10.0.0.0/8", "192.168.0.0/16"], "aggregate": True}


def test_flags_build_the_rules(tmp_path, loopback_mmdb):
    allow = tmp_path / "allow.txt"
    allow.write_text("10.20.0.0/16\n10.21.0.0/16;-80\n")
    args = cli.build_parser().parse_args([
        "scan", "--geoip", str(loopback_mmdb), "--allowlist", str(allow), "--allow-process", "a.exe",
        "--allow-process", "b", "--no-direct-internet", "10.50.0.0/16", "--relevant-countries", "kp, ir",
        "--suspicious-ports", "4444=90,1234", "--notice", "30", "--warning", "50", "--alert", "70",
        "--max-reasons", "2", "--all-connections"])
    ctx = cli.build_context(args)
    rules = ctx.config
    assert rules.relevant_countries == ("KP", "IR")
    assert rules.allow_processes == ("a.exe", "b") and rules.no_direct_internet == ("10.50.0.0/16",)
    assert rules.suspicious_ports[4444] == 90 and rules.suspicious_ports[1234] == rules.port_score
    assert (rules.notice, rules.warning, rules.alert, rules.max_reasons, rules.all_connections) == (30, 50, 70, 2, True)
    assert [(s.kind, s.score) for s in ctx.signatures] == [("allowlist", -50), ("allowlist", -80)]
    assert any("no C2 signature list configured" in note for note in ctx.notes)


def test_compiled_engine_cache_gives_the_same_findings(tmp_path, loopback, loopback_mmdb, capsys):
    iocs = tmp_path / "c2.txt"
    iocs.write_text(f"{loopback.server_ip}\n")
    argv = ["scan", "--include-loopback", "--iocs", str(iocs), "--geoip", str(loopback_mmdb),
            "--relevant-countries", "KP", "--format", "jsonl"]
    runs = []
    for n in range(3):
        out = tmp_path / f"out{n}.jsonl"
        assert _run(argv + ["--output", str(out)], capsys)[0] == 1
        runs.append({(_tuple(f), f["score"], f["level"], json.dumps(f["reasons"])) for f in _ours(_jsonl(out), loopback)})
        [cached] = (tmp_path / "cache" / "connscan" / "engines").glob("*.engine")
        if n == 1:
            cached.write_bytes(cached.read_bytes()[:1000])  # corrupt: the next run rebuilds
    assert runs[0] == runs[1] == runs[2]
    assert {key[0] for key in runs[0]} == loopback.client_tuples()
    assert all('"c2"' in key[3] and '"geoip"' in key[3] for key in runs[0])  # both reasons, one finding
    iocs.write_text(f"{loopback.client_ip}\n")  # changed list: another cache entry
    assert _run(argv + ["--output", str(tmp_path / "x.jsonl")], capsys)[0] == 1
    assert len(list((tmp_path / "cache" / "connscan" / "engines").glob("*.engine"))) == 2


def test_closed_output_pipe_is_not_a_crash(tmp_path, loopback, loopback_mmdb):
    """`connscan scan | head -0`: the reader goes away; connscan still exits by its findings."""
    env = {**os.environ, "PYTHONPATH": CHILD_PATH, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("CONNSCAN_CACHE_DIR", None)
    iocs = tmp_path / "c2.txt"
    iocs.write_text(f"{loopback.server_ip}\n")
    proc = subprocess.Popen([sys.executable, "-m", "connscan", "scan", "--include-loopback",
                             "--iocs", str(iocs), "--geoip", str(loopback_mmdb)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # nobody reads: every write gets EPIPE
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1, err  # the C2 findings still decide the exit code
    assert "Traceback" not in err and "output closed by the reader" in err


_SCALARS = {"tag": st.sampled_from(["A", "THOR", "x1"]), "max_reasons": st.integers(0, 9),
            "geoip_score": st.integers(0, 100), "format": st.sampled_from(["text", "jsonl"]),
            "fail_level": st.sampled_from(["notice", "warning", "alert"])}


@settings(max_examples=60, deadline=None)
@given(st.fixed_dictionaries({}, optional=_SCALARS), st.fixed_dictionaries({}, optional=_SCALARS))
def test_flags_win_over_file_over_defaults(in_file, in_flags):
    resolved = resolve_settings(dict(in_flags), dict(in_file))
    got = {"tag": resolved.tag, "max_reasons": resolved.rules.max_reasons, "geoip_score": resolved.rules.geoip_score,
           "format": resolved.format, "fail_level": resolved.fail_level.lower()}
    defaults = {"tag": "connscan", "max_reasons": 5, "geoip_score": 40, "format": "text", "fail_level": "alert"}
    assert got == {key: in_flags.get(key, in_file.get(key, default)) for key, default in defaults.items()}


def test_flows_subcommand_says_when_it_is_missing(monkeypatch, capsys):
    import connscan

    monkeypatch.setitem(sys.modules, "connscan.flows", None)  # import fails as if flows.py were absent
    monkeypatch.delattr(connscan, "flows", raising=False)
    code, _, err = _run(["flows"], capsys)
    assert code == 2 and "connscan flows is not available" in err
