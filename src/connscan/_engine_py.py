"""Pure-Python twin of ``_engine_c``: the same functions with ipaddress and bisect.

Slow but exact: it is the oracle of the tests and the CONNSCAN_NO_EXTENSIONS fallback. It
answers from the interval starts with bisect and never reads the first-level tables
(``v4_l1``/``v4_seg``/``v6_index``), which it only validates.
"""
from __future__ import annotations

import ipaddress
from bisect import bisect_right

import numpy as np

SEGMENT_FLAG = 0x8000_0000
_MAPPED_PREFIX = 0xFFFF  # ::ffff:0:0/96 is IPv4
_LOW32 = 0xFFFF_FFFF


def _require(condition, problem: str) -> None:
    if not condition:
        raise ValueError(problem)


def _array(arrays, name, dtype, ndim=1):
    array = arrays.get(name)
    _require(array is not None, f"missing table {name}")
    _require(isinstance(array, np.ndarray) and array.dtype == np.dtype(dtype) and array.ndim == ndim,
             f"table {name} must be a {ndim}-d {np.dtype(dtype).name} array")
    _require(ndim == 1 or array.shape[1] == 2, f"table {name} must have 2 columns")
    return array


def _strictly_increasing_starts(keys, name):
    """keys: uint32[n] or uint64[n, 2]; sorted strictly, first key 0."""
    _require(len(keys) >= 1, f"table {name} is empty")
    if keys.ndim == 1:
        _require(keys[0] == 0, f"table {name} does not start at 0")
        _require(bool(np.all(keys[1:] > keys[:-1])), f"table {name} is not strictly increasing")
    else:
        _require(keys[0, 0] == 0 and keys[0, 1] == 0, f"table {name} does not start at 0")
        hi, lo = keys[:, 0], keys[:, 1]
        greater = (hi[1:] > hi[:-1]) | ((hi[1:] == hi[:-1]) & (lo[1:] > lo[:-1]))
        _require(bool(np.all(greater)), f"table {name} is not strictly increasing")


def _csr(arrays, prefix, n_intervals, n_signatures):
    offsets = _array(arrays, f"{prefix}_offsets", np.int64)
    sigs = _array(arrays, f"{prefix}_sigs", np.int32)
    _require(len(offsets) == n_intervals + 1, f"table {prefix}_offsets has the wrong length")
    _require(offsets[0] == 0 and offsets[-1] == len(sigs), f"table {prefix}_offsets out of bounds")
    _require(bool(np.all(offsets[1:] >= offsets[:-1])), f"table {prefix}_offsets is not sorted")
    _require(len(sigs) == 0 or (sigs.min() >= 0 and sigs.max() < n_signatures),
             f"table {prefix}_sigs holds a signature index out of range")
    return offsets, sigs


def _key(hi: int, lo: int) -> int:
    return hi << 64 | lo


class Tables:
    """Validated engine tables (see connscan.engine for the layout); ValueError if invalid."""

    def __init__(self, arrays: dict, n_signatures: int):
        values = _array(arrays, "values", np.uint64)
        _require(len(values) >= 1, "table values is empty")
        signature = (values & np.uint64(_LOW32)).astype(np.uint32).view(np.int32)
        _require(bool(np.all((signature >= -1) & (signature < n_signatures))),
                 "table values holds a signature index out of range")
        nv = len(values)

        v4_starts = _array(arrays, "v4_starts", np.uint32)
        _strictly_increasing_starts(v4_starts, "v4_starts")
        v4_value = _array(arrays, "v4_value", np.uint32)
        _require(len(v4_value) == len(v4_starts), "table v4_value has the wrong length")
        _require(bool(np.all(v4_value < nv)), "table v4_value holds a value id out of range")
        v4_seg = _array(arrays, "v4_seg", np.uint32, ndim=2)
        first, count = v4_seg[:, 0].astype(np.int64), v4_seg[:, 1].astype(np.int64)
        _require(bool(np.all((count >= 1) & (first + count <= len(v4_starts)))),
                 "table v4_seg holds a segment out of bounds")
        v4_l1 = _array(arrays, "v4_l1", np.uint32)
        bits = len(v4_l1).bit_length() - 1
        _require(len(v4_l1) == 1 << bits and 1 <= bits <= 24, "table v4_l1 has a bad length")
        segment = (v4_l1 & SEGMENT_FLAG) != 0
        _require(bool(np.all(np.where(segment, (v4_l1 & ~np.uint32(SEGMENT_FLAG)) < len(v4_seg),
                                      v4_l1 < nv))),
                 "table v4_l1 holds an entry out of range")

        v6_keys = _array(arrays, "v6_keys", np.uint64, ndim=2)
        _strictly_increasing_starts(v6_keys, "v6_keys")
        v6_value = _array(arrays, "v6_value", np.uint32)
        _require(len(v6_value) == len(v6_keys), "table v6_value has the wrong length")
        _require(bool(np.all(v6_value < nv)), "table v6_value holds a value id out of range")
        v6_index = _array(arrays, "v6_index", np.uint32)
        bits = (len(v6_index) - 1).bit_length() - 1
        _require(len(v6_index) == (1 << bits) + 1 and 1 <= bits <= 24, "table v6_index has a bad length")
        _require(bool(np.all(v6_index < len(v6_keys))) and bool(np.all(v6_index[1:] >= v6_index[:-1])),
                 "table v6_index holds an entry out of range")

        m4_starts = _array(arrays, "m4_starts", np.uint32)
        _strictly_increasing_starts(m4_starts, "m4_starts")
        m6_keys = _array(arrays, "m6_keys", np.uint64, ndim=2)
        _strictly_increasing_starts(m6_keys, "m6_keys")

        # bisect reads the numpy arrays in place: no per-interval Python objects to build.
        self.signature = signature
        self.country = (values >> np.uint64(32)).astype(np.uint16)
        self.v4_starts = v4_starts
        self.v4_value = v4_value
        self.v6_starts = _Keys128(v6_keys)
        self.v6_value = v6_value
        self.m4_starts = m4_starts
        self.m4_offsets, self.m4_sigs = _csr(arrays, "m4", len(m4_starts), n_signatures)
        self.m6_starts = _Keys128(m6_keys)
        self.m6_offsets, self.m6_sigs = _csr(arrays, "m6", len(m6_keys), n_signatures)

    def _value(self, value_id) -> tuple[int, int]:
        return int(self.signature[value_id]), int(self.country[value_id])

    def v4(self, addr: int) -> tuple[int, int]:
        return self._value(self.v4_value[bisect_right(self.v4_starts, addr) - 1])

    def v6(self, hi: int, lo: int) -> tuple[int, int]:
        if hi == 0 and lo >> 32 == _MAPPED_PREFIX:
            return self.v4(lo & _LOW32)
        return self._value(self.v6_value[bisect_right(self.v6_starts, _key(hi, lo)) - 1])


class _Keys128:
    """A uint64[n, 2] (hi, lo) table seen by bisect as a sequence of 128-bit ints."""

    def __init__(self, keys: np.ndarray):
        self.keys = keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> int:
        return _key(int(self.keys[i, 0]), int(self.keys[i, 1]))


def lookup_ipv4(tables: Tables, addrs, out_sig, out_cc) -> None:
    """Most specific signature (-1 none) and country code (uint16 of the S2 bytes)."""
    for i, addr in enumerate(addrs.tolist()):
        out_sig[i], out_cc[i] = tables.v4(addr)


def lookup_ipv6(tables: Tables, hi, lo, out_sig, out_cc) -> None:
    for i, (h, low) in enumerate(zip(hi.tolist(), lo.tolist())):
        out_sig[i], out_cc[i] = tables.v6(h, low)


def lookup_parsed(tables: Tables, kind, v4, hi, lo, out_sig, out_cc) -> None:
    for i, (k, a, h, low) in enumerate(zip(kind.tolist(), v4.tolist(), hi.tolist(), lo.tolist())):
        if k == 4:
            out_sig[i], out_cc[i] = tables.v4(a)
        elif k == 6:
            out_sig[i], out_cc[i] = tables.v6(h, low)
        else:
            out_sig[i], out_cc[i] = -1, 0


def matches_v4(tables: Tables, addr: int) -> list[int]:
    """Every signature containing ``addr``, most specific first."""
    i = bisect_right(tables.m4_starts, addr) - 1
    return tables.m4_sigs[tables.m4_offsets[i]:tables.m4_offsets[i + 1]].tolist()


def matches_v6(tables: Tables, hi: int, lo: int) -> list[int]:
    if hi == 0 and lo >> 32 == _MAPPED_PREFIX:
        return matches_v4(tables, lo & _LOW32)
    i = bisect_right(tables.m6_starts, _key(hi, lo)) - 1
    return tables.m6_sigs[tables.m6_offsets[i]:tables.m6_offsets[i + 1]].tolist()


def parse_one(text: str) -> tuple[int, int, int, int]:
    """(kind, v4, hi, lo) of one address text; kind 0 when it is not an address."""
    try:
        if text.startswith("["):
            # URL style brackets hold IPv6 text only.
            if not text.endswith("]"):
                return 0, 0, 0, 0
            ip = ipaddress.IPv6Address(text[1:-1])
        else:
            ip = ipaddress.ip_address(text)
    except ValueError:
        return 0, 0, 0, 0
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.version == 4:
        return 4, int(ip), 0, 0
    value = int(ip)
    return 6, 0, value >> 64, value & 0xFFFF_FFFF_FFFF_FFFF


def parse_text(offsets, data, validity, bit_offset, kind, v4, hi, lo) -> None:
    """Parse Arrow string buffers (offsets n+1, data bytes, validity bitmap or None)."""
    raw = data.tobytes()
    bounds = offsets.tolist()
    flags = validity.tolist() if validity is not None else None
    for i in range(len(bounds) - 1):
        if flags is not None:
            bit = bit_offset + i
            if not flags[bit >> 3] >> (bit & 7) & 1:
                kind[i], v4[i], hi[i], lo[i] = 0, 0, 0, 0
                continue
        start, end = bounds[i], bounds[i + 1]
        if not 0 <= start <= end <= len(raw):
            raise ValueError(f"string {i}: offsets {start}..{end} outside the data buffer "
                             f"({len(raw)} bytes)")
        try:
            text = raw[start:end].decode()
        except UnicodeDecodeError:
            text = ""
        kind[i], v4[i], hi[i], lo[i] = parse_one(text)



def look_up_ends(tables: Tables, home: Tables, src_offsets, src_data, src_validity, src_bit,
                 dst_offsets, dst_data, dst_validity, dst_bit,
                 bad, src_home, inbound, remote_sig, remote_cc, local_sig) -> None:
    """Both ends of n flows parsed, looked up in ``home`` and ``tables``, and sorted into
    local and remote (the destination is local only when it alone is home); ``bad`` 1/2
    marks a source/destination that is not an address."""
    n = len(src_offsets) - 1
    if len(dst_offsets) != n + 1 or not all(len(a) == n for a in (bad, src_home, inbound, remote_sig, remote_cc, local_sig)):
        raise ValueError("flow end arrays do not match the offsets")
    found = []  # per end: kind, home signature, signature, country
    for offsets, data, validity, bit in ((src_offsets, src_data, src_validity, src_bit),
                                         (dst_offsets, dst_data, dst_validity, dst_bit)):
        parsed = [np.zeros(n, np.uint8), np.zeros(n, np.uint32), np.zeros(n, np.uint64), np.zeros(n, np.uint64)]
        parse_text(offsets, data, validity, bit, *parsed)
        home_sig, sig, country = np.empty(n, np.int32), np.empty(n, np.int32), np.empty(n, np.uint16)
        lookup_parsed(home, *parsed, home_sig, np.empty(n, np.uint16))
        lookup_parsed(tables, *parsed, sig, country)
        found.append((parsed[0], home_sig, sig, country))
    (src_kind, src_in, src_sig, src_cc), (dst_kind, dst_in, dst_sig, dst_cc) = found
    flip = (dst_in >= 0) & (src_in < 0)
    ok = (src_kind != 0) & (dst_kind != 0)
    bad[:] = np.where(ok, 0, np.where(src_kind == 0, 1, 2))
    src_home[:] = ok & (src_in >= 0)
    inbound[:] = ok & flip
    remote_sig[:] = np.where(ok, np.where(flip, src_sig, dst_sig), -1)
    remote_cc[:] = np.where(ok, np.where(flip, src_cc, dst_cc), 0)
    local_sig[:] = np.where(ok, np.where(flip, dst_sig, src_sig), -1)


def side_ports(inbound, sport, dport, lport, rport) -> None:
    """The local and remote port of each flow (see _engine_c.side_ports)."""
    n = len(inbound)
    if any(len(a) != n for a in (sport, dport, lport, rport)):
        raise ValueError("side_ports: columns differ in length")
    flip = np.asarray(inbound, bool)
    lport[:] = np.where(flip, dport, sport)
    rport[:] = np.where(flip, sport, dport)


def attention_rows(rsig, local_sig, country, inbound, lport, rport, sig_flags, attention_bit, relevant, suspicious):
    """The rows the rules must look at (see _engine_c.attention_rows): ``(rows, None)``, or
    ``(None, signatures)`` when hit signatures have no flag yet."""
    n = len(rsig)
    if any(len(a) != n for a in (country, inbound, lport, rport)) or (local_sig is not None and len(local_sig) != n):
        raise ValueError("attention_rows: columns differ in length")
    if len(relevant) != 1 << 16 or len(suspicious) != (1 << 16) + 1:
        raise ValueError("attention_rows: relevant needs 65536 entries, suspicious 65537")
    sides = [np.asarray(rsig, np.int64)] + ([np.asarray(local_sig, np.int64)] if local_sig is not None else [])
    if any(len(s) and s.max() >= len(sig_flags) for s in sides):
        raise ValueError(f"attention_rows: a signature index outside the {len(sig_flags)} flags")
    needed = np.zeros(n, bool)
    unknown = []
    for sig in sides:
        hit = sig >= 0
        flag = np.where(hit, np.asarray(sig_flags)[np.where(hit, sig, 0)], 0)
        unknown.append(sig[hit & (flag < 0)])
        needed |= hit & (flag >= 0) & (flag & attention_bit != 0)
    unknown = np.concatenate(unknown).astype(np.int32)
    if len(unknown):
        return None, unknown
    port = np.where(np.asarray(inbound, bool), lport, rport)
    needed |= np.asarray(relevant, bool)[np.asarray(country, np.uint16)]
    needed |= np.asarray(suspicious, bool)[np.where((port >= 0) & (port <= 0xFFFF), port + 1, 0)]
    return np.flatnonzero(needed).astype(np.int64), None
