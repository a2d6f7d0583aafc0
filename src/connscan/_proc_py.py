"""Pure-Python twin of connscan._proc_c: socket tables (/proc/net text or netlink
sock_diag) and the /proc/[pid]/fd walk.

Same functions, same validation, same results; the reference the native module is tested
against, and the fallback where the extension is not built.
"""
from __future__ import annotations

import ipaddress
import os
import re
import socket
import struct
import sys

import numpy as np

REMOTE_NORMAL = 0
REMOTE_LOOPBACK = 1
REMOTE_UNSPECIFIED = 2

LINE_ERRORS = (
    "",
    "fewer than 10 fields",
    "bad slot number",
    "bad local address",
    "bad remote address",
    "bad state",
    "bad queue sizes",
    "bad timer",
    "bad retransmit count",
    "bad uid",
    "bad timeout",
    "bad inode",
)
MAX_LINE_ERRORS = 20

_TOKEN = re.compile(rb"[^ \t]+")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_DEC = re.compile(rb"[0-9]{1,19}")
_MAPPED_PREFIX = bytes(10) + b"\xff\xff"


class _BadLine(Exception):
    def __init__(self, code: int):
        self.code = code


def _hex(token: bytes, code: int) -> int:
    if not _HEX.fullmatch(token):
        raise _BadLine(code)
    return int(token, 16)


def _dec(token: bytes, code: int) -> int:
    if not _DEC.fullmatch(token):
        raise _BadLine(code)
    return int(token)


def _hex_pair(token: bytes, code: int) -> None:
    left, colon, right = token.partition(b":")
    if not colon:
        raise _BadLine(code)
    _hex(left, code)
    _hex(right, code)


def _endpoint(token: bytes, ipv6: bool, code: int) -> tuple[bytes, int]:
    width = 32 if ipv6 else 8
    if len(token) != width + 5 or token[width : width + 1] != b":":
        raise _BadLine(code)
    # The kernel prints each 32-bit group of the address as a host-order integer.
    packed = b"".join(
        _hex(token[i : i + 8], code).to_bytes(4, sys.byteorder) for i in range(0, width, 8)
    )
    port = token[width + 1 :]
    if len(port) != 4:
        raise _BadLine(code)
    return packed, _hex(port, code)


def _text(packed: bytes) -> str:
    if len(packed) == 16 and packed.startswith(_MAPPED_PREFIX):
        packed = packed[12:]
    return str(ipaddress.ip_address(packed))


def _remote_kind(packed: bytes) -> int:
    if len(packed) == 16 and packed.startswith(_MAPPED_PREFIX):
        packed = packed[12:]
    if len(packed) == 4:
        if packed[0] == 127:
            return REMOTE_LOOPBACK
        return REMOTE_UNSPECIFIED if packed == bytes(4) else REMOTE_NORMAL
    if packed == bytes(16):
        return REMOTE_UNSPECIFIED
    return REMOTE_LOOPBACK if packed == bytes(15) + b"\x01" else REMOTE_NORMAL


def _parse_line(line: bytes, ipv6: bool):
    tokens = _TOKEN.findall(line)
    if len(tokens) < 10:
        raise _BadLine(1)
    slot = tokens[0]
    if len(slot) < 2 or not slot.endswith(b":"):
        raise _BadLine(2)
    _dec(slot[:-1], 2)
    laddr, lport = _endpoint(tokens[1], ipv6, 3)
    raddr, rport = _endpoint(tokens[2], ipv6, 4)
    if len(tokens[3]) != 2:
        raise _BadLine(5)
    state = _hex(tokens[3], 5)
    _hex_pair(tokens[4], 6)
    _hex_pair(tokens[5], 7)
    _hex(tokens[6], 8)
    uid = _dec(tokens[7], 9)
    if uid > 0xFFFFFFFF:
        raise _BadLine(9)
    _dec(tokens[8], 10)
    inode = _dec(tokens[9], 11)
    return laddr, lport, raddr, rport, state, uid, inode


def _is_header(line: bytes) -> bool:
    stripped = line.lstrip(b" ")
    return stripped[:3] == b"sl "


def _text_column(texts: list[str]) -> tuple[bytes, np.ndarray]:
    encoded = [t.encode() for t in texts]
    offsets = np.zeros(len(encoded) + 1, np.int32)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return b"".join(encoded), offsets


def _columns(rows: list, ipv6: bool, bad: int, errors: list) -> dict:
    """(laddr, lport, raddr, rport, state, uid, inode) rows -> the columns of connscan._proc_c."""
    lip_text, lip_offsets = _text_column([_text(r[0]) for r in rows])
    rip_text, rip_offsets = _text_column([_text(r[2]) for r in rows])
    return {
        "lport": np.array([r[1] for r in rows], np.int32),
        "rport": np.array([r[3] for r in rows], np.int32),
        "state": np.array([r[4] for r in rows], np.uint8),
        "uid": np.array([r[5] for r in rows], np.uint32),
        "inode": np.array([r[6] for r in rows], np.uint64),
        "family": np.array(
            [6 if ipv6 and not r[2].startswith(_MAPPED_PREFIX) else 4 for r in rows], np.uint8
        ),
        "remote": np.array([_remote_kind(r[2]) for r in rows], np.uint8),
        "lip_text": lip_text,
        "lip_offsets": lip_offsets,
        "rip_text": rip_text,
        "rip_offsets": rip_offsets,
        "bad_lines": bad,
        "line_errors": errors,
    }


def parse_net_table(data, ipv6: bool, source: str) -> dict:
    """Parse the text of one /proc/net/{tcp,tcp6,udp,udp6} file (see connscan._proc_c)."""
    rows = []
    bad = 0
    errors = []
    for line_no, line in enumerate(bytes(data).split(b"\n"), start=1):
        if (line_no == 1 and _is_header(line)) or not line:
            continue
        try:
            rows.append(_parse_line(line, ipv6))
        except _BadLine as exc:
            bad += 1
            if len(errors) < MAX_LINE_ERRORS:
                errors.append((f"{source}:{line_no}", LINE_ERRORS[exc.code]))
    return _columns(rows, ipv6, bad, errors)


# Netlink sock_diag (linux/sock_diag.h, linux/inet_diag.h).
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
_INET_DIAG_MSG = struct.Struct("=BBBB2s2s16s16sI8sIIIII")  # struct inet_diag_msg, 72 bytes


def _diag_rows(chunk: bytes, family: int, source: str, rows: list) -> bool:
    """One recv() of a sock_diag dump -> rows; True when the dump is complete."""
    off = 0
    while off < len(chunk):
        if len(chunk) - off < _HEADER.size:
            raise OSError(f"{source}: malformed sock_diag message")
        length, kind = _HEADER.unpack_from(chunk, off)[:2]
        if length < _HEADER.size or length > len(chunk) - off:
            raise OSError(f"{source}: malformed sock_diag message")
        body = off + _HEADER.size
        if kind == _NLMSG_DONE:
            return True
        if kind == _NLMSG_ERROR:
            if length < _HEADER.size + 4:
                raise OSError(f"{source}: malformed sock_diag message")
            error = -struct.unpack_from("=i", chunk, body)[0]
            raise OSError(error, f"{source}: sock_diag error: {os.strerror(error)}")
        if kind == _SOCK_DIAG_BY_FAMILY:
            if length < _HEADER.size + _INET_DIAG_MSG.size:
                raise OSError(f"{source}: malformed sock_diag message")
            fam, state, _, _, sport, dport, src, dst, _, _, _, _, _, uid, inode = _INET_DIAG_MSG.unpack_from(chunk, body)
            if fam != family:
                raise OSError(f"{source}: sock_diag answered for another address family")
            if family == socket.AF_INET:
                src, dst = src[:4], dst[:4]
            rows.append((src, int.from_bytes(sport, "big"), dst, int.from_bytes(dport, "big"), state, uid, inode))
        off += (length + 3) & ~3  # NLMSG_ALIGN
    return False


def parse_diag_messages(data, family: int, source: str) -> dict:
    """Rows of sock_diag messages already received (see connscan._proc_c)."""
    rows: list = []
    _diag_rows(bytes(data), family, source, rows)
    return _columns(rows, family == socket.AF_INET6, 0, [])


def read_sock_diag(family: int, protocol: int, source: str) -> dict:
    """Dump every socket of (family, protocol) over netlink sock_diag (see connscan._proc_c)."""
    request = _HEADER.pack(_HEADER.size + 56, _SOCK_DIAG_BY_FAMILY, 0x301, 0, 0)  # REQUEST|DUMP
    request += struct.pack("=BBBBI", family, protocol, 0, 0, 0xFFFFFFFF) + bytes(48)  # every state
    try:
        sock = socket.socket(16, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG)  # 16 = AF_NETLINK
    except OSError as exc:
        raise OSError(exc.errno, f"{source}: cannot open a netlink sock_diag socket") from exc
    rows: list = []
    with sock:
        sock.send(request)
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError(f"{source}: sock_diag dump ended without NLMSG_DONE")
            if _diag_rows(chunk, family, source, rows):
                break
    return _columns(rows, family == socket.AF_INET6, 0, [])


def _socket_inode(link: str) -> int | None:
    """"socket:[12345]" -> 12345; None if not a socket; -1 if a malformed socket link."""
    if not link.startswith("socket:["):
        return None
    digits = link[8:-1]
    if not link.endswith("]") or not _DEC.fullmatch(digits.encode()):
        return -1
    return int(digits)


def socket_owners(proc_root: str = "/proc", threads: int = 1):
    """One walk of <proc_root>/[pid]/fd: every socket fd as (inode uint64[], pid int32[], counts).

    threads is accepted for the native module's signature; this twin walks on one thread.
    """
    inodes: list[int] = []
    pids: list[int] = []
    counts = {"processes": 0, "vanished": 0, "denied": 0, "failed": 0, "bad_links": 0}
    with os.scandir(proc_root) as processes:
        for process in processes:
            name = process.name
            if not (name.isascii() and name.isdigit() and len(name) <= 19) or int(name) > 0x7FFFFFFF:
                continue  # not a process folder
            try:
                fds = os.scandir(os.path.join(proc_root, name, "fd"))
            except (FileNotFoundError, ProcessLookupError):
                counts["vanished"] += 1
                continue
            except PermissionError:
                counts["denied"] += 1
                continue
            except OSError:
                counts["failed"] += 1
                continue
            counts["processes"] += 1
            pid = int(name)
            with fds:
                for fd in fds:
                    try:
                        link = os.readlink(fd.path)
                    except OSError:
                        continue  # closed since the listing
                    inode = _socket_inode(link)
                    if inode is None:
                        continue
                    if inode < 0:
                        counts["bad_links"] += 1
                        continue
                    inodes.append(inode)
                    pids.append(pid)
    return np.array(inodes, np.uint64), np.array(pids, np.int32), counts
