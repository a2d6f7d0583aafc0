"""Live socket collection: the /proc and netlink parsers (c and py twins) and connscan.live.

References independent of the code under test: hand-computed /proc lines, Python's
ipaddress, os.fstat (a socket's inode), and psutil.net_connections on the same sockets.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import struct
import sys
from collections import Counter

import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support import impl_fixture
from connscan import _native, live

proc = impl_fixture("proc")

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc and netlink")

HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
)


# --- an encoder for /proc/net lines, written from the kernel's format (not from the parser)


def hex_address(addr: ipaddress._BaseAddress) -> str:
    """Each 32-bit group of the address as the host-order integer the kernel prints (%08X)."""
    packed = addr.packed
    return "".join(f"{int.from_bytes(packed[i:i + 4], sys.byteorder):08X}" for i in range(0, len(packed), 4))


def proc_line(slot, local, lport, remote, rport, state=1, uid=1000, inode=4242) -> str:
    local, remote = ipaddress.ip_address(local), ipaddress.ip_address(remote)
    return (
        f"{slot:4d}: {hex_address(local)}:{lport:04X} {hex_address(remote)}:{rport:04X} {state:02X} "
        f"00000000:00000000 00:00000000 00000000 {uid:5d}        0 {inode} 1 0000000000000000 20 4 30 10 -1\n"
    )


def expected_text(addr) -> str:
    addr = ipaddress.ip_address(addr)
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr)


def rows_of(table: dict) -> list[tuple]:
    """The columns of a parsed table as one tuple per socket."""
    lt, lo, rt, ro = table["lip_text"], table["lip_offsets"], table["rip_text"], table["rip_offsets"]
    return [
        (
            lt[lo[i]:lo[i + 1]].decode(), int(table["lport"][i]), rt[ro[i]:ro[i + 1]].decode(),
            int(table["rport"][i]), int(table["state"][i]), int(table["uid"][i]), int(table["inode"][i]),
            int(table["family"][i]), int(table["remote"][i]),
        )
        for i in range(len(table["lport"]))
    ]


def assert_same_table(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            assert a[key].dtype == b[key].dtype, key
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        else:
            assert a[key] == b[key], key


# --- /proc/net text parser --------------------------------------------------------------


def test_parse_tcp_lines(proc):
    text = HEADER + proc_line(0, "127.0.0.1", 8080, "0.0.0.0", 0, state=10, uid=0, inode=100)
    text += proc_line(1, "10.1.2.3", 51000, "93.184.216.34", 443, state=1, uid=1000, inode=101)
    text += proc_line(2, "10.1.2.3", 51001, "127.0.0.53", 53, state=6, uid=0, inode=0)
    table = proc.parse_net_table(text.encode(), False, "/proc/net/tcp")
    assert rows_of(table) == [
        ("127.0.0.1", 8080, "0.0.0.0", 0, 10, 0, 100, 4, proc.REMOTE_UNSPECIFIED),
        ("10.1.2.3", 51000, "93.184.216.34", 443, 1, 1000, 101, 4, proc.REMOTE_NORMAL),
        ("10.1.2.3", 51001, "127.0.0.53", 53, 6, 0, 0, 4, proc.REMOTE_LOOPBACK),
    ]
    assert table["bad_lines"] == 0 and table["line_errors"] == []


def test_parse_tcp6_lines_with_mapped_peers(proc):
    text = HEADER + proc_line(0, "::", 22, "::", 0, state=10)
    text += proc_line(1, "::ffff:192.0.2.7", 443, "::ffff:198.51.100.9", 40000)  # dual-stack IPv4 peer
    text += proc_line(2, "2001:db8::1", 443, "2001:db8:0:0:1::2", 40001)
    text += proc_line(3, "::1", 631, "::1", 40002)
    text += proc_line(4, "::ffff:127.0.0.1", 5432, "::ffff:127.0.0.1", 40003)
    text += proc_line(5, "fe80::1:0:0:1", 1, "::102:304", 2)  # IPv4-compatible stays IPv6
    table = proc.parse_net_table(text.encode(), True, "/proc/net/tcp6")
    assert rows_of(table) == [
        ("::", 22, "::", 0, 10, 1000, 4242, 6, proc.REMOTE_UNSPECIFIED),
        ("192.0.2.7", 443, "198.51.100.9", 40000, 1, 1000, 4242, 4, proc.REMOTE_NORMAL),
        ("2001:db8::1", 443, "2001:db8::1:0:0:2", 40001, 1, 1000, 4242, 6, proc.REMOTE_NORMAL),
        ("::1", 631, "::1", 40002, 1, 1000, 4242, 6, proc.REMOTE_LOOPBACK),
        ("127.0.0.1", 5432, "127.0.0.1", 40003, 1, 1000, 4242, 4, proc.REMOTE_LOOPBACK),
        ("fe80::1:0:0:1", 1, "::102:304", 2, 1, 1000, 4242, 6, proc.REMOTE_NORMAL),
    ]


GOOD = proc_line(7, "10.0.0.1", 1234, "10.0.0.2", 80).rstrip("\n")
MALFORMED = [
    ("   7: 0A000001:04D2 0200000A:0050 01", "fewer than 10 fields"),
    (GOOD.replace("   7:", "   7", 1), "bad slot number"),
    (GOOD.replace("   7:", "  x7:", 1), "bad slot number"),
    (GOOD.replace(":04D2", ":4D2", 1), "bad local address"),
    (GOOD.replace(":04D2", ":04G2", 1), "bad local address"),
    (GOOD.replace(hex_address(ipaddress.ip_address("10.0.0.1")), "0A00001", 1), "bad local address"),
    (GOOD.replace(":0050", "-0050", 1), "bad remote address"),
    (GOOD.replace(" 01 ", " 1 ", 1), "bad state"),
    (GOOD.replace(" 01 ", " 0Z ", 1), "bad state"),
    (GOOD.replace("00000000:00000000", "0000000000000000", 1), "bad queue sizes"),
    (GOOD.replace(" 00:00000000 ", " 00: ", 1), "bad timer"),
    (GOOD.replace(" 00000000  ", " 0000000x  ", 1), "bad retransmit count"),
    (GOOD.replace(" 1000 ", " -1 ", 1), "bad uid"),
    (GOOD.replace(" 1000 ", " 4294967296 ", 1), "bad uid"),
    (GOOD.replace(" 4242 ", " 42a42 ", 1), "bad inode"),
    (GOOD.replace(" 4242 ", " 99999999999999999999 ", 1), "bad inode"),
    ("\x00" * 12, "fewer than 10 fields"),
    (GOOD.replace(" 4242 ", " 42\r42 ", 1), "bad inode"),
]


@pytest.mark.parametrize("line, reason", MALFORMED, ids=[r for _, r in MALFORMED])
def test_malformed_line_is_counted_with_its_line_number(proc, line, reason):
    text = HEADER + GOOD + "\n" + line + "\n" + GOOD + "\n"
    table = proc.parse_net_table(text.encode(), False, "/proc/net/tcp")
    assert table["bad_lines"] == 1
    assert table["line_errors"] == [("/proc/net/tcp:3", reason)]
    assert len(rows_of(table)) == 2


def test_many_bad_lines_are_all_counted_and_some_named(proc):
    text = HEADER + "garbage\n" * 500 + GOOD + "\n"
    table = proc.parse_net_table(text.encode(), False, "t")
    assert table["bad_lines"] == 500
    assert len(table["line_errors"]) == proc.MAX_LINE_ERRORS
    assert table["line_errors"][0] == ("t:2", "fewer than 10 fields")
    assert len(rows_of(table)) == 1


def test_empty_and_header_only_tables(proc):
    for data in (b"", HEADER.encode(), HEADER.encode() + b"\n"):
        table = proc.parse_net_table(data, True, "x")
        assert rows_of(table) == [] and table["bad_lines"] == 0


def test_header_is_only_skipped_on_the_first_line(proc):
    table = proc.parse_net_table((HEADER + GOOD + "\n" + HEADER).encode(), False, "x")
    assert table["bad_lines"] == 1 and len(rows_of(table)) == 1


v4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
v6 = st.one_of(
    st.integers(0, 2**128 - 1),
    st.integers(0, 2**32 - 1).map(lambda x: 0xFFFF00000000 | x),  # ::ffff:a.b.c.d
    st.integers(0, 2**32 - 1),  # ::a.b.c.d and the zero-run edge cases
    st.lists(st.sampled_from([0, 0, 1, 0xFFFF]), min_size=8, max_size=8).map(
        lambda g: sum(x << (16 * (7 - i)) for i, x in enumerate(g))
    ),
).map(ipaddress.IPv6Address)
socket_row = st.tuples(st.integers(0, 65535), st.integers(0, 65535), st.integers(1, 12),
                       st.integers(0, 2**32 - 1), st.integers(0, 2**63))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), ipv6=st.booleans())
def test_parser_matches_ipaddress_on_random_sockets(proc, data, ipv6):
    addresses = v6 if ipv6 else v4
    sockets = data.draw(st.lists(st.tuples(addresses, addresses, socket_row), max_size=20))
    text = HEADER + "".join(
        proc_line(i, str(a), lp, str(b), rp, state, uid, inode)
        for i, (a, b, (lp, rp, state, uid, inode)) in enumerate(sockets)
    )
    table = proc.parse_net_table(text.encode(), ipv6, "x")
    expected = []
    for a, b, (lp, rp, state, uid, inode) in sockets:
        peer = ipaddress.ip_address(expected_text(b))
        kind = (proc.REMOTE_LOOPBACK if peer.is_loopback and (peer.version == 4 or int(peer) == 1)
                else proc.REMOTE_UNSPECIFIED if peer.is_unspecified else proc.REMOTE_NORMAL)
        expected.append((expected_text(a), lp, str(peer), rp, state, uid, inode, peer.version, kind))
    assert rows_of(table) == expected
    assert table["bad_lines"] == 0


@settings(max_examples=200, deadline=None)
@given(noise=st.lists(st.tuples(st.integers(0, 200), st.binary(min_size=0, max_size=3)), max_size=6),
       ipv6=st.booleans())
def test_corrupted_text_never_crashes_and_both_twins_agree(noise, ipv6):
    base = bytearray((HEADER + proc_line(0, "::1" if ipv6 else "127.0.0.1", 1, "::" if ipv6 else "0.0.0.0", 2)
                      + proc_line(1, "::ffff:1.2.3.4" if ipv6 else "1.2.3.4", 3, "2001:db8::9" if ipv6 else "5.6.7.8", 4)).encode())
    for pos, junk in noise:
        pos = pos % (len(base) + 1)
        base[pos:pos + len(junk)] = junk
    results = [_native.load("proc", impl).parse_net_table(bytes(base), ipv6, "f") for impl in _native.implementations("proc")]
    for other in results[1:]:
        assert_same_table(results[0], other)
    assert len(results[0]["lport"]) + results[0]["bad_lines"] <= bytes(base).count(b"\n") + 1


# --- netlink sock_diag messages ------------------------------------------------------------


def nlmsg(kind: int, body: bytes) -> bytes:
    """A netlink message (struct nlmsghdr + body), padded to 4 bytes like the kernel's."""
    message = struct.pack("=IHHII", 16 + len(body), kind, 2, 1, 0) + body
    return message + bytes(-len(message) % 4)


def diag_message(family, state, local, lport, remote, rport, uid=1000, inode=77, attrs=b"") -> bytes:
    """struct inet_diag_msg as linux/inet_diag.h lays it out (ports and addresses big endian)."""
    body = struct.pack("=BBBB", family, state, 0, 0) + struct.pack("!HH", lport, rport)
    body += ipaddress.ip_address(local).packed.ljust(16, b"\0") + ipaddress.ip_address(remote).packed.ljust(16, b"\0")
    body += struct.pack("=I8sIIIII", 3, bytes(8), 0, 0, 0, uid, inode) + attrs
    return nlmsg(20, body)


DONE = nlmsg(3, struct.pack("=i", 0))


def test_diag_messages_ipv4(proc):
    data = diag_message(socket.AF_INET, 10, "0.0.0.0", 22, "0.0.0.0", 0, 0, 11)
    data += diag_message(socket.AF_INET, 1, "192.0.2.1", 22, "203.0.113.5", 50000, 1000, 12, attrs=b"\x05\x00\x08\x00\x01")
    table = proc.parse_diag_messages(data + DONE, socket.AF_INET, "diag")
    assert rows_of(table) == [
        ("0.0.0.0", 22, "0.0.0.0", 0, 10, 0, 11, 4, proc.REMOTE_UNSPECIFIED),
        ("192.0.2.1", 22, "203.0.113.5", 50000, 1, 1000, 12, 4, proc.REMOTE_NORMAL),
    ]


def test_diag_messages_ipv6_and_mapped(proc):
    data = diag_message(socket.AF_INET6, 1, "::ffff:10.0.0.1", 443, "::ffff:198.51.100.7", 1234)
    data += diag_message(socket.AF_INET6, 6, "2001:db8::5", 443, "2001:db8:1::9", 999, 0, 0)
    table = proc.parse_diag_messages(data + DONE, socket.AF_INET6, "diag")
    assert rows_of(table) == [
        ("10.0.0.1", 443, "198.51.100.7", 1234, 1, 1000, 77, 4, proc.REMOTE_NORMAL),
        ("2001:db8::5", 443, "2001:db8:1::9", 999, 6, 0, 0, 6, proc.REMOTE_NORMAL),
    ]


def test_diag_kernel_error_truncation_and_wrong_family_raise(proc):
    good = diag_message(socket.AF_INET, 1, "192.0.2.1", 1, "192.0.2.2", 2)
    with pytest.raises(OSError) as info:
        proc.parse_diag_messages(nlmsg(2, struct.pack("=i", -2) + bytes(16)), socket.AF_INET, "diag udp")
    assert info.value.errno == 2 and "diag udp" in str(info.value)
    for broken in (good[:-9], good[:10], struct.pack("=IHHII", 8, 20, 0, 0, 0) + good,
                   struct.pack("=IHHII", 40, 20, 0, 0, 0) + bytes(24)):  # too short for inet_diag_msg
        with pytest.raises(OSError, match="malformed"):
            proc.parse_diag_messages(broken, socket.AF_INET, "diag")
    with pytest.raises(OSError, match="another address family"):
        proc.parse_diag_messages(good, socket.AF_INET6, "diag")


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(0, 400), flips=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4))
def test_corrupted_diag_messages_never_crash_and_both_twins_agree(cut, flips):
    data = bytearray(diag_message(socket.AF_INET6, 1, "::1", 1, "2001:db8::1", 2)
                     + diag_message(socket.AF_INET6, 10, "::", 80, "::", 0) + DONE)
    for pos, value in flips:
        data[pos % len(data)] = value
    data = bytes(data[:cut])
    outcomes = []
    for impl in _native.implementations("proc"):
        try:
            outcomes.append(rows_of(_native.load("proc", impl).parse_diag_messages(data, socket.AF_INET6, "d")))
        except OSError as exc:
            outcomes.append(str(exc))
    assert all(o == outcomes[0] for o in outcomes)


# --- the fd walk ------------------------------------------------------------------------


def test_socket_owners_on_a_synthetic_proc_tree(proc, tmp_path):
    links = {
        "100": {"0": "/dev/null", "3": "socket:[5551]", "4": "socket:[5552]", "7": "pipe:[9]"},
        "200": {"1": "socket:[5551]", "2": "socket:[12x]", "5": "anon_inode:[eventpoll]"},
        "300": {},
    }
    for pid, fds in links.items():
        (tmp_path / pid / "fd").mkdir(parents=True)
        for fd, target in fds.items():
            os.symlink(target, tmp_path / pid / "fd" / fd)
    (tmp_path / "400").mkdir()  # a process that exited: no fd folder any more
    (tmp_path / "self").mkdir()  # not a process folder
    (tmp_path / "net").mkdir()
    inodes, pids, counts = proc.socket_owners(str(tmp_path))
    assert sorted(zip(inodes.tolist(), pids.tolist())) == [(5551, 100), (5551, 200), (5552, 100)]
    assert inodes.dtype == np.uint64 and pids.dtype == np.int32
    assert counts == {"processes": 3, "vanished": 1, "denied": 0, "failed": 0, "bad_links": 1}


@pytest.mark.parametrize("threads", [1, 2])
def test_socket_owners_across_batches_and_threads(proc, tmp_path, threads):
    # 130 processes x 70 fds: more processes than one batch holds, enough fds for threads
    expected = []
    for pid in range(1000, 1130):
        fd_dir = tmp_path / str(pid) / "fd"
        fd_dir.mkdir(parents=True)
        for fd in range(70):
            inode = pid * 100 + fd
            os.symlink(f"socket:[{inode}]" if fd % 7 else "/dev/null", fd_dir / str(fd))
            if fd % 7:
                expected.append((inode, pid))
    inodes, pids, counts = proc.socket_owners(str(tmp_path), threads)
    assert sorted(zip(inodes.tolist(), pids.tolist())) == expected
    assert counts["processes"] == 130 and counts["bad_links"] == 0


def test_socket_owners_missing_root_is_an_error(proc, tmp_path):
    with pytest.raises(OSError):
        proc.socket_owners(str(tmp_path / "absent"))


@linux_only
@pytest.mark.parametrize("threads", [1, 3])
def test_socket_owners_finds_this_process_by_fstat_inode(proc, threads):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 4096 and (hard == resource.RLIM_INFINITY or hard >= 4096):
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))  # enough fds to use threads
    count = min(1500, (resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 200) // 2)
    sockets = [socket.socket(socket.AF_INET, kind) for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM) * count]
    try:
        expected = {os.fstat(s.fileno()).st_ino for s in sockets}
        inodes, pids, counts = proc.socket_owners("/proc", threads)
        mine = set(inodes[pids == os.getpid()].tolist())
        assert expected <= mine
        assert counts["processes"] >= 1 and counts["bad_links"] == 0
    finally:
        for s in sockets:
            s.close()


def test_fast_path_on_a_synthetic_proc_tree(proc, tmp_path, monkeypatch):
    monkeypatch.setattr(live, "_process_info", lambda pid: ("web", "web --port 8080", "/usr/bin/web", "www"))
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "tcp").write_text(
        HEADER
        + proc_line(0, "0.0.0.0", 8080, "0.0.0.0", 0, state=10, inode=901)
        + proc_line(1, "10.0.0.1", 8080, "203.0.113.9", 40000, inode=902)
        + proc_line(2, "10.0.0.1", 50000, "198.51.100.1", 443, inode=903)
        + "   3: garbage\n"
    )
    (tmp_path / "net" / "udp").write_text(HEADER)  # no tcp6/udp6: a kernel without IPv6
    (tmp_path / "77" / "fd").mkdir(parents=True)
    for fd, inode in ((3, 901), (4, 902), (5, 903)):
        os.symlink(f"socket:[{inode}]", tmp_path / "77" / "fd" / str(fd))
    snapshot = live._collect_proc(proc, False, tables="proc", proc_root=str(tmp_path))
    b = snapshot.batch.to_pydict()
    assert list(zip(b["lip"], b["lport"], b["rip"], b["rport"], b["pid"], b["direction"], b["command"])) == [
        ("10.0.0.1", 8080, "203.0.113.9", 40000, 77, "inbound", "web --port 8080"),
        ("10.0.0.1", 50000, "198.51.100.1", 443, 77, "outbound", "web --port 8080"),
    ]
    assert snapshot.skipped == Counter({"listening": 1, "malformed": 1})
    assert snapshot.records_read == 4
    assert snapshot.warnings == [f"{tmp_path}/net/tcp:5: fewer than 10 fields (1 malformed lines in {tmp_path}/net/tcp skipped)"]
    assert snapshot.table_sources == {"tcp": f"{tmp_path}/net/tcp", "udp": f"{tmp_path}/net/udp"}


# --- real sockets: the fast path against psutil -------------------------------------------


def _ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def test_sockets():
    """A few dozen connected loopback sockets (TCP v4, v6, dual-stack, UDP) held by this test."""
    held, listeners = [], []

    def tcp_pairs(family, listen_host, connect_host, count):
        listener = socket.socket(family)
        listener.bind((listen_host, 0))
        listener.listen(64)
        listeners.append(listener)
        port = listener.getsockname()[1]
        for _ in range(count):
            held.append(socket.create_connection((connect_host, port)))
            held.append(listener.accept()[0])
        return port

    ports = {"tcp4": tcp_pairs(socket.AF_INET, "127.0.0.1", "127.0.0.1", 20)}
    if _ipv6_available():
        ports["tcp6"] = tcp_pairs(socket.AF_INET6, "::1", "::1", 8)
        ports["dual"] = tcp_pairs(socket.AF_INET6, "::", "127.0.0.1", 5)  # peers ::ffff:127.0.0.1
    udp_server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_server.bind(("127.0.0.1", 0))
    listeners.append(udp_server)
    ports["udp"] = udp_server.getsockname()[1]
    for _ in range(6):
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.connect(("127.0.0.1", ports["udp"]))
        held.append(client)
    yield ports, held, listeners
    for s in held + listeners:
        s.close()


LOOPBACK_TEXT = {"127.0.0.1", "::1"}  # the test's sockets (the benchmark uses 127.0.1.x and up)


def _ours(ports, laddr, raddr) -> bool:
    values = set(ports.values())
    if not (laddr and raddr and expected_text(laddr[0]) in LOOPBACK_TEXT and expected_text(raddr[0]) in LOOPBACK_TEXT):
        return False
    return laddr[1] in values or raddr[1] in values


def psutil_view(ports):
    """(lip, lport, rip, rport, status, pid) of the test's connected sockets, per psutil."""
    seen = set()
    for c in psutil.net_connections(kind="inet"):
        if not c.raddr or not _ours(ports, c.laddr, c.raddr):
            continue
        seen.add((expected_text(c.laddr.ip), c.laddr.port, expected_text(c.raddr.ip), c.raddr.port,
                  c.status, c.pid if c.pid is not None else -1))
    return seen


def batch_view(snapshot, ports):
    b = snapshot.batch.to_pydict()
    rows = zip(b["lip"], b["lport"], b["rip"], b["rport"], b["status"], b["pid"])
    return {r for r in rows if _ours(ports, (r[0], r[1]), (r[2], r[3]))}


@linux_only
@pytest.mark.parametrize("tables", ["netlink", "proc"])
def test_fast_path_matches_psutil_on_the_same_sockets(proc, test_sockets, tables):
    ports, held, _ = test_sockets
    impl = proc.__name__.rsplit("_", 1)[-1]
    snapshot = live.collect(include_loopback=True, impl=impl, tables=tables)
    reference = psutil_view(ports)
    assert batch_view(snapshot, ports) == reference
    # every connected test socket is there (the listeners are not: listening is skipped)
    assert len(reference) == len(held)
    assert snapshot.implementation == impl
    if tables == "proc":
        assert set(snapshot.table_sources.values()) <= {f"/proc/net/{n}" for n in ("tcp", "tcp6", "udp", "udp6")}


@linux_only
def test_netlink_and_text_tables_agree(proc, test_sockets):
    ports, _, _ = test_sockets
    for name, family, protocol in (("tcp", socket.AF_INET, 6), ("tcp6", socket.AF_INET6, 6),
                                   ("udp", socket.AF_INET, 17), ("udp6", socket.AF_INET6, 17)):
        if not os.path.exists(f"/proc/net/{name}"):
            continue
        try:
            dump = proc.read_sock_diag(family, protocol, name)
        except OSError as exc:
            pytest.skip(f"no sock_diag for {name}: {exc}")
        with open(f"/proc/net/{name}", "rb") as f:
            text = proc.parse_net_table(f.read(), family == socket.AF_INET6, name)
        values = set(ports.values())
        mine = lambda rows: sorted(r for r in rows if r[1] in values or r[3] in values)  # noqa: E731
        assert mine(rows_of(dump)) == mine(rows_of(text))


def test_psutil_path_matches_psutil(test_sockets):
    ports, held, _ = test_sockets
    snapshot = live.collect(include_loopback=True, impl="psutil")
    assert batch_view(snapshot, ports) == psutil_view(ports)
    assert snapshot.implementation == "psutil"


@pytest.mark.parametrize("impl", ["auto", "psutil"])
def test_own_process_and_direction(test_sockets, impl):
    ports, held, listeners = test_sockets
    snapshot = live.collect(include_loopback=True, impl=None if impl == "auto" else impl)
    b = snapshot.batch.to_pydict()
    me = psutil.Process()
    rows = [dict(zip(b, values)) for values in zip(*b.values())]
    tcp4 = [r for r in rows if ports["tcp4"] in (r["lport"], r["rport"]) and r["proto"] == "tcp"]
    assert len(tcp4) == 40
    for r in tcp4:
        assert r["pid"] == os.getpid()
        assert r["name"] == me.name() and r["command"] == " ".join(me.cmdline()) and r["exe"] == me.exe()
        assert r["user"] == me.username()
        assert r["direction"] == ("inbound" if r["lport"] == ports["tcp4"] else "outbound")
        assert r["check_local"] is False and r["family"] == 4 and r["status"] == "ESTABLISHED"
    udp = [r for r in rows if r["rport"] == ports["udp"]]
    assert len(udp) == 6 and {r["proto"] for r in udp} == {"udp"} and {r["status"] for r in udp} == {"NONE"}
    if "dual" in ports:
        dual = [r for r in rows if r["lport"] == ports["dual"]]
        assert len(dual) == 5 and {(r["lip"], r["rip"], r["family"]) for r in dual} == {("127.0.0.1", "127.0.0.1", 4)}
    assert ("tcp", ports["tcp4"]) in snapshot.listening and ("udp", ports["udp"]) in snapshot.listening
    assert snapshot.records_read == snapshot.batch.num_rows + sum(snapshot.skipped.values())


@pytest.mark.parametrize("impl", ["auto", "psutil"])
def test_loopback_and_listening_are_skipped_by_default(test_sockets, impl):
    ports, held, listeners = test_sockets
    snapshot = live.collect(impl=None if impl == "auto" else impl)
    b = snapshot.batch.to_pydict()
    assert not any(ports["tcp4"] in (lp, rp) for lp, rp in zip(b["lport"], b["rport"]))
    assert snapshot.skipped["loopback"] >= len(held)
    assert snapshot.skipped["listening"] >= 1
    assert ("tcp", ports["tcp4"]) in snapshot.listening
    assert snapshot.records_read == snapshot.batch.num_rows + sum(snapshot.skipped.values())
    for column in live.COLUMNS:
        assert column in snapshot.batch.column_names


def test_batch_types(test_sockets):
    snapshot = live.collect(include_loopback=True)
    schema = snapshot.batch.schema
    assert [str(schema.field(c).type) for c in ("lport", "rport", "pid", "family")] == ["int32", "int32", "int64", "int8"]
    assert all(str(schema.field(c).type) == "string" for c in ("lip", "rip", "proto", "status", "direction"))
    # per-process text is stored once per process, not once per socket
    assert all(str(schema.field(c).type) == "dictionary<values=string, indices=int32, ordered=0>"
               for c in ("name", "command", "exe", "user"))
    assert str(schema.field("check_local").type) == "bool"


# --- the common finishing step on hand-made rows ------------------------------------------


def raw_rows(rows):
    """The internal raw columns from (lip, lport, rip, rport, proto, status, remote, pid, ownerless)."""
    import pyarrow as pa

    return {
        "lip": pa.array([r[0] for r in rows], pa.string()),
        "rip": pa.array([r[2] for r in rows], pa.string()),
        "lport": np.array([r[1] for r in rows], np.int32),
        "rport": np.array([r[3] for r in rows], np.int32),
        "proto": np.array([live.PROTOCOLS.index(r[4]) for r in rows], np.uint8),
        "family": np.array([4] * len(rows), np.int8),
        "status": np.array([live.STATUS_NAMES.index(r[5]) for r in rows], np.uint8),
        "remote": np.array([r[6] for r in rows], np.uint8),
        "pid": np.array([r[7] for r in rows], np.int64),
        "uid": np.array([-1] * len(rows), np.int64),
        "ownerless": np.array([r[8] for r in rows], bool),
    }


def test_finish_counts_unowned_sockets_and_warns_once(monkeypatch):
    monkeypatch.setattr(live, "_process_info", lambda pid: ("srv", "srv -d", "/usr/sbin/srv", "root"))
    rows = [
        ("0.0.0.0", 80, "0.0.0.0", 0, "tcp", "LISTEN", 2, 10, False),
        ("10.0.0.1", 80, "198.51.100.1", 5555, "tcp", "ESTABLISHED", 0, 10, False),
        ("10.0.0.1", 40000, "198.51.100.2", 443, "tcp", "ESTABLISHED", 0, -1, False),
        ("10.0.0.1", 40001, "198.51.100.3", 443, "tcp", "ESTABLISHED", 0, -1, False),
        ("10.0.0.1", 40002, "198.51.100.4", 443, "tcp", "TIME_WAIT", 0, -1, True),
        ("0.0.0.0", 53, "0.0.0.0", 0, "udp", "NONE", 2, 10, False),
        ("10.0.0.1", 53, "198.51.100.5", 3333, "udp", "NONE", 0, 10, False),
        ("127.0.0.1", 6000, "127.0.0.1", 6001, "tcp", "ESTABLISHED", 1, 10, False),
    ]
    snapshot = live._finish(raw_rows(rows), False, len(rows), Counter(), [], "test")
    b = snapshot.batch.to_pydict()
    assert b["rport"] == [5555, 443, 443, 443, 3333]
    assert b["direction"] == ["inbound", "outbound", "outbound", "outbound", "inbound"]
    assert b["name"] == ["srv", "", "", "", "srv"] and b["pid"] == [10, -1, -1, -1, 10]
    assert snapshot.no_process == 2  # the TIME_WAIT socket belongs to nobody by nature
    assert sum("2 sockets without a process" in w for w in snapshot.warnings) == 1
    assert snapshot.skipped == Counter({"listening": 1, "unconnected": 1, "loopback": 1})
    assert snapshot.listening == {("tcp", 80), ("udp", 53)}


def test_include_loopback_also_evaluates_unconnected_sockets(monkeypatch):
    monkeypatch.setattr(live, "_process_info", lambda pid: ("srv", "srv", "/srv", "root"))
    rows = [
        ("0.0.0.0", 80, "0.0.0.0", 0, "tcp", "LISTEN", 2, 10, False),
        ("0.0.0.0", 53, "0.0.0.0", 0, "udp", "NONE", 2, 10, False),
        ("::1", 6000, "::1", 6001, "tcp", "ESTABLISHED", 1, 10, False),
    ]
    snapshot = live._finish(raw_rows(rows), True, 3, Counter(), [], "test")
    b = snapshot.batch.to_pydict()
    assert list(zip(b["lip"], b["lport"], b["rip"], b["rport"], b["direction"])) == [
        ("0.0.0.0", 53, "0.0.0.0", -1, "inbound"), ("::1", 6000, "::1", 6001, "outbound"),
    ]
    assert snapshot.skipped == Counter({"listening": 1})


def test_user_of_a_socket_without_process_comes_from_its_uid(monkeypatch):
    pwd = pytest.importorskip("pwd")
    rows = [
        ("10.0.0.1", 1000, "198.51.100.1", 80, "tcp", "ESTABLISHED", 0, -1, False),
        ("10.0.0.1", 1001, "198.51.100.1", 80, "tcp", "TIME_WAIT", 0, -1, True),
    ]
    raw = raw_rows(rows)
    raw["uid"] = np.array([os.getuid(), 0], np.int64)
    snapshot = live._finish(raw, False, 2, Counter(), [], "test")
    assert snapshot.batch.to_pydict()["user"] == [pwd.getpwuid(os.getuid()).pw_name, ""]


def test_process_that_exits_mid_scan_is_skipped(monkeypatch):
    monkeypatch.setattr(live, "_process_info", lambda pid: None if pid == 11 else ("a", "a", "/a", "u"))
    rows = [
        ("10.0.0.1", 1000, "198.51.100.1", 80, "tcp", "ESTABLISHED", 0, 11, False),
        ("10.0.0.1", 1001, "198.51.100.1", 80, "tcp", "ESTABLISHED", 0, 12, False),
    ]
    snapshot = live._finish(raw_rows(rows), False, 2, Counter(), [], "test")
    assert snapshot.batch.to_pydict()["pid"] == [12]
    assert snapshot.skipped == Counter({"process-exited": 1})
    assert snapshot.warnings == []


def test_process_info_of_an_exited_pid_is_none():
    child = psutil.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert live._process_info(child.pid) is None


# --- selection and fallback --------------------------------------------------------------


@linux_only
def test_netlink_failure_falls_back_to_proc_text(monkeypatch, test_sockets):
    proc_mod = _native.load("proc")

    def refuse(*args):
        raise OSError(97, "no netlink here")

    monkeypatch.setattr(proc_mod, "read_sock_diag", refuse)
    snapshot = live.collect(include_loopback=True)
    assert snapshot.table_sources["tcp"] == "/proc/net/tcp"
    assert batch_view(snapshot, test_sockets[0]) == psutil_view(test_sockets[0])


def test_fast_path_failure_falls_back_to_psutil(monkeypatch):
    def broken(*args, **kwargs):
        raise OSError(13, "no /proc")

    monkeypatch.setattr(live, "_collect_proc", broken)
    if not (sys.platform.startswith("linux") and os.path.exists("/proc/net/tcp")):
        pytest.skip("the fast path is only tried on Linux")
    snapshot = live.collect()
    assert snapshot.implementation == "psutil"
    assert "used psutil instead" in snapshot.warnings[0]


def test_unknown_choices_are_errors():
    with pytest.raises(ValueError):
        live.collect(impl="ebpf")
    with pytest.raises(ValueError):
        live.collect(tables="bpf")


_AS_NOBODY = """
import json, sys
from connscan import live
out = {}
for impl in sys.argv[1:]:
    s = live.collect(include_loopback=True, impl=impl)
    b = s.batch.to_pydict()
    out[impl] = {"rows": list(zip(b["lport"], b["rport"], b["pid"], b["user"])), "warnings": s.warnings,
                 "no_process": s.no_process, "balanced": s.records_read == s.batch.num_rows + sum(s.skipped.values())}
print(json.dumps(out))
"""


@linux_only
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to drop to nobody")
def test_without_root_sockets_are_reported_without_process_and_warned_once(test_sockets):
    import json
    import shutil
    import subprocess

    if not shutil.which("setpriv"):
        pytest.skip("setpriv not installed")
    ports, _, _ = test_sockets
    impls = _native.implementations("proc") + ["psutil"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", _AS_NOBODY, *impls],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    for impl, result in json.loads(done.stdout).items():
        mine = [r for r in result["rows"] if ports["tcp4"] in (r[0], r[1])]
        assert len(mine) == 40, impl
        assert {r[2] for r in mine} == {-1}, impl  # root's sockets: no process visible to nobody
        assert result["no_process"] >= 40 and result["balanced"]
        assert sum("sockets without a process: run as root" in w for w in result["warnings"]) == 1
        if impl != "psutil":
            assert {r[3] for r in mine} == {"root"}  # the socket's uid still names its owner
