"""Live socket collection: every TCP and UDP socket of this host, with its process, as one batch.

On Linux the socket tables are read in native code (connscan._proc_c, twin _proc_py):
netlink sock_diag dumps, or the text of /proc/net/tcp, tcp6, udp, udp6 where sock_diag
is unavailable; socket inodes are mapped to PIDs with one walk of /proc/[pid]/fd (run
beside the dumps), and psutil is asked for name, command line, executable and user once
per PID. Everywhere else (or when that fails) psutil.net_connections is the source.
Both paths give the same columns; the Linux path creates no Python object per socket.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc

from connscan import _native
# What the remote address of a row is: the codes both socket-table parsers return.
from connscan._proc_py import REMOTE_LOOPBACK, REMOTE_NORMAL, REMOTE_UNSPECIFIED

# Index = status code of a row; /proc tcp states 1..12 keep their kernel numbers.
STATUS_NAMES = (
    "NONE",  # UDP (psutil's name for "no state")
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
    "NEW_SYN_RECV",
    "UNKNOWN",
)
_STATUS_CODE = {name: code for code, name in enumerate(STATUS_NAMES)}
_LISTEN = _STATUS_CODE["LISTEN"]
_UNKNOWN = _STATUS_CODE["UNKNOWN"]
PROTOCOLS = ("tcp", "udp")
_TCP, _UDP = 0, 1
DIRECTIONS = ("outbound", "inbound")

# (file under <proc>/net, IPv6 table, protocol code)
_PROC_TABLES = (("tcp", False, _TCP), ("tcp6", True, _TCP), ("udp", False, _UDP), ("udp6", True, _UDP))

COLUMNS = (
    "lip", "lport", "rip", "rport", "proto", "family", "status", "pid",
    "name", "command", "exe", "user", "direction", "check_local",
)


@dataclass
class LiveSnapshot:
    """The evaluated sockets of one scan and the account of the others.

    ``records_read == batch.num_rows + sum(skipped.values())``.
    """

    batch: pa.Table
    listening: set = field(default_factory=set)  # {(proto, port)} this host listens on
    records_read: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> sockets not evaluated
    warnings: list = field(default_factory=list)
    no_process: int = 0  # evaluated sockets whose process could not be seen
    implementation: str = ""  # "c", "py" (the /proc fast path) or "psutil"
    table_sources: dict = field(default_factory=dict)  # fast path: table -> "netlink" or its file


def collect(include_loopback: bool = False, impl: str | None = None, tables: str = "netlink") -> LiveSnapshot:
    """Collect this host's TCP and UDP sockets (IPv4 and IPv6) with their processes.

    impl: None picks the /proc fast path on Linux (compiled or twin, see connscan._native)
    and falls back to psutil on error or elsewhere; "c", "py" or "psutil" force one.
    Listening sockets are never evaluated (they give ``listening``, for direction);
    sockets with a loopback peer or none (remote 0.0.0.0 / ::, rport -1) only with
    include_loopback.
    tables (fast path): "netlink" reads the socket tables over netlink sock_diag (falling
    back to /proc/net per table where it is unavailable), "proc" reads /proc/net only.
    """
    if tables not in ("netlink", "proc"):
        raise ValueError(f"unknown socket table source {tables!r} (netlink, proc)")
    if impl == "psutil":
        return _collect_psutil(include_loopback)
    if impl in ("c", "py"):
        return _collect_proc(_native.load("proc", impl=impl), include_loopback, tables)
    if impl is not None:
        raise ValueError(f"unknown live collection implementation {impl!r} (c, py, psutil)")
    if not (sys.platform.startswith("linux") and os.path.exists("/proc/net/tcp")):
        return _collect_psutil(include_loopback)
    try:
        return _collect_proc(_native.load("proc"), include_loopback, tables)
    except OSError as exc:
        snapshot = _collect_psutil(include_loopback)
        snapshot.warnings.insert(0, f"/proc fast path failed ({exc}); used psutil instead")
        return snapshot


# --- Linux fast path ---------------------------------------------------------------------


def _read(path: str) -> bytes:
    # The kernel generates these files per read: big reads mean few passes.
    chunks = []
    with open(path, "rb", buffering=0) as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def _text_array(text: bytes, offsets: np.ndarray) -> pa.Array:
    return pa.StringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets), pa.py_buffer(text))


def _read_table(proc, name: str, family: int, protocol: int, ipv6: bool, tables: str,
                proc_root: str, sources: dict) -> dict | None:
    """One socket table: netlink sock_diag if asked and available, else <proc>/net/<name>."""
    if tables == "netlink":
        try:
            table = proc.read_sock_diag(family, protocol, f"sock_diag {name}")
            sources[name] = "netlink"
            return table
        except OSError:
            pass  # no sock_diag here (or no udp_diag module): the text table has it all
    path = f"{proc_root}/net/{name}"
    try:
        data = _read(path)
    except FileNotFoundError:
        if ipv6:
            return None  # a kernel without IPv6
        raise
    sources[name] = path
    return proc.parse_net_table(data, ipv6, path)


def _collect_proc(proc, include_loopback: bool, tables: str = "netlink", proc_root: str = "/proc") -> LiveSnapshot:
    """The Linux fast path with module proc (_proc_c or _proc_py); proc_root for tests."""
    skipped: Counter = Counter()
    warnings: list[str] = []
    sources: dict[str, str] = {}
    records_read = 0
    parts = []
    # The fd walk and the table dumps are independent kernel work: run them side by side.
    threads = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(1) as pool:
        walk = pool.submit(proc.socket_owners, proc_root, threads)
        for name, ipv6, proto in _PROC_TABLES:
            family = socket.AF_INET6 if ipv6 else socket.AF_INET
            protocol = socket.IPPROTO_UDP if proto == _UDP else socket.IPPROTO_TCP
            table = _read_table(proc, name, family, protocol, ipv6, tables, proc_root, sources)
            if table is None:
                continue
            records_read += len(table["lport"]) + table["bad_lines"]
            if table["bad_lines"]:
                skipped["malformed"] += table["bad_lines"]
                where, reason = table["line_errors"][0]
                warnings.append(f"{where}: {reason} ({table['bad_lines']} malformed lines in {sources[name]} skipped)")
            parts.append((proto, table))
        owner_inodes, owner_pids, counts = walk.result()

    # parts is never empty: the IPv4 TCP table is read or an OSError was raised.
    def column(key):
        return np.concatenate([t[key] for _, t in parts])

    protos = np.concatenate([np.full(len(t["lport"]), p, np.uint8) for p, t in parts])
    state = column("state")
    status = np.where(protos == _UDP, 0, np.where((state >= 1) & (state <= 12), state, _UNKNOWN)).astype(np.uint8)
    inode = column("inode")

    raw = {
        "lip": pa.concat_arrays([_text_array(t["lip_text"], t["lip_offsets"]) for _, t in parts]),
        "rip": pa.concat_arrays([_text_array(t["rip_text"], t["rip_offsets"]) for _, t in parts]),
        "lport": column("lport").astype(np.int32),
        "rport": column("rport").astype(np.int32),
        "proto": protos,
        "family": column("family").astype(np.int8),
        "status": status,
        "remote": column("remote").astype(np.uint8),
        "pid": _owner_pids(inode, owner_inodes, owner_pids),
        "uid": column("uid").astype(np.int64),
        # Sockets with inode 0 (TIME_WAIT, request sockets) belong to no process by nature.
        "ownerless": inode == 0,
    }
    if counts["denied"]:
        warnings.append(f"could not read the open files of {counts['denied']} processes (permission denied)")
    if counts["failed"]:
        warnings.append(f"could not read the open files of {counts['failed']} processes (errors other than permission)")
    if counts["bad_links"]:
        warnings.append(f"{counts['bad_links']} unreadable socket links under {proc_root}/*/fd skipped")
    snapshot = _finish(raw, include_loopback, records_read, skipped, warnings, proc.__name__.rsplit("_", 1)[-1])
    snapshot.table_sources = sources
    return snapshot


def _owner_pids(inode: np.ndarray, owner_inodes: np.ndarray, owner_pids: np.ndarray) -> np.ndarray:
    """PID of each socket inode (the lowest, if processes share it), -1 if none was seen."""
    pids = np.full(len(inode), -1, np.int64)
    if not len(owner_inodes):
        return pids
    order = np.lexsort((owner_pids, owner_inodes))  # by inode, then pid
    sorted_inodes = owner_inodes[order]
    first = np.r_[True, sorted_inodes[1:] != sorted_inodes[:-1]]
    keys, values = sorted_inodes[first], owner_pids[order][first]
    pos = np.minimum(np.searchsorted(keys, inode), len(keys) - 1)
    found = keys[pos] == inode
    pids[found] = values[pos[found]]
    return pids


# --- portable path (psutil) --------------------------------------------------------------


def _address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """psutil address text (maybe with a %zone) -> address; ::ffff:a.b.c.d becomes IPv4."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _psutil_connections(warnings: list[str]) -> list[tuple]:
    """(family, type, laddr, raddr, status, pid) of every inet socket psutil can see."""
    try:
        return [(c.family, c.type, c.laddr, c.raddr, c.status, c.pid) for c in psutil.net_connections(kind="inet")]
    except psutil.AccessDenied:
        pass
    # macOS and others need root for the system-wide call: ask each process we may see.
    rows, denied = [], 0
    for process in psutil.process_iter():
        # psutil < 6 names the method "connections".
        method = getattr(process, "net_connections", None) or process.connections
        try:
            rows.extend((c.family, c.type, c.laddr, c.raddr, c.status, process.pid) for c in method(kind="inet"))
        except psutil.NoSuchProcess:
            continue
        except psutil.AccessDenied:
            denied += 1
    if denied:
        warnings.append(f"could not read the sockets of {denied} processes (permission denied)")
    return rows


def _collect_psutil(include_loopback: bool) -> LiveSnapshot:
    warnings: list[str] = []
    connections = _psutil_connections(warnings)
    n = len(connections)
    lip, rip = [], []
    lport = np.zeros(n, np.int32)
    rport = np.zeros(n, np.int32)
    protos = np.zeros(n, np.uint8)
    family = np.zeros(n, np.int8)
    status = np.zeros(n, np.uint8)
    remote = np.zeros(n, np.uint8)
    pid = np.full(n, -1, np.int64)
    ownerless = np.zeros(n, bool)
    for i, (sock_family, sock_type, laddr, raddr, state, owner) in enumerate(connections):
        protos[i] = _UDP if sock_type == socket.SOCK_DGRAM else _TCP
        lip.append(str(_address(laddr.ip)) if laddr else "")
        lport[i] = laddr.port if laddr else 0
        if raddr:
            addr = _address(raddr.ip)
            rport[i] = raddr.port
            remote[i] = REMOTE_LOOPBACK if addr.is_loopback else REMOTE_UNSPECIFIED if addr.is_unspecified else REMOTE_NORMAL
        else:
            addr = ipaddress.ip_address("0.0.0.0" if sock_family == socket.AF_INET else "::")
            remote[i] = REMOTE_UNSPECIFIED
        rip.append(str(addr))
        family[i] = addr.version
        status[i] = 0 if protos[i] == _UDP else _STATUS_CODE.get(state, _UNKNOWN)
        pid[i] = owner if owner is not None else -1
        ownerless[i] = state == "TIME_WAIT"
    raw = {
        "lip": pa.array(lip, pa.string()),
        "rip": pa.array(rip, pa.string()),
        "lport": lport,
        "rport": rport,
        "proto": protos,
        "family": family,
        "status": status,
        "remote": remote,
        "pid": pid,
        "uid": np.full(n, -1, np.int64),
        "ownerless": ownerless,
    }
    return _finish(raw, include_loopback, n, Counter(), warnings, "psutil")


# --- common: skip, direction, processes, batch ---------------------------------------------


def _process_info(pid: int) -> tuple[str, str, str, str] | None:
    """(name, command line, executable, user) of a PID; None if it has exited."""
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            name = process.name()
            command = _or_empty(lambda: " ".join(process.cmdline()))
            exe = _or_empty(process.exe)
            user = _or_empty(process.username)
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        return ("", "", "", "")
    return name, command, exe, user


def _or_empty(getter) -> str:
    try:
        return getter() or ""
    except (psutil.AccessDenied, KeyError):
        return ""


def _user_of_uid(uid: int) -> str:
    import pwd  # POSIX only; uids are only known on the /proc path

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _count(skipped: Counter, reason: str, mask: np.ndarray) -> None:
    n = int(mask.sum())
    if n:
        skipped[reason] += n


def _positions(keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Index of each wanted value in the sorted keys, -1 where it is not one."""
    pos = np.full(len(wanted), -1, np.int64)
    if len(keys):
        found = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        hit = keys[found] == wanted
        pos[hit] = found[hit]
    return pos


def _dictionary(values: list[str], pos: np.ndarray) -> pa.DictionaryArray:
    """values[pos] per row ("" for -1), dictionary-encoded: a process's command line
    (kilobytes for a Java server) is stored once, not once per socket."""
    table = pa.array(list(values) + [""], pa.string())
    return pa.DictionaryArray.from_arrays(pa.array(np.where(pos < 0, len(values), pos), pa.int32()), table)


def _finish(raw: dict, include_loopback: bool, records_read: int, skipped: Counter,
            warnings: list[str], implementation: str) -> LiveSnapshot:
    proto, status, remote, lport = raw["proto"], raw["status"], raw["remote"], raw["lport"]
    listening = (proto == _TCP) & (status == _LISTEN)
    unconnected = ~listening & ((raw["rport"] == 0) | (remote == REMOTE_UNSPECIFIED))
    loopback = ~listening & ~unconnected & (remote == REMOTE_LOOPBACK)
    tcp_ports = np.unique(lport[listening])
    # A bound, unconnected UDP socket is how a UDP server listens.
    udp_ports = np.unique(lport[(proto == _UDP) & unconnected])
    _count(skipped, "listening", listening)
    keep = ~listening
    if not include_loopback:
        _count(skipped, "unconnected", unconnected)
        _count(skipped, "loopback", loopback)
        keep &= ~(unconnected | loopback)

    pid = raw["pid"]
    pids = np.unique(pid[keep & (pid >= 0)])
    infos = {int(p): _process_info(int(p)) for p in pids}
    exited = np.array(sorted(p for p, info in infos.items() if info is None), np.int64)
    gone = keep & np.isin(pid, exited)
    _count(skipped, "process-exited", gone)
    keep &= ~gone
    alive = np.array(sorted(p for p, info in infos.items() if info is not None), np.int64)
    info_rows = [infos[int(p)] for p in alive]

    rows = np.nonzero(keep)[0]
    row_pid = pid[rows]
    no_process = int((~raw["ownerless"][rows] & (row_pid < 0)).sum())
    if no_process:
        hint = "run as root to see them" if hasattr(os, "geteuid") and os.geteuid() != 0 else "their owners are not visible here"
        warnings.append(f"{no_process} sockets without a process: {hint}")

    pid_pos = _positions(alive, row_pid)
    # Without a process, the socket's owner uid still says who opened it (an ownerless
    # TIME_WAIT socket reports uid 0, which says nothing).
    row_uid = raw["uid"][rows]
    by_socket = (row_pid < 0) & ~raw["ownerless"][rows] & (row_uid >= 0)
    socket_uids = np.unique(row_uid[by_socket])
    uid_pos = _positions(socket_uids, np.where(by_socket, row_uid, -1))
    user_pos = np.where(by_socket & (uid_pos >= 0), len(alive) + uid_pos, pid_pos)
    users = [i[3] for i in info_rows] + [_user_of_uid(int(u)) for u in socket_uids]

    row_proto = proto[rows]
    row_lport = lport[rows]
    inbound = np.where(row_proto == _TCP, np.isin(row_lport, tcp_ports), np.isin(row_lport, udp_ports))
    take = pa.array(rows)
    batch = pa.table({
        "lip": raw["lip"].take(take),
        "lport": pa.array(row_lport, pa.int32()),
        "rip": raw["rip"].take(take),
        "rport": pa.array(np.where(raw["rport"][rows] == 0, -1, raw["rport"][rows]), pa.int32()),  # -1: none
        "proto": pc.take(pa.array(PROTOCOLS), pa.array(row_proto)),
        "family": pa.array(raw["family"][rows], pa.int8()),
        "status": pc.take(pa.array(STATUS_NAMES), pa.array(raw["status"][rows])),
        "pid": pa.array(row_pid, pa.int64()),
        "name": _dictionary([i[0] for i in info_rows], pid_pos),
        "command": _dictionary([i[1] for i in info_rows], pid_pos),
        "exe": _dictionary([i[2] for i in info_rows], pid_pos),
        "user": _dictionary(users, user_pos),
        "direction": pc.take(pa.array(DIRECTIONS), pa.array(inbound.astype(np.int8))),
        "check_local": pa.array(np.zeros(len(rows), bool)),
    })
    listening_set = {("tcp", int(p)) for p in tcp_ports} | {("udp", int(p)) for p in udp_ports}
    return LiveSnapshot(batch, listening_set, records_read, skipped, warnings, no_process, implementation)
