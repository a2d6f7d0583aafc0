# cython: boundscheck=False, wraparound=False, cdivision=True, language_level=3
"""Linux socket tables in native code, and the /proc/[pid]/fd walk that finds their owners.

    parse_net_table(text, ipv6, source)   /proc/net/{tcp,tcp6,udp,udp6} text -> columns
    read_sock_diag(family, protocol, source)   the same table over netlink sock_diag
    parse_diag_messages(data, family, source)  sock_diag's message parser, for replays
    socket_owners(proc_root, threads)     every socket fd of every process: (inode, pid)

Twin of connscan._proc_py (same functions, same results). Nothing read is trusted: every
field of every text line is validated (a bad line is counted with its line number and
reason, not used) and every netlink message length is checked against the buffer.
"""
import os
import sys

import numpy as np

cimport numpy as cnp
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memchr, memcmp, memcpy, memset

cnp.import_array()

cdef extern from "<dirent.h>" nogil:
    ctypedef struct DIR:
        pass
    struct dirent:
        char d_name[256]
    DIR* fdopendir(int fd)
    dirent* readdir(DIR* d)
    int closedir(DIR* d)
    int dirfd(DIR* d)

cdef extern from "<fcntl.h>" nogil:
    int openat(int dirfd, const char* path, int flags, ...)
    int open(const char* path, int flags, ...)
    enum:
        O_RDONLY
        O_DIRECTORY
        O_CLOEXEC

cdef extern from "<unistd.h>" nogil:
    ssize_t readlinkat(int dirfd, const char* path, char* buf, size_t size)
    int close(int fd)

cdef extern from "<errno.h>" nogil:
    int errno
    enum:
        ENOENT
        ESRCH
        EACCES
        EPERM

# The row codes (remote_kind's return values) and the line-error reasons are defined once,
# in the pure-Python twin, so the two implementations cannot drift apart.
from connscan._proc_py import LINE_ERRORS, REMOTE_LOOPBACK, REMOTE_NORMAL, REMOTE_UNSPECIFIED

cdef enum:
    KEPT_LINE_ERRORS = 20  # reasons kept per table; the rest are only counted
MAX_LINE_ERRORS = KEPT_LINE_ERRORS

cdef bint LITTLE_ENDIAN = sys.byteorder == "little"
cdef const char* HEX_DIGITS = b"0123456789abcdef"


cdef inline int hex_value(char c) noexcept nogil:
    if c >= 48 and c <= 57:
        return c - 48
    if c >= 65 and c <= 70:
        return c - 55
    if c >= 97 and c <= 102:
        return c - 87
    return -1


cdef int parse_hex(const char* s, Py_ssize_t n, uint64_t* out) noexcept nogil:
    """Exactly n (1..16) hex digits -> out; -1 otherwise."""
    cdef uint64_t v = 0
    cdef Py_ssize_t i
    cdef int d
    if n < 1 or n > 16:
        return -1
    for i in range(n):
        d = hex_value(s[i])
        if d < 0:
            return -1
        v = (v << 4) | <uint64_t>d
    out[0] = v
    return 0


cdef int parse_dec(const char* s, Py_ssize_t n, uint64_t* out) noexcept nogil:
    """Exactly n (1..19) decimal digits -> out; -1 otherwise."""
    cdef uint64_t v = 0
    cdef Py_ssize_t i
    if n < 1 or n > 19:
        return -1
    for i in range(n):
        if s[i] < 48 or s[i] > 57:
            return -1
        v = v * 10 + <uint64_t>(s[i] - 48)
    out[0] = v
    return 0


cdef int hex_pair(const char* s, Py_ssize_t n) noexcept nogil:
    """A "hex:hex" token (queue sizes, timer): 0 if valid, -1 otherwise."""
    cdef const char* colon = <const char*>memchr(s, 58, n)
    cdef uint64_t ignored
    if colon == NULL:
        return -1
    if parse_hex(s, colon - s, &ignored) < 0:
        return -1
    return parse_hex(colon + 1, n - (colon - s) - 1, &ignored)


cdef int parse_endpoint(const char* s, Py_ssize_t n, bint ipv6, uint8_t* addr, int32_t* port) noexcept nogil:
    """"ADDR:PORT" -> 16 network-order bytes (IPv4 in addr[0:4]) and port; -1 if malformed."""
    cdef Py_ssize_t width = 32 if ipv6 else 8
    cdef Py_ssize_t w
    cdef uint64_t word, p
    if n != width + 5 or s[width] != 58:
        return -1
    for w in range(width // 8):
        if parse_hex(s + 8 * w, 8, &word) < 0:
            return -1
        # The kernel prints each 32-bit group of the address as a host-order integer.
        if LITTLE_ENDIAN:
            addr[4 * w] = word & 0xFF
            addr[4 * w + 1] = (word >> 8) & 0xFF
            addr[4 * w + 2] = (word >> 16) & 0xFF
            addr[4 * w + 3] = (word >> 24) & 0xFF
        else:
            addr[4 * w] = (word >> 24) & 0xFF
            addr[4 * w + 1] = (word >> 16) & 0xFF
            addr[4 * w + 2] = (word >> 8) & 0xFF
            addr[4 * w + 3] = word & 0xFF
    if parse_hex(s + width + 1, 4, &p) < 0:
        return -1
    port[0] = <int32_t>p
    return 0


cdef inline bint is_v4_mapped(const uint8_t* a) noexcept nogil:
    cdef int i
    for i in range(10):
        if a[i] != 0:
            return False
    return a[10] == 0xFF and a[11] == 0xFF


cdef Py_ssize_t write_v4(const uint8_t* a, char* out) noexcept nogil:
    cdef Py_ssize_t k = 0
    cdef int i, v
    for i in range(4):
        if i:
            out[k] = 46
            k += 1
        v = a[i]
        if v >= 100:
            out[k] = 48 + v // 100
            k += 1
        if v >= 10:
            out[k] = 48 + (v // 10) % 10
            k += 1
        out[k] = 48 + v % 10
        k += 1
    return k


cdef Py_ssize_t write_group(int g, char* out) noexcept nogil:
    cdef Py_ssize_t k = 0
    cdef int shift
    cdef bint started = False
    for shift in range(12, -1, -4):
        if started or (g >> shift) & 0xF or shift == 0:
            out[k] = HEX_DIGITS[(g >> shift) & 0xF]
            k += 1
            started = True
    return k


cdef Py_ssize_t write_v6(const uint8_t* a, char* out) noexcept nogil:
    """RFC 5952 text as Python's ipaddress writes it: longest run (>= 2) of zero groups -> "::"."""
    cdef int groups[8]
    cdef int i, run = 0, best_start = -1, best_len = 0
    cdef Py_ssize_t k = 0
    for i in range(8):
        groups[i] = (a[2 * i] << 8) | a[2 * i + 1]
        if groups[i] == 0:
            run += 1
            if run > best_len:
                best_len = run
                best_start = i - run + 1
        else:
            run = 0
    if best_len < 2:
        best_start = -1
    i = 0
    while i < 8:
        if i == best_start:
            out[k] = 58
            out[k + 1] = 58
            k += 2
            i += best_len
            continue
        if i and i != best_start + best_len:
            out[k] = 58
            k += 1
        k += write_group(groups[i], out + k)
        i += 1
    return k


cdef uint8_t remote_kind(const uint8_t* a, bint ipv6) noexcept nogil:
    cdef const uint8_t* v4 = a
    cdef int i
    if ipv6:
        if is_v4_mapped(a):
            v4 = a + 12
        else:
            for i in range(15):
                if a[i] != 0:
                    return 0
            return 2 if a[15] == 0 else (1 if a[15] == 1 else 0)
    if v4[0] == 127:
        return 1
    if v4[0] == 0 and v4[1] == 0 and v4[2] == 0 and v4[3] == 0:
        return 2
    return 0


cdef Py_ssize_t write_address(const uint8_t* a, bint ipv6, char* out) noexcept nogil:
    if not ipv6:
        return write_v4(a, out)
    if is_v4_mapped(a):
        return write_v4(a + 12, out)
    return write_v6(a, out)


cdef bint is_header(const char* s, Py_ssize_t n) noexcept nogil:
    """The column header line: "  sl  local_address ..."."""
    cdef Py_ssize_t i = 0
    while i < n and s[i] == 32:
        i += 1
    return n - i >= 3 and s[i] == 115 and s[i + 1] == 108 and s[i + 2] == 32


cdef int parse_line(const char* line, Py_ssize_t n, bint ipv6, uint8_t* laddr, int32_t* lport,
                    uint8_t* raddr, int32_t* rport, uint8_t* state, uint64_t* uid,
                    uint64_t* inode) noexcept nogil:
    """One data line -> fields; returns 0 or the LINE_ERRORS code."""
    cdef const char* starts[10]
    cdef Py_ssize_t lens[10]
    cdef Py_ssize_t i = 0, f = 0, s
    cdef uint64_t v
    while f < 10:
        while i < n and (line[i] == 32 or line[i] == 9):
            i += 1
        if i >= n:
            return 1
        s = i
        while i < n and line[i] != 32 and line[i] != 9:
            i += 1
        starts[f] = line + s
        lens[f] = i - s
        f += 1
    # "sl" is a decimal slot number followed by a colon.
    if lens[0] < 2 or starts[0][lens[0] - 1] != 58 or parse_dec(starts[0], lens[0] - 1, &v) < 0:
        return 2
    if parse_endpoint(starts[1], lens[1], ipv6, laddr, lport) < 0:
        return 3
    if parse_endpoint(starts[2], lens[2], ipv6, raddr, rport) < 0:
        return 4
    if lens[3] != 2 or parse_hex(starts[3], 2, &v) < 0:
        return 5
    state[0] = <uint8_t>v
    if hex_pair(starts[4], lens[4]) < 0:
        return 6
    if hex_pair(starts[5], lens[5]) < 0:
        return 7
    if parse_hex(starts[6], lens[6], &v) < 0:
        return 8
    if parse_dec(starts[7], lens[7], uid) < 0 or uid[0] > <uint64_t>0xFFFFFFFF:
        return 9
    if parse_dec(starts[8], lens[8], &v) < 0:
        return 10
    if parse_dec(starts[9], lens[9], inode) < 0:
        return 11
    return 0


cdef class TableBuilder:
    """Growing columns of one socket table (the dict that parse_net_table returns)."""
    cdef int32_t[::1] lport, rport, loff, roff
    cdef uint8_t[::1] state, family, remote, ltext, rtext
    cdef uint32_t[::1] uids
    cdef uint64_t[::1] inodes
    cdef Py_ssize_t row, lpos, rpos, cap
    cdef bint ipv6
    cdef int max_text

    def __cinit__(self, Py_ssize_t cap, bint ipv6):
        self.ipv6 = ipv6
        self.max_text = 39 if ipv6 else 15
        self.row = self.lpos = self.rpos = self.cap = 0
        self.lport = self.rport = np.empty(0, np.int32)
        self.state = self.family = self.remote = self.ltext = self.rtext = np.empty(0, np.uint8)
        self.uids = np.empty(0, np.uint32)
        self.inodes = np.empty(0, np.uint64)
        self.loff = np.zeros(1, np.int32)
        self.roff = np.zeros(1, np.int32)
        self.reserve(cap)

    cdef reserve(self, Py_ssize_t cap):
        """Room for cap rows in all (so add() never checks)."""
        if cap <= self.cap:
            return
        cap = max(cap, 2 * self.cap)
        if cap * self.max_text > 0x7FFFFFFF:
            raise MemoryError(f"socket table too large ({cap} rows)")
        self.lport = self._grow(self.lport, cap, np.int32)
        self.rport = self._grow(self.rport, cap, np.int32)
        self.state = self._grow(self.state, cap, np.uint8)
        self.family = self._grow(self.family, cap, np.uint8)
        self.remote = self._grow(self.remote, cap, np.uint8)
        self.uids = self._grow(self.uids, cap, np.uint32)
        self.inodes = self._grow(self.inodes, cap, np.uint64)
        self.loff = self._grow(self.loff, cap + 1, np.int32)
        self.roff = self._grow(self.roff, cap + 1, np.int32)
        self.ltext = self._grow(self.ltext, cap * self.max_text, np.uint8)
        self.rtext = self._grow(self.rtext, cap * self.max_text, np.uint8)
        self.cap = cap

    @staticmethod
    def _grow(old, Py_ssize_t size, dtype):
        new = np.empty(size, dtype)
        new[: len(old)] = old
        return new

    cdef void add(self, const uint8_t* laddr, int32_t lport, const uint8_t* raddr, int32_t rport,
                  uint8_t state, uint32_t uid, uint64_t inode) noexcept nogil:
        cdef Py_ssize_t row = self.row
        self.lport[row] = lport
        self.rport[row] = rport
        self.state[row] = state
        self.uids[row] = uid
        self.inodes[row] = inode
        self.remote[row] = remote_kind(raddr, self.ipv6)
        self.family[row] = 6 if self.ipv6 and not is_v4_mapped(raddr) else 4
        self.lpos += write_address(laddr, self.ipv6, <char*>&self.ltext[self.lpos])
        self.rpos += write_address(raddr, self.ipv6, <char*>&self.rtext[self.rpos])
        self.row = row + 1
        self.loff[row + 1] = <int32_t>self.lpos
        self.roff[row + 1] = <int32_t>self.rpos

    cdef dict result(self, Py_ssize_t bad, list line_errors):
        cdef Py_ssize_t n = self.row
        return {
            "lport": np.asarray(self.lport)[:n].copy(),
            "rport": np.asarray(self.rport)[:n].copy(),
            "state": np.asarray(self.state)[:n].copy(),
            "uid": np.asarray(self.uids)[:n].copy(),
            "inode": np.asarray(self.inodes)[:n].copy(),
            "family": np.asarray(self.family)[:n].copy(),
            "remote": np.asarray(self.remote)[:n].copy(),
            "lip_text": np.asarray(self.ltext)[: self.lpos].tobytes(),
            "lip_offsets": np.asarray(self.loff)[: n + 1].copy(),
            "rip_text": np.asarray(self.rtext)[: self.rpos].tobytes(),
            "rip_offsets": np.asarray(self.roff)[: n + 1].copy(),
            "bad_lines": bad,
            "line_errors": line_errors,
        }


def parse_net_table(const unsigned char[::1] data, bint ipv6, str source):
    """Parse the text of one /proc/net/{tcp,tcp6,udp,udp6} file.

    Returns a dict of columns (one row per valid line): lport, rport int32; state uint8;
    uid uint32; inode uint64; family uint8 (4 for IPv4 and ::ffff:a.b.c.d remote
    addresses); remote uint8 (REMOTE_*); lip_text/rip_text bytes with lip_offsets/
    rip_offsets int32[n+1] (address text, IPv4-mapped written as IPv4); bad_lines int;
    line_errors [(source:line, reason)] for the first MAX_LINE_ERRORS bad lines.
    """
    cdef Py_ssize_t size = data.shape[0]
    cdef const char* buf = NULL
    cdef Py_ssize_t lines = 1, pos = 0, end, line_no = 0, bad = 0, n_err = 0
    cdef const char* nl
    cdef int err
    cdef uint8_t laddr[16]
    cdef uint8_t raddr[16]
    cdef int32_t lp, rp
    cdef uint8_t st
    cdef uint64_t uid, inode
    cdef int32_t err_line[KEPT_LINE_ERRORS]
    cdef uint8_t err_code[KEPT_LINE_ERRORS]
    if size:
        buf = <const char*>&data[0]
        nl = buf
        while nl != NULL:
            nl = <const char*>memchr(nl, 10, size - (nl - buf))
            if nl != NULL:
                lines += 1
                nl += 1
    cdef TableBuilder table = TableBuilder(lines, ipv6)

    with nogil:
        while pos < size:
            nl = <const char*>memchr(buf + pos, 10, size - pos)
            end = (nl - buf) if nl != NULL else size
            line_no += 1
            if line_no == 1 and is_header(buf + pos, end - pos):
                pos = end + 1
                continue  # the column header
            if end == pos:
                pos = end + 1
                continue  # the final newline
            err = parse_line(buf + pos, end - pos, ipv6, laddr, &lp, raddr, &rp, &st, &uid, &inode)
            pos = end + 1
            if err:
                if n_err < KEPT_LINE_ERRORS:
                    err_line[n_err] = <int32_t>line_no
                    err_code[n_err] = <uint8_t>err
                    n_err += 1
                bad += 1
                continue
            table.add(laddr, lp, raddr, rp, st, <uint32_t>uid, inode)

    return table.result(bad, [(f"{source}:{err_line[i]}", LINE_ERRORS[err_code[i]]) for i in range(n_err)])


# Netlink sock_diag (linux/sock_diag.h, linux/inet_diag.h): binary socket dumps.
cdef enum:
    NETLINK_SOCK_DIAG = 4
    SOCK_DIAG_BY_FAMILY = 20
    NLMSG_ERROR = 2
    NLMSG_DONE = 3
    NLMSG_HDRLEN = 16
    INET_DIAG_MSG_LEN = 72  # struct inet_diag_msg
    DIAG_BUFFER = 65536
    DIAG_DONE = 1
    DIAG_MORE = 0
    DIAG_MALFORMED = -1
    DIAG_KERNEL_ERROR = -2
    DIAG_WRONG_FAMILY = -3

cdef extern from "<sys/socket.h>" nogil:
    int socket(int domain, int type, int protocol)
    ssize_t send(int fd, const void* buf, size_t n, int flags)
    ssize_t recv(int fd, void* buf, size_t n, int flags)
    enum:
        SOCK_DGRAM
        SOCK_CLOEXEC

cdef extern from "<errno.h>" nogil:
    enum:
        EINTR


cdef inline uint32_t load_u32(const uint8_t* p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)  # native order, unaligned-safe
    return v


cdef int scan_diag_chunk(const uint8_t* buf, Py_ssize_t got, int family, TableBuilder table,
                         int* kernel_error) noexcept nogil:
    """One recv() of a sock_diag dump -> rows; DIAG_DONE, DIAG_MORE or a DIAG_* error."""
    cdef Py_ssize_t off = 0
    cdef uint32_t length
    cdef uint16_t kind
    cdef const uint8_t* msg
    cdef uint8_t v4_local[16]
    cdef uint8_t v4_remote[16]
    cdef int32_t error
    while off < got:
        if got - off < NLMSG_HDRLEN:
            return DIAG_MALFORMED
        length = load_u32(buf + off)
        memcpy(&kind, buf + off + 4, 2)
        if length < NLMSG_HDRLEN or length > got - off:
            return DIAG_MALFORMED
        msg = buf + off + NLMSG_HDRLEN
        if kind == NLMSG_DONE:
            return DIAG_DONE
        if kind == NLMSG_ERROR:
            if length < NLMSG_HDRLEN + 4:
                return DIAG_MALFORMED
            memcpy(&error, msg, 4)
            kernel_error[0] = -error
            return DIAG_KERNEL_ERROR
        if kind == SOCK_DIAG_BY_FAMILY:
            if length < NLMSG_HDRLEN + INET_DIAG_MSG_LEN:
                return DIAG_MALFORMED
            if msg[0] != family:
                return DIAG_WRONG_FAMILY
            # inet_diag_msg: family, state, timer, retrans, sport/dport (big endian),
            # src[16], dst[16] (network order), if, cookie[2], expires, rqueue, wqueue, uid, inode
            if table.ipv6:
                table.add(msg + 8, (msg[4] << 8) | msg[5], msg + 24, (msg[6] << 8) | msg[7],
                          msg[1], load_u32(msg + 64), load_u32(msg + 68))
            else:
                memcpy(v4_local, msg + 8, 4)
                memcpy(v4_remote, msg + 24, 4)
                table.add(v4_local, (msg[4] << 8) | msg[5], v4_remote, (msg[6] << 8) | msg[7],
                          msg[1], load_u32(msg + 64), load_u32(msg + 68))
        off += (length + 3) & ~3  # NLMSG_ALIGN
    return DIAG_MORE


def read_sock_diag(int family, int protocol, str source):
    """Dump every socket of (family AF_INET/AF_INET6, protocol 6 tcp / 17 udp) over netlink
    sock_diag: the same dict as parse_net_table (no line errors: a malformed message is an
    OSError naming source). Raises OSError where sock_diag is unavailable."""
    cdef uint8_t request[NLMSG_HDRLEN + 56]
    cdef uint32_t u32
    cdef uint16_t u16
    cdef int fd, rc = DIAG_MORE, kernel_error = 0, saved_errno = 0
    cdef ssize_t got
    cdef TableBuilder table = TableBuilder(1024, family == 10)
    cdef uint8_t[::1] buf = np.empty(DIAG_BUFFER, np.uint8)
    memset(request, 0, sizeof(request))
    u32 = sizeof(request)
    memcpy(request, &u32, 4)
    u16 = SOCK_DIAG_BY_FAMILY
    memcpy(request + 4, &u16, 2)
    u16 = 0x301  # NLM_F_REQUEST | NLM_F_DUMP
    memcpy(request + 6, &u16, 2)
    request[NLMSG_HDRLEN] = family
    request[NLMSG_HDRLEN + 1] = protocol
    u32 = 0xFFFFFFFF  # every state
    memcpy(request + NLMSG_HDRLEN + 4, &u32, 4)

    fd = socket(16, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG)  # 16 = AF_NETLINK
    if fd < 0:
        raise OSError(errno, f"{source}: cannot open a netlink sock_diag socket")
    try:
        if send(fd, request, sizeof(request), 0) != sizeof(request):
            raise OSError(errno, f"{source}: sock_diag request failed")
        while rc == DIAG_MORE:
            with nogil:
                got = recv(fd, &buf[0], DIAG_BUFFER, 0)
                if got < 0:
                    saved_errno = errno
            if got < 0:
                if saved_errno == EINTR:
                    continue
                raise OSError(saved_errno, f"{source}: sock_diag receive failed")
            if got == 0:
                raise OSError(f"{source}: sock_diag dump ended without NLMSG_DONE")
            table.reserve(table.row + got // (NLMSG_HDRLEN + INET_DIAG_MSG_LEN) + 1)
            with nogil:
                rc = scan_diag_chunk(&buf[0], got, family, table, &kernel_error)
        check_diag(rc, kernel_error, source)
    finally:
        close(fd)
    return table.result(0, [])


cdef check_diag(int rc, int kernel_error, str source):
    """The one place where scan_diag_chunk's codes become exceptions."""
    if rc == DIAG_KERNEL_ERROR:
        raise OSError(kernel_error, f"{source}: sock_diag error: {os.strerror(kernel_error)}")
    if rc == DIAG_MALFORMED:
        raise OSError(f"{source}: malformed sock_diag message")
    if rc == DIAG_WRONG_FAMILY:
        raise OSError(f"{source}: sock_diag answered for another address family")


def parse_diag_messages(const unsigned char[::1] data, int family, str source):
    """Rows of sock_diag messages already received (read_sock_diag's parser, for tests and
    replays): the same dict as read_sock_diag; OSError naming source if malformed."""
    cdef Py_ssize_t size = data.shape[0]
    cdef int kernel_error = 0, rc = DIAG_MORE
    cdef TableBuilder table = TableBuilder(size // (NLMSG_HDRLEN + INET_DIAG_MSG_LEN) + 1, family == 10)
    if size:
        with nogil:
            rc = scan_diag_chunk(&data[0], size, family, table, &kernel_error)
    check_diag(rc, kernel_error, source)
    return table.result(0, [])


cdef int socket_inode(const char* link, Py_ssize_t n, uint64_t* inode) noexcept nogil:
    """"socket:[12345]" -> 12345 (0 if it is a socket link, 1 if not a socket, -1 malformed)."""
    if n < 8 or memcmp(link, b"socket:[", 8) != 0:
        return 1
    if n < 10 or link[n - 1] != 93 or parse_dec(link + 8, n - 9, inode) < 0:
        return -1
    return 0


cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t  # opaque to this module
    int pthread_create(pthread_t* thread, const void* attr, void* (*start)(void*) noexcept nogil, void* arg)
    int pthread_join(pthread_t thread, void** result)


cdef struct Growing:
    char* data
    Py_ssize_t n, cap, item  # n items of item bytes each


cdef int push(Growing* v, const void* value) noexcept nogil:
    cdef Py_ssize_t new_cap
    cdef char* grown
    if v.n == v.cap:
        new_cap = v.cap * 2 if v.cap else 4096
        grown = <char*>realloc(v.data, new_cap * v.item)
        if grown == NULL:
            return -1
        v.data = grown
        v.cap = new_cap
    memcpy(v.data + v.n * v.item, value, v.item)
    v.n += 1
    return 0


cdef enum:
    BATCH_PROCESSES = 64  # fd folders held open at once (well below any RLIMIT_NOFILE)
    MIN_ITEMS_PER_THREAD = 2048
    MAX_THREADS = 16

cdef uint64_t LINK_NONE = 0xFFFFFFFFFFFFFFFF  # not a socket, or closed since the listing
cdef uint64_t LINK_BAD = 0xFFFFFFFFFFFFFFFE   # a socket link that does not parse


cdef struct LinkJob:
    const int* slot_fd        # fd folder descriptor of each process slot of the batch
    const int32_t* item_slot  # per fd: its process slot
    const int32_t* item_fd    # per fd: its number
    uint64_t* inode           # out per fd: socket inode, LINK_NONE or LINK_BAD
    Py_ssize_t start, stop


cdef void* resolve_links(void* arg) noexcept nogil:
    """readlinkat() every fd of job's range: the part of the walk that the kernel makes slow."""
    cdef LinkJob* job = <LinkJob*>arg
    cdef char name[16]
    cdef char link[96]
    cdef Py_ssize_t i, k, n
    cdef int32_t v
    cdef uint64_t inode
    cdef int rc
    for i in range(job.start, job.stop):
        v = job.item_fd[i]
        k = 15
        name[k] = 0
        while True:
            k -= 1
            name[k] = 48 + v % 10
            v = v // 10
            if v == 0:
                break
        n = readlinkat(job.slot_fd[job.item_slot[i]], name + k, link, sizeof(link))
        if n < 0:
            job.inode[i] = LINK_NONE  # closed since the listing
        elif n >= <Py_ssize_t>sizeof(link):
            # Possibly truncated: only a socket link needs an answer.
            job.inode[i] = LINK_BAD if memcmp(link, b"socket:[", 8) == 0 else LINK_NONE
        else:
            rc = socket_inode(link, n, &inode)
            job.inode[i] = inode if rc == 0 else (LINK_BAD if rc < 0 else LINK_NONE)
    return NULL


cdef void resolve_all(LinkJob* base, int threads) noexcept nogil:
    """Split base's range over up to `threads` threads (the calling one included)."""
    cdef LinkJob jobs[MAX_THREADS]
    cdef pthread_t ids[MAX_THREADS]
    cdef bint started[MAX_THREADS]
    cdef Py_ssize_t total = base.stop - base.start, per
    cdef int t, count = threads
    if count > MAX_THREADS:
        count = MAX_THREADS
    if count > total // MIN_ITEMS_PER_THREAD:
        count = <int>(total // MIN_ITEMS_PER_THREAD)
    if count <= 1:
        resolve_links(base)
        return
    per = (total + count - 1) // count
    for t in range(count):
        jobs[t] = base[0]
        jobs[t].start = base.start + t * per
        jobs[t].stop = min(base.start + (t + 1) * per, base.stop)
        started[t] = False
    for t in range(1, count):
        started[t] = pthread_create(&ids[t], NULL, resolve_links, &jobs[t]) == 0
        if not started[t]:
            resolve_links(&jobs[t])  # no thread: do it here
    resolve_links(&jobs[0])
    for t in range(1, count):
        if started[t]:
            pthread_join(ids[t], NULL)


def socket_owners(str proc_root="/proc", int threads=1):
    """One walk of <proc_root>/[pid]/fd: every socket fd as (inode uint64[], pid int32[]).

    threads > 1 splits the readlink calls (the costly part) over that many threads.
    Also returns counts: processes (fd folder read), vanished (exited during the walk),
    denied (permission), failed (other errors), bad_links (unparsable socket link).
    Raises OSError when proc_root itself cannot be read.
    """
    cdef bytes root = proc_root.encode()
    cdef const char* root_c = root
    cdef int root_fd, fd_fd, k
    cdef DIR* proc_dir
    cdef DIR* dirs[BATCH_PROCESSES]
    cdef int slot_fd[BATCH_PROCESSES]
    cdef int32_t slot_pid[BATCH_PROCESSES]
    cdef int slots = 0
    cdef dirent* ent
    cdef dirent* fd_ent
    cdef char path[64]
    cdef uint64_t pid64, fd64, inode
    cdef int32_t slot32, fd32
    cdef Growing item_slot, item_fd, item_inode, owner_inode, owner_pid
    cdef LinkJob job
    cdef Py_ssize_t name_len, i
    cdef Py_ssize_t processes = 0, vanished = 0, denied = 0, failed = 0, bad_links = 0
    cdef bint out_of_memory = False, listed = False
    item_slot = Growing(NULL, 0, 0, sizeof(int32_t))
    item_fd = Growing(NULL, 0, 0, sizeof(int32_t))
    item_inode = Growing(NULL, 0, 0, sizeof(uint64_t))
    owner_inode = Growing(NULL, 0, 0, sizeof(uint64_t))
    owner_pid = Growing(NULL, 0, 0, sizeof(int32_t))

    root_fd = open(root_c, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    if root_fd < 0:
        raise OSError(errno, f"cannot read {proc_root}")
    proc_dir = fdopendir(root_fd)
    if proc_dir == NULL:
        close(root_fd)
        raise OSError(errno, f"cannot read {proc_root}")
    try:
        with nogil:
            while not listed and not out_of_memory:
                # 1: list the fd folders of a batch of processes
                slots = 0
                item_slot.n = item_fd.n = 0
                while slots < BATCH_PROCESSES and not out_of_memory:
                    ent = readdir(proc_dir)
                    if ent == NULL:
                        listed = True
                        break
                    name_len = 0
                    while name_len < 20 and ent.d_name[name_len] != 0:
                        name_len += 1
                    if parse_dec(ent.d_name, name_len, &pid64) < 0 or ent.d_name[name_len] != 0 or pid64 > 0x7FFFFFFF:
                        continue  # not a process folder
                    # "<pid>/fd": at most 19 digits + 3 characters + NUL fits the 64-byte path.
                    for k in range(name_len):
                        path[k] = ent.d_name[k]
                    path[name_len] = 47
                    path[name_len + 1] = 102
                    path[name_len + 2] = 100
                    path[name_len + 3] = 0
                    fd_fd = openat(root_fd, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                    if fd_fd < 0:
                        if errno == ENOENT or errno == ESRCH:
                            vanished += 1
                        elif errno == EACCES or errno == EPERM:
                            denied += 1
                        else:
                            failed += 1
                        continue
                    dirs[slots] = fdopendir(fd_fd)
                    if dirs[slots] == NULL:
                        close(fd_fd)
                        failed += 1
                        continue
                    slot_fd[slots] = fd_fd
                    slot_pid[slots] = <int32_t>pid64
                    slot32 = slots
                    slots += 1
                    processes += 1
                    while True:
                        fd_ent = readdir(dirs[slot32])
                        if fd_ent == NULL:
                            break
                        name_len = 0
                        while name_len < 12 and fd_ent.d_name[name_len] != 0:
                            name_len += 1
                        if parse_dec(fd_ent.d_name, name_len, &fd64) < 0 or fd_ent.d_name[name_len] != 0 or fd64 > 0x7FFFFFFF:
                            continue  # "." and ".."
                        fd32 = <int32_t>fd64
                        if push(&item_slot, &slot32) < 0 or push(&item_fd, &fd32) < 0:
                            out_of_memory = True
                            break
                # 2: resolve their links, on several threads
                if not out_of_memory and item_fd.n:
                    if item_inode.cap < item_fd.n:
                        free(item_inode.data)
                        item_inode.data = <char*>realloc(NULL, item_fd.n * sizeof(uint64_t))
                        item_inode.cap = item_fd.n if item_inode.data != NULL else 0
                    if item_inode.data == NULL:
                        out_of_memory = True
                    else:
                        job.slot_fd = slot_fd
                        job.item_slot = <int32_t*>item_slot.data
                        job.item_fd = <int32_t*>item_fd.data
                        job.inode = <uint64_t*>item_inode.data
                        job.start = 0
                        job.stop = item_fd.n
                        resolve_all(&job, threads)
                        # 3: keep the sockets
                        for i in range(item_fd.n):
                            inode = (<uint64_t*>item_inode.data)[i]
                            if inode == LINK_BAD:
                                bad_links += 1
                            elif inode != LINK_NONE:
                                slot32 = (<int32_t*>item_slot.data)[i]
                                if push(&owner_inode, &inode) < 0 or push(&owner_pid, &slot_pid[slot32]) < 0:
                                    out_of_memory = True
                                    break
                for k in range(slots):
                    closedir(dirs[k])
                slots = 0
        if out_of_memory:
            raise MemoryError("socket_owners: out of memory")
        inode_arr = np.empty(owner_inode.n, np.uint64)
        pid_arr = np.empty(owner_pid.n, np.int32)
        if owner_inode.n:
            inode_arr[:] = <uint64_t[:owner_inode.n]><uint64_t*>owner_inode.data
            pid_arr[:] = <int32_t[:owner_pid.n]><int32_t*>owner_pid.data
    finally:
        for k in range(slots):
            closedir(dirs[k])
        closedir(proc_dir)
        free(item_slot.data)
        free(item_fd.data)
        free(item_inode.data)
        free(owner_inode.data)
        free(owner_pid.data)
    counts = {"processes": processes, "vanished": vanished, "denied": denied,
              "failed": failed, "bad_links": bad_links}
    return inode_arr, pid_arr, counts
