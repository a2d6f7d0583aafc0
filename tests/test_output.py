"""THOR text lines (golden against DESIGN.md, escaping), JSON Lines keys, stats."""
from __future__ import annotations

import io
import json
import re
from collections import Counter
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connscan.findings import Finding, Reason
from connscan.output import FindingWriter, Stats, escape_value, finding_to_dict, format_text_line, text_fields

# The two sample lines of ../shared/DESIGN.md (THOR's ProcessConnections module), verbatim.
SAMPLE_ESTABLISHED = (
    r"Oct 25 17:33:17 server66.local.net/147.2.20.16 THOR: Notice: MODULE: ProcessConnections MESSAGE: "
    r"Established connection PID: 3012 NAME: dfssvc.exe COMMAND: C:\Windows\system32\dfssvc.exe "
    r"LIP: 147.2.20.16 LPORT: 56513 RIP: 147.2.21.188 RPORT: 53389"
)
SAMPLE_GEOIP = (
    r"Oct 25 17:33:17 server66.local.net/10.1.30.2 THOR: Notice: MODULE: ProcessConnections MESSAGE: "
    r"Relevant remote region GEO IP lookup PID: 3012 NAME: p.exe COMMAND: C:\Windows\system32\p.exe "
    r"LIP: 10.1.30.2 LPORT: 56513 RIP: 14.102.172.144 RPORT: 6022 COUNTRY: PK"
)
SAMPLE_TIME = datetime(2026, 10, 25, 17, 33, 17)  # naive: printed as is (local time)

_HEADER = re.compile(r"(\w{3} \d\d \d\d:\d\d:\d\d) (\S+)/(\S+) (\S+): (Info|Notice|Warning|Alert):( .*)")
_KEY = re.compile(r" ([A-Z][A-Z0-9_]*): ")


def parse_line(line: str):
    """Split a text line the way a log parser would: header, then ` KEY: ` tokens."""
    match = _HEADER.fullmatch(line)
    assert match, line
    parts = _KEY.split(match.group(6))
    assert parts[0] == ""
    return match.groups()[:5], list(zip(parts[1::2], parts[2::2]))


def _unescape(text: str) -> str:
    return re.sub(r"\\x([0-9a-f]{2})|\\u([0-9a-f]{4})|\\U([0-9a-f]{8})",
                  lambda m: chr(int(m.group(1) or m.group(2) or m.group(3), 16)), text)


def _finding(**changes) -> Finding:
    values = dict(time=SAMPLE_TIME, hostname="server66.local.net", level="Notice",
                  message="Established connection", score=40.0, proto="tcp", lip="147.2.20.16", lport=56513,
                  rip="147.2.21.188", rport=53389, direction="outbound", pid=3012, name="dfssvc.exe",
                  command=r"C:\Windows\system32\dfssvc.exe")
    values.update(changes)
    return Finding(**values)


# --------------------------------------------------------------------------- golden


def test_golden_established_connection():
    line = format_text_line(_finding(), tag="THOR")
    assert line == SAMPLE_ESTABLISHED + " SCORE: 40"
    header, fields = parse_line(line)
    sample_header, sample_fields = parse_line(SAMPLE_ESTABLISHED)
    assert header == sample_header
    assert fields[: len(sample_fields)] == sample_fields
    assert [key for key, _ in fields[len(sample_fields):]] == ["SCORE"]


def test_golden_relevant_region():
    finding = _finding(message="Relevant remote region GEO IP lookup", name="p.exe",
                       command=r"C:\Windows\system32\p.exe", lip="10.1.30.2", rip="14.102.172.144", rport=6022,
                       country="PK", reasons=[Reason("geoip", 40.0, "PK", "Relevant remote region", "relevant_countries")])
    line = format_text_line(finding, tag="THOR")
    assert line.startswith(SAMPLE_GEOIP + " SCORE: 40 ")
    header, fields = parse_line(line)
    sample_header, sample_fields = parse_line(SAMPLE_GEOIP)
    assert header == sample_header
    assert fields[: len(sample_fields)] == sample_fields
    assert fields[len(sample_fields):] == [("SCORE", "40"), ("REASON_1", "Relevant remote region PK"),
                                          ("SUBSCORE_1", "40")]


def test_default_tag_and_c2_reason_fields():
    finding = _finding(level="Alert", score=100.0, message="Connection to known C2 server", reasons=[
        Reason("c2", 100.0, "147.2.21.0/24", "Cobalt Strike", "c2.txt:3"),
        Reason("allowlist", -20.0, "147.2.0.0/16", "branch office", "allow.txt:1")])
    header, fields = parse_line(format_text_line(finding))
    assert header[3] == "connscan" and header[4] == "Alert"
    assert fields[-9:] == [("SCORE", "100"), ("REASON_1", "Known C2 server address"), ("SUBSCORE_1", "100"),
                           ("SIGNATURE_1", "147.2.21.0/24"), ("DESC_1", "Cobalt Strike"),
                           ("REASON_2", "Allowlisted branch office"), ("SUBSCORE_2", "-20"),
                           ("SIGNATURE_2", "147.2.0.0/16"), ("DESC_2", "branch office")]


def test_flow_fields_follow_the_live_fields():
    finding = _finding(pid=None, name=None, command=None, file="conn.log", row=7,
                       start=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc), country="RU", score=84.2)
    _, fields = parse_line(format_text_line(finding))
    assert [k for k, _ in fields] == ["MODULE", "MESSAGE", "LIP", "LPORT", "RIP", "RPORT", "FILE", "ROW", "START",
                                      "COUNTRY", "SCORE"]
    assert dict(fields)["START"] == "2026-01-02T03:04:05Z"
    assert dict(fields)["SCORE"] == "84.2"


def test_unknown_values_print_as_dash():
    _, fields = parse_line(format_text_line(_finding(pid=None, name=None, command=None, lport=None)))
    assert dict(fields)["PID"] == dict(fields)["NAME"] == dict(fields)["LPORT"] == "-"


# --------------------------------------------------------------------------- escaping

FORGED = "\n" + SAMPLE_GEOIP + " PID: 1 NAME: x"


def test_forged_command_line_cannot_forge_line_or_field():
    finding = _finding(command="evil.exe " + FORGED + "\r\nCOUNTRY: KP", name="a: b:")
    line = format_text_line(finding, tag="THOR")
    assert line.splitlines() == [line]
    _, fields = parse_line(line)
    keys = [key for key, _ in fields]
    assert keys == [key for key, _ in text_fields(finding)]
    assert len(keys) == len(set(keys))
    values = dict(fields)
    assert values["COMMAND"] == escape_value(finding.command)
    assert _unescape(values["COMMAND"]) == finding.command
    assert values["NAME"] == "a\\x3a b\\x3a"
    assert values["RIP"] == "147.2.21.188"


@pytest.mark.parametrize("char", ["\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029",
                                  "\x00", "\x1b", "\u202e", "\ufeff"])
def test_line_breaking_and_invisible_characters_are_escaped(char):
    escaped = escape_value(f"a{char}b")
    assert escaped.isprintable() and len(escaped.splitlines()) == 1
    assert _unescape(escaped) == f"a{char}b"


def test_plain_values_are_unchanged():
    for value in (r"C:\Windows\system32\dfssvc.exe", "/usr/bin/python3 -m http.server 8000", "üñï",
                  "http://host:8080/path", "a:b"):
        assert escape_value(value) == value


# Text built from the pieces a forger would use, mixed with arbitrary text.
_PIECES = st.sampled_from([" PID: ", " COUNTRY: ", ": ", ":", " ", "\n", "\r", "\u2028", "\\", "LIP", "x", "Alert:"])
_HOSTILE = st.lists(_PIECES | st.text(max_size=4), max_size=12).map("".join)


@settings(max_examples=300, deadline=None)
@given(name=_HOSTILE, command=_HOSTILE | st.text(), user=st.text(max_size=5))
def test_any_text_gives_one_line_with_the_written_fields(name, command, user):
    finding = _finding(name=name, command=command, user=user)
    line = format_text_line(finding)
    assert line.splitlines() == [line]
    _, fields = parse_line(line)
    assert fields == [(key, escape_value(value)) for key, value in text_fields(finding)]
    if "\\" not in command:
        assert _unescape(dict(fields)["COMMAND"]) == command


# --------------------------------------------------------------------------- JSON Lines

LIVE_KEYS = ["time", "hostname", "level", "module", "message", "score", "pid", "name", "command", "user",
             "status", "proto", "lip", "lport", "rip", "rport", "direction", "country", "reasons"]
REASON_KEYS = ["kind", "score", "signature", "description", "source"]


def test_jsonl_keys_live():
    finding = _finding(time=datetime(2026, 12, 3, 17, 0, 0, tzinfo=timezone.utc), user="root", status="ESTABLISHED",
                       country="PK", reasons=[Reason("geoip", 40.0, "PK", "Relevant remote region", "relevant_countries")])
    data = finding_to_dict(finding)
    assert list(data) == LIVE_KEYS
    assert data["time"] == "2026-12-03T17:00:00Z"
    assert list(data["reasons"][0]) == REASON_KEYS
    assert data["pid"] == 3012 and data["lport"] == 56513 and data["score"] == 40.0


def test_jsonl_keys_flows_and_aggregate():
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    flow = _finding(pid=None, name=None, command=None, country="RU", file="conn.log", row=3, start=moment,
                    user=None, status=None)
    expected = [k for k in LIVE_KEYS if k not in ("pid", "name", "command", "user", "status")]
    assert list(finding_to_dict(flow)) == expected + ["file", "row", "start"]
    grouped = _finding(pid=None, name=None, command=None, country="RU", file="conn.log", count=4,
                       first_seen=moment, last_seen=moment)
    assert list(finding_to_dict(grouped)) == expected + ["file", "count", "first_seen", "last_seen"]


def test_writer_formats():
    finding = _finding()
    buf = io.StringIO()
    FindingWriter(buf, "jsonl").write_all([finding, finding])
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["command"] == r"C:\Windows\system32\dfssvc.exe"
    buf = io.StringIO()
    writer = FindingWriter(buf, "text", tag="THOR", hostname="other", host_ip="192.0.2.9")
    writer.write(finding)
    assert buf.getvalue().startswith("Oct 25 17:33:17 other/192.0.2.9 THOR: Notice: MODULE:")
    assert buf.getvalue().endswith("\n") and writer.written == 1
    with pytest.raises(ValueError):
        FindingWriter(buf, "xml")


# --------------------------------------------------------------------------- stats


def test_stats_dict_and_summary():
    stats = Stats(records_read=10, records_scanned=7)
    stats.records_skipped.update({"loopback": 2, "listening": 1})
    stats.add_findings([_finding(level="Alert"), _finding(level="Notice"), _finding(level="Notice")])
    other = Stats(records_read=5, records_scanned=5, records_rejected=Counter({"bad address": 1}))
    stats.add(other)
    stats.stop()
    data = stats.to_dict()
    assert list(data) == ["records_read", "records_scanned", "records_skipped", "records_rejected", "findings",
                          "elapsed_s"]
    assert data["records_read"] == 15 and data["records_scanned"] == 12
    assert data["records_skipped"] == {"listening": 1, "loopback": 2}
    assert data["records_rejected"] == {"bad address": 1}
    assert data["findings"] == {"Alert": 1, "Warning": 0, "Notice": 2, "Info": 0}
    assert stats.at_or_above("Warning") == 1 and stats.at_or_above("Notice") == 3
    summary = stats.summary()
    assert "\n" not in summary
    assert "15 read, 12 scanned, 3 (listening 1, loopback 2) skipped, 1 (bad address 1) rejected" in summary
    assert "1 Alert, 0 Warning, 2 Notice" in summary
    stats.files = {"a.csv": other}
    assert stats.to_dict()["files"]["a.csv"]["records_read"] == 5
