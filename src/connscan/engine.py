"""Engine: signatures and GeoIP countries compiled into fused lookup tables.

The build (this module, numpy) turns the signature ranges and the GeoTable partitions into
one partition per address family whose intervals carry a value id; a value is the pair
(most specific signature, country). The per-address work (lookups, text parsing) lives in
``_engine_c`` (Cython, nogil) and its pure-Python twin ``_engine_py``; both take the same
table arrays, validate them before use and give the same answers.

Table arrays (all saved by ``Engine.save``; see ``_engine_py.Tables`` for the invariants):

    values      uint64[nv]   value id -> signature (low 32 bits, int32, -1 none)
                             | country code bytes (bits 32..47, the 2 bytes of an S2)
    v4_starts   uint32[n4]   sorted interval starts, v4_starts[0] == 0
    v4_value    uint32[n4]   value id of each interval
    v4_l1       uint32[2^b]  indexed by the top b address bits: a value id when the block is
                             uniform, else SEGMENT_FLAG | segment number
    v4_seg      uint32[s,2]  per segment: (first interval, interval count) of its block
    v6_keys     uint64[n6,2] sorted (hi, lo) interval starts, first == (0, 0)
    v6_value    uint32[n6]
    v6_index    uint32[2^k+1] interval containing the start of each top-k-bit block
    m4_starts, m4_offsets, m4_sigs / m6_keys, m6_offsets, m6_sigs:
                             the signature-only partitions with, per interval, the CSR list
                             of every covering signature, most specific first (matches())
"""
from __future__ import annotations

import array
import hashlib
import json
import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from connscan import _native
from connscan.errors import CacheError, InputError

SEGMENT_FLAG = 0x8000_0000
TABLE_KIND = "engine"
TABLE_VERSION = 1
# First-level sizes: DIR-24 for real tables, small ones for tiny engines (tests, configs).
_V4_L1_BITS_LARGE, _V4_L1_BITS_SMALL = 24, 16
_V6_INDEX_BITS_LARGE, _V6_INDEX_BITS_SMALL = 20, 8
_LARGE_TABLE = 4096
_ALL64 = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


# --------------------------------------------------------------------------- results


@dataclass
class LookupResult:
    """Per-address answers: ``signature`` int32 (-1 none), ``country`` S2 (b"" unknown).

    Text input also sets ``valid`` (the address parsed) and ``is_ipv4``.
    """

    signature: np.ndarray
    country: np.ndarray
    valid: np.ndarray | None = None
    is_ipv4: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.signature)

    def hit_rows(self):
        """The rows with a signature hit, as a pyroaring.BitMap."""
        from pyroaring import BitMap

        rows = array.array("I")
        rows.frombytes(np.flatnonzero(self.signature >= 0).astype(np.uint32).tobytes())
        return BitMap(rows)


@dataclass
class FlowEndLookup:
    """Both ends of flows looked up (``Engine.look_up_ends``): ``bad`` uint8 (0; 1/2 the
    source/destination is not an address), ``src_home`` and ``inbound`` bool (only the
    destination is home: it is then the local end), ``remote`` the remote ends'
    LookupResult, ``local_sig`` the local ends' signature (-1 none)."""

    bad: np.ndarray
    src_home: np.ndarray
    inbound: np.ndarray
    remote: LookupResult
    local_sig: np.ndarray


@dataclass
class ParsedAddresses:
    """A parsed text column: ``kind`` uint8 (0 invalid, 4, 6), ``v4`` uint32, ``hi``/``lo`` uint64."""

    kind: np.ndarray
    v4: np.ndarray
    hi: np.ndarray
    lo: np.ndarray

    def __len__(self) -> int:
        return len(self.kind)


# --------------------------------------------------------------------------- text input


def _string_chunks(strings):
    """Arrow string/binary arrays covering ``strings`` (list, numpy array, pyarrow)."""
    import pyarrow as pa

    if isinstance(strings, pa.ChunkedArray):
        chunks = strings.chunks
    elif isinstance(strings, pa.Array):
        chunks = [strings]
    elif isinstance(strings, np.ndarray) and strings.dtype.kind == "S":
        chunks = [pa.array(strings.astype(object), type=pa.large_binary())]
    else:
        try:
            chunks = [pa.array(strings, type=pa.large_string())]
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            # Mixed content: anything but text is an invalid address, not an error.
            chunks = [pa.array([s if isinstance(s, str) else None for s in strings],
                               type=pa.large_string())]
    out = []
    for chunk in chunks:
        kind = chunk.type
        if pa.types.is_dictionary(kind):
            chunk = chunk.dictionary_decode()
            kind = chunk.type
        if pa.types.is_string_view(kind) or pa.types.is_binary_view(kind):
            chunk = chunk.cast(pa.large_binary())
            kind = chunk.type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
                or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
            if pa.types.is_null(kind):
                chunk = pa.array([None] * len(chunk), type=pa.large_string())
            else:
                raise TypeError(f"addresses must be text, got an Arrow array of {kind}")
        out.append(chunk)
    return out


def _chunk_buffers(chunk):
    """(offsets n+1, data uint8, validity uint8 or None, validity bit offset) of one array."""
    import pyarrow as pa

    n = len(chunk)
    wide = pa.types.is_large_string(chunk.type) or pa.types.is_large_binary(chunk.type)
    offset_type = np.int64 if wide else np.int32
    validity_buf, offsets_buf, data_buf = chunk.buffers()[:3]
    offsets = np.frombuffer(offsets_buf, dtype=offset_type) if offsets_buf is not None else None
    if offsets is None or len(offsets) < chunk.offset + n + 1:
        if n == 0:
            return np.zeros(1, offset_type), np.zeros(0, np.uint8), None, 0
        raise InputError(f"corrupt Arrow string array: offsets buffer shorter than {n + 1} entries")
    offsets = offsets[chunk.offset:chunk.offset + n + 1]
    data = (np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None and data_buf.size
            else np.zeros(0, np.uint8))
    validity = None
    if validity_buf is not None and chunk.null_count:
        validity = np.frombuffer(validity_buf, dtype=np.uint8)
        if len(validity) * 8 < chunk.offset + n:
            raise InputError("corrupt Arrow string array: validity bitmap too short")
    return offsets, data, validity, chunk.offset


def _each_chunk(strings, work) -> None:
    """Call ``work(start, end, offsets, data, validity, bit_offset)`` for each Arrow chunk;
    a chunk whose offsets leave its data buffer raises InputError."""
    position = 0
    for chunk in _string_chunks(strings):
        end = position + len(chunk)
        try:
            work(position, end, *_chunk_buffers(chunk))
        except ValueError as exc:
            raise InputError(f"corrupt Arrow string array: {exc}") from None
        position = end


def _single_chunk(strings, wide: bool = False):
    """The Arrow buffers (_chunk_buffers) of ``strings`` as one array; ``wide``: 64-bit offsets."""
    import pyarrow as pa

    chunks = _string_chunks(strings)
    if wide or len(chunks) != 1:
        chunks = [chunk.cast(pa.large_binary()) for chunk in chunks]
    if len(chunks) != 1:
        chunks = [pa.chunked_array(chunks, pa.large_binary()).combine_chunks()]
    return _chunk_buffers(chunks[0])


def parse_addresses(strings, impl=None) -> ParsedAddresses:
    """Parse address text (list, numpy, pyarrow): strict dotted quads, IPv6 (``::``, IPv4
    tail, ``[...]``, ``%zone``); ``::ffff:a.b.c.d`` gives IPv4; anything else kind 0."""
    impl = impl or _native.load("engine")
    n = len(strings)
    parsed = ParsedAddresses(np.zeros(n, np.uint8), np.zeros(n, np.uint32),
                             np.zeros(n, np.uint64), np.zeros(n, np.uint64))
    kind, v4, hi, lo = parsed.kind, parsed.v4, parsed.hi, parsed.lo
    _each_chunk(strings, lambda start, end, *text: impl.parse_text(
        *text, kind[start:end], v4[start:end], hi[start:end], lo[start:end]))
    return parsed


# --------------------------------------------------------------------------- build helpers


def _plus_one(hi, lo):
    """(hi, lo) + 1 and a mask of the entries that overflowed past the address space."""
    lo1 = lo + np.uint64(1)
    carry = lo1 == 0
    hi1 = hi + carry.astype(np.uint64)
    return hi1, lo1, carry & (hi == _ALL64)


def _unique_keys(hi, lo):
    """Sorted distinct (hi, lo) keys and, for each input key, the index of its distinct key."""
    order = np.lexsort((lo, hi))
    shi, slo = hi[order], lo[order]
    new = np.ones(len(order), bool)
    new[1:] = (shi[1:] != shi[:-1]) | (slo[1:] != slo[:-1])
    inverse = np.empty(len(order), np.int64)
    inverse[order] = np.cumsum(new) - 1
    return shi[new], slo[new], inverse


def _specificity_rank(n_signatures, index, size_hi, size_lo):
    """Rank of each signature by (address count, index): 0 = most specific."""
    size_hi_all = np.zeros(n_signatures, np.uint64)
    size_lo_all = np.zeros(n_signatures, np.uint64)
    if not len(index) or np.bincount(index).max() == 1:
        size_hi_all[index] = size_hi
        size_lo_all[index] = size_lo
    else:
        # A signature with several ranges: add their sizes exactly with Python ints.
        totals: dict[int, int] = {}
        for i, h, low in zip(index.tolist(), size_hi.tolist(), size_lo.tolist()):
            totals[i] = min(totals.get(i, 0) + (h << 64 | low), (1 << 128) - 1)
        for i, total in totals.items():
            size_hi_all[i] = total >> 64
            size_lo_all[i] = total & 0xFFFF_FFFF_FFFF_FFFF
    order = np.lexsort((np.arange(n_signatures), size_lo_all, size_hi_all))
    rank = np.empty(n_signatures, np.int64)
    rank[order] = np.arange(n_signatures)
    return rank


def _covering_partition(n_signatures, s_hi, s_lo, e_hi, e_lo, index, v4=False):
    """Elementary intervals of the ranges and their covering signatures, most specific first.

    Returns (starts_hi, starts_lo, offsets int64[m+1], signatures int32) in CSR form.
    """
    index = np.asarray(index, np.int64)
    n = len(index)
    # size - 1 = end - start (128-bit subtraction); ranks compare it, never the overflowing size.
    borrow = (e_lo < s_lo).astype(np.uint64)
    rank = _specificity_rank(n_signatures, index, e_hi - s_hi - borrow, e_lo - s_lo)
    after_hi, after_lo, overflow = _plus_one(e_hi, e_lo)
    if v4:
        overflow |= after_lo > np.uint64(0xFFFF_FFFF)
    keys_hi = np.concatenate([np.zeros(1, np.uint64), s_hi, after_hi[~overflow]])
    keys_lo = np.concatenate([np.zeros(1, np.uint64), s_lo, after_lo[~overflow]])
    starts_hi, starts_lo, inverse = _unique_keys(keys_hi, keys_lo)
    m = len(starts_hi)
    first = inverse[1:1 + n]
    stop = np.full(n, m, np.int64)
    stop[~overflow] = inverse[1 + n:]
    count = stop - first
    total = int(count.sum())
    interval = np.arange(total, dtype=np.int64) + np.repeat(first - (np.cumsum(count) - count), count)
    sig = np.repeat(index, count)
    order = np.lexsort((rank[sig], interval))
    interval, sig = interval[order], sig[order]
    keep = np.ones(total, bool)
    keep[1:] = (interval[1:] != interval[:-1]) | (sig[1:] != sig[:-1])
    interval, sig = interval[keep], sig[keep]
    offsets = np.zeros(m + 1, np.int64)
    np.cumsum(np.bincount(interval, minlength=m), out=offsets[1:])
    return starts_hi, starts_lo, offsets, sig.astype(np.int32)


def _fuse(a_hi, a_lo, b_hi, b_lo):
    """Union of two partitions (both start at 0): starts and the containing interval of each."""
    na = len(a_hi)
    hi = np.concatenate([a_hi, b_hi])
    lo = np.concatenate([a_lo, b_lo])
    order = np.lexsort((lo, hi))
    in_a = np.maximum.accumulate(np.where(order < na, order, -1))
    in_b = np.maximum.accumulate(np.where(order >= na, order - na, -1))
    shi, slo = hi[order], lo[order]
    last = np.ones(len(order), bool)
    last[:-1] = (shi[1:] != shi[:-1]) | (slo[1:] != slo[:-1])
    return shi[last], slo[last], in_a[last], in_b[last]


def _family_values(csr, geo_hi, geo_lo, geo_country):
    """Fused starts and (signature, country) keys, adjacent equal keys merged."""
    starts_hi, starts_lo, offsets, sigs = csr
    best = np.full(len(starts_hi), -1, np.int64)
    covered = offsets[1:] > offsets[:-1]
    best[covered] = sigs[offsets[:-1][covered]]
    hi, lo, in_sig, in_geo = _fuse(starts_hi, starts_lo, geo_hi, geo_lo)
    key = (best[in_sig] + 1) << 16 | geo_country[in_geo].astype(np.int64)
    keep = np.ones(len(key), bool)
    keep[1:] = key[1:] != key[:-1]
    return hi[keep], lo[keep], key[keep]


def _huge_page_array(count: int, dtype) -> np.ndarray:
    """A writable zeroed array in anonymous memory advised for transparent huge pages.

    The DIR-24 level is read at random: huge pages save most of its TLB misses.
    """
    nbytes = count * np.dtype(dtype).itemsize
    try:
        region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            region.madvise(mmap.MADV_HUGEPAGE)
    except (OSError, ValueError, AttributeError):
        return np.zeros(count, dtype)
    return np.frombuffer(region, dtype=dtype, count=count)


def _v4_first_level(starts, value, bits):
    """DIR-style first level over the top ``bits`` bits and the segments of mixed blocks."""
    shift = 32 - bits
    blocks = 1 << bits
    wide = starts.astype(np.int64)
    # Interval containing each block's first address: the last start at or before it.
    first_block = (wide + (1 << shift) - 1) >> shift
    last_of_block = np.ones(len(starts), bool)
    last_of_block[:-1] = first_block[1:] != first_block[:-1]
    last_of_block &= first_block < blocks
    containing = np.zeros(blocks, np.int32)
    containing[first_block[last_of_block]] = np.flatnonzero(last_of_block)
    np.maximum.accumulate(containing, out=containing)
    l1 = _huge_page_array(blocks, np.uint32)
    l1[:] = value[containing]
    # A block is mixed when an interval starts inside it (not on its first address).
    inner = (wide & ((1 << shift) - 1)) != 0
    mixed = wide[inner] >> shift  # sorted: keep the first of equal blocks
    mixed = mixed[np.r_[True, mixed[1:] != mixed[:-1]]] if len(mixed) else mixed
    first = containing[mixed].astype(np.int64)
    last = np.searchsorted(wide >> shift, mixed, side="right") - 1
    seg = np.empty((len(mixed), 2), np.uint32)
    seg[:, 0] = first
    seg[:, 1] = last - first + 1
    l1[mixed] = SEGMENT_FLAG | np.arange(len(mixed), dtype=np.uint32)
    return l1, seg


def _v6_index(keys_hi, keys_lo, bits):
    """Interval containing the first address of each top-``bits`` block (plus a sentinel)."""
    shift = np.uint64(64 - bits)
    tops = keys_hi >> shift
    index = np.searchsorted(tops, np.arange((1 << bits) + 1, dtype=np.uint64), side="left") - 1
    exact = ((keys_hi & ((np.uint64(1) << shift) - np.uint64(1))) == 0) & (keys_lo == 0)
    index[tops[exact].astype(np.int64)] += 1
    return index.astype(np.uint32)


def _country_codes(countries) -> np.ndarray:
    codes = np.array([c.encode("ascii", "replace")[:2] for c in countries], dtype="S2")
    return codes.view(np.uint16)


def compile_tables(signatures, geoip=None) -> dict[str, np.ndarray]:
    """The engine's table arrays for ``signatures`` (v4_ranges/v6_ranges) and a GeoTable."""
    n_sig = len(signatures)
    s4, e4, i4 = signatures.v4_ranges()
    s4 = np.asarray(s4, np.uint32).astype(np.uint64)
    e4 = np.asarray(e4, np.uint32).astype(np.uint64)
    zeros4 = np.zeros(len(s4), np.uint64)
    csr4 = _covering_partition(n_sig, zeros4, s4, zeros4, e4, i4, v4=True)
    s6h, s6l, e6h, e6l, i6 = (np.asarray(a) for a in signatures.v6_ranges())
    csr6 = _covering_partition(n_sig, s6h.astype(np.uint64), s6l.astype(np.uint64),
                               e6h.astype(np.uint64), e6l.astype(np.uint64), i6)

    if geoip is None:
        countries = [""]
        geo4 = (np.zeros(1, np.uint64), np.zeros(1, np.uint64), np.zeros(1, np.uint16))
        geo6 = geo4
    else:
        countries = list(geoip.countries)
        v4_starts = np.asarray(geoip.v4_starts, np.uint32).astype(np.uint64)
        geo4 = (np.zeros(len(v4_starts), np.uint64), v4_starts, np.asarray(geoip.v4_country))
        geo6 = (np.asarray(geoip.v6_hi, np.uint64), np.asarray(geoip.v6_lo, np.uint64),
                np.asarray(geoip.v6_country))
    for _hi, _lo, country in (geo4, geo6):
        if len(country) and int(country.max()) >= len(countries):
            raise ValueError("GeoTable country index out of range")

    _h4, lo4, key4 = _family_values(csr4, *geo4)
    hi6, lo6, key6 = _family_values(csr6, *geo6)
    distinct, value_id = np.unique(np.concatenate([key4, key6]), return_inverse=True)
    value_id = value_id.astype(np.uint32)
    sig_of_value = (distinct >> 16) - 1
    codes = _country_codes(countries)
    values = (sig_of_value.astype(np.uint64) & np.uint64(0xFFFF_FFFF)) | (
        codes[distinct & 0xFFFF].astype(np.uint64) << np.uint64(32))

    v4_starts = lo4.astype(np.uint32)
    v4_value = value_id[:len(key4)]
    v4_bits = _V4_L1_BITS_LARGE if len(v4_starts) > _LARGE_TABLE else _V4_L1_BITS_SMALL
    v4_l1, v4_seg = _v4_first_level(v4_starts, v4_value, v4_bits)
    v6_bits = _V6_INDEX_BITS_LARGE if len(hi6) > _LARGE_TABLE else _V6_INDEX_BITS_SMALL
    return {
        "values": values,
        "v4_starts": v4_starts,
        "v4_value": v4_value,
        "v4_l1": v4_l1,
        "v4_seg": v4_seg,
        "v6_keys": np.stack([hi6, lo6], axis=1),
        "v6_value": value_id[len(key4):],
        "v6_index": _v6_index(hi6, lo6, v6_bits),
        "m4_starts": csr4[1].astype(np.uint32),
        "m4_offsets": csr4[2],
        "m4_sigs": csr4[3],
        "m6_keys": np.stack([csr6[0], csr6[1]], axis=1),
        "m6_offsets": csr6[2],
        "m6_sigs": csr6[3],
    }


# --------------------------------------------------------------------------- engine


def _as_uint(values, dtype, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype == dtype:
        return np.ascontiguousarray(array)
    if array.dtype.kind not in "iu" and not (array.dtype.kind == "O" or array.size == 0):
        raise TypeError(f"{what} must be integers, got {array.dtype}")
    wide = array.astype(object) if array.dtype.kind == "O" else array
    if array.size and (np.min(wide) < 0 or np.max(wide) > np.iinfo(dtype).max):
        raise ValueError(f"{what} out of range for {np.dtype(dtype).name}")
    return np.ascontiguousarray(array.astype(dtype))


class Engine:
    """Signatures and GeoIP countries compiled for batch lookups (see docs/ARCHITECTURE.md).

    ``impl`` ("c" or "py") forces an implementation; by default connscan._native chooses.
    A loaded engine's ``signatures`` is a SavedSignatures and its ``geoip`` is None (the
    countries live in the fused tables).
    """

    def __init__(self, signatures, geoip=None, *, impl: str | None = None):
        self.signatures = signatures
        self.geoip = geoip
        self._countries = list(geoip.countries) if geoip is not None else [""]
        self._geo_meta = ({"source": getattr(geoip, "source", ""), "sha256": getattr(geoip, "sha256", "")}
                          if geoip is not None else None)
        self._columns = None
        self._sha256 = None
        self._setup(compile_tables(signatures, geoip), impl)

    def _setup(self, arrays, impl):
        self._impl = _native.load("engine", impl=impl)
        self.implementation = "c" if self._impl.__name__.endswith("_c") else "py"
        self._arrays = arrays
        self._tables = self._impl.Tables(arrays, len(self.signatures))

    # ---------------------------------------------------------------- lookups

    def _result(self, n):
        return np.empty(n, np.int32), np.empty(n, "S2")

    def lookup_ipv4(self, addrs) -> LookupResult:
        addrs = _as_uint(addrs, np.uint32, "IPv4 addresses")
        sig, country = self._result(len(addrs))
        self._impl.lookup_ipv4(self._tables, addrs, sig, country.view(np.uint16))
        return LookupResult(sig, country)

    def lookup_ipv6(self, hi, lo) -> LookupResult:
        hi = _as_uint(hi, np.uint64, "IPv6 high halves")
        lo = _as_uint(lo, np.uint64, "IPv6 low halves")
        if len(hi) != len(lo):
            raise ValueError(f"hi and lo differ in length ({len(hi)} != {len(lo)})")
        sig, country = self._result(len(hi))
        self._impl.lookup_ipv6(self._tables, hi, lo, sig, country.view(np.uint16))
        return LookupResult(sig, country)

    def lookup_parsed(self, parsed: ParsedAddresses) -> LookupResult:
        n = len(parsed.kind)
        if not (len(parsed.v4) == len(parsed.hi) == len(parsed.lo) == n):
            raise ValueError("ParsedAddresses arrays differ in length")
        kind = np.ascontiguousarray(parsed.kind, np.uint8)
        sig, country = self._result(n)
        self._impl.lookup_parsed(self._tables, kind, _as_uint(parsed.v4, np.uint32, "v4"),
                                 _as_uint(parsed.hi, np.uint64, "hi"),
                                 _as_uint(parsed.lo, np.uint64, "lo"), sig, country.view(np.uint16))
        return LookupResult(sig, country, valid=kind != 0, is_ipv4=kind == 4)

    def look_up_ends(self, home: "Engine", src, dst) -> FlowEndLookup:
        """Flows' source and destination text (pyarrow string arrays of equal length)
        parsed and looked up in one native pass: in ``home`` (the home networks, which pick
        the local end) and in this engine."""
        n = len(src)
        if len(dst) != n:
            raise ValueError(f"source and destination differ in length ({n} != {len(dst)})")
        if home._impl is not self._impl:
            raise ValueError("the home engine uses another implementation")
        src_text, dst_text = _single_chunk(src), _single_chunk(dst)
        if src_text[0].dtype != dst_text[0].dtype:  # one offset width for both
            src_text, dst_text = _single_chunk(src, wide=True), _single_chunk(dst, wide=True)
        bad, src_home, inbound = np.empty(n, np.uint8), np.empty(n, bool), np.empty(n, bool)
        local_sig = np.empty(n, np.int32)
        sig, country = self._result(n)
        try:
            self._impl.look_up_ends(self._tables, home._tables, *src_text, *dst_text, bad, src_home.view(np.uint8),
                                    inbound.view(np.uint8), sig, country.view(np.uint16), local_sig)
        except ValueError as exc:
            raise InputError(f"corrupt Arrow string array: {exc}") from None
        return FlowEndLookup(bad, src_home, inbound, LookupResult(sig, country, valid=bad == 0), local_sig)

    def side_ports(self, inbound: np.ndarray, sport: np.ndarray, dport: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(local, remote) int64 port of each flow: the destination's is local when
        ``inbound`` (bool). int32 ports take one native pass."""
        if len(sport) != len(inbound) or len(dport) != len(inbound):
            raise ValueError("side_ports: columns differ in length")
        if sport.dtype != np.int32 or dport.dtype != np.int32:
            return np.where(inbound, dport, sport).astype(np.int64), np.where(inbound, sport, dport).astype(np.int64)
        lport, rport = np.empty(len(inbound), np.int64), np.empty(len(inbound), np.int64)
        self._impl.side_ports(np.ascontiguousarray(inbound).view(np.uint8), np.ascontiguousarray(sport),
                              np.ascontiguousarray(dport), lport, rport)
        return lport, rport

    def lookup(self, addrs) -> LookupResult:
        """Look up address text: list/ndarray of str, pyarrow (Large)String array or ChunkedArray."""
        # Two passes (parse, then look up with prefetching) measured faster than a fused one.
        return self.lookup_parsed(parse_addresses(addrs, self._impl))

    def matches(self, addr: str) -> list[int]:
        """Every signature containing ``addr``, most specific first ([] for invalid text)."""
        parsed = parse_addresses([addr], self._impl)
        kind = int(parsed.kind[0])
        if kind == 4:
            return self._impl.matches_v4(self._tables, int(parsed.v4[0]))
        if kind == 6:
            return self._impl.matches_v6(self._tables, int(parsed.hi[0]), int(parsed.lo[0]))
        return []

    def matches_at(self, version: int, address: int) -> list[int]:
        """``matches`` of an address given as an int of IP ``version`` 4 or 6."""
        if version == 4:
            return self._impl.matches_v4(self._tables, address)
        return self._impl.matches_v6(self._tables, address >> 64, address & 0xFFFF_FFFF_FFFF_FFFF)

    @property
    def table_bytes(self) -> int:
        """Memory held by the compiled tables."""
        return sum(a.nbytes for a in self._arrays.values())

    # ---------------------------------------------------------------- persistence

    def _signature_columns(self) -> dict[str, np.ndarray]:
        if self._columns is None:
            self._columns = _signature_columns(self.signatures)
        return self._columns

    @property
    def sha256(self) -> str:
        """Identity of what was compiled: every signature field and the GeoIP data."""
        if self._sha256 is None:
            digest = hashlib.sha256()
            for name, column in sorted(self._signature_columns().items()):
                digest.update(name.encode())
                digest.update(np.ascontiguousarray(column).tobytes())
            digest.update(json.dumps([self._geo_meta, self._countries], sort_keys=True).encode())
            self._sha256 = digest.hexdigest()
        return self._sha256

    def save(self, path) -> None:
        """Write the compiled tables and the signature metadata to one table file."""
        from connscan import tables

        arrays = dict(self._arrays)
        arrays.update(self._signature_columns())
        meta = {"version": TABLE_VERSION, "n_signatures": len(self.signatures),
                "countries": self._countries, "geoip": self._geo_meta, "sha256": self.sha256}
        tables.write_tables(path, TABLE_KIND, meta, arrays)

    @classmethod
    def load(cls, path, expected_sha256: str | None = None, *, impl: str | None = None) -> "Engine":
        """Open a saved engine (memory-mapped); a corrupt or stale file raises CacheError."""
        from connscan import tables

        table_file = tables.read_tables(path, TABLE_KIND)
        meta = table_file.meta

        def fail(problem):
            return CacheError(f"{Path(path)}: {problem}")

        if meta.get("version") != TABLE_VERSION:
            raise fail(f"engine table version {meta.get('version')!r}, expected {TABLE_VERSION}")
        if expected_sha256 is not None and meta.get("sha256") != expected_sha256:
            raise fail("compiled for other signatures or GeoIP data (sha256 mismatch)")
        countries = meta.get("countries")
        n_sig = meta.get("n_signatures")
        if (not isinstance(countries, list) or not all(isinstance(c, str) for c in countries)
                or type(n_sig) is not int or n_sig < 0):
            raise fail("bad engine metadata")
        engine = cls.__new__(cls)
        engine.signatures = _signatures_from_columns(table_file.arrays, n_sig, fail)
        engine.geoip = None
        engine._countries = countries
        engine._geo_meta = meta.get("geoip")
        engine._columns = {name: array for name, array in table_file.arrays.items()
                           if name.startswith("sig_")}
        engine._sha256 = meta.get("sha256")
        arrays = {name: table_file.arrays.get(name) for name in _TABLE_SECTIONS}
        try:
            engine._setup(arrays, impl)
        except (ValueError, TypeError) as exc:
            raise fail(f"invalid engine tables: {exc}") from None
        return engine


_TABLE_SECTIONS = ("values", "v4_starts", "v4_value", "v4_l1", "v4_seg", "v6_keys", "v6_value",
                   "v6_index", "m4_starts", "m4_offsets", "m4_sigs", "m6_keys", "m6_offsets",
                   "m6_sigs")
_SIGNATURE_TEXT = ("network", "description", "source", "kind")
_SIGNATURE_RANGES = ("v4_start", "v4_end", "v4_index", "v6_start_hi", "v6_start_lo", "v6_end_hi",
                     "v6_end_lo", "v6_index")


def _signature_columns(signatures) -> dict[str, np.ndarray]:
    """Signature metadata as arrays (a JSON document would be too large for big sets).

    Each text field is dictionary-encoded: distinct texts (UTF-8 blob + offsets) + codes.
    """
    sigs = list(signatures)
    columns = {}
    for field in _SIGNATURE_TEXT:
        distinct: dict[str, int] = {}
        codes = [distinct.setdefault(text, len(distinct)) for text in (getattr(s, field) for s in sigs)]
        encoded = [text.encode() for text in distinct]
        offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        columns[f"sig_{field}_data"] = np.frombuffer(b"".join(encoded), np.uint8).copy()
        columns[f"sig_{field}_offsets"] = offsets
        columns[f"sig_{field}_code"] = np.array(codes, np.int32)
    columns["sig_score"] = np.array([s.score for s in sigs], np.int32)
    columns["sig_port"] = np.array([-1 if s.port is None else s.port for s in sigs], np.int32)
    for name, column in zip(_SIGNATURE_RANGES, (*signatures.v4_ranges(), *signatures.v6_ranges())):
        columns[f"sig_{name}"] = np.asarray(column)
    return columns


class SavedSignatures:
    """The signatures of a loaded engine: the read side of SignatureSet (len, [i], iter,
    v4_ranges, v6_ranges), decoded from the table file on demand."""

    def __init__(self, texts, codes, score, port, ranges):
        self._texts, self._codes, self._score, self._port = texts, codes, score, port
        self._ranges = ranges
        self._where = None  # bounds(): each signature's position in the ranges
        self.domains: list = []
        self.warnings: list[str] = []

    def __len__(self) -> int:
        return len(self._score)

    def __getitem__(self, index):
        from connscan.signatures import Signature

        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = range(len(self))[index]  # IndexError and negative indices as for a list
        port = int(self._port[index])
        fields = {f: self._texts[f][self._codes[f][index]] for f in _SIGNATURE_TEXT}
        return Signature(score=int(self._score[index]), port=None if port < 0 else port, **fields)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def v4_ranges(self):
        return self._ranges[:3]

    def v6_ranges(self):
        return self._ranges[3:]

    def bounds(self, index: int) -> tuple[int, int, int, bool]:
        """(IP version, first address, last address as ints, whether it is a range "a-b")."""
        if self._where is None:  # each signature's range, from the ranges' signature indices
            where = np.full(len(self), -1, np.int64)
            v4_index, v6_index = self._ranges[2], self._ranges[7]
            where[v4_index] = np.arange(len(v4_index))
            where[v6_index] = len(v4_index) + np.arange(len(v6_index))
            self._where = where
        index = range(len(self))[index]
        pos = int(self._where[index])
        is_range = "-" in self._texts["network"][self._codes["network"][index]]
        v4_count = len(self._ranges[2])
        if pos < v4_count:
            return 4, int(self._ranges[0][pos]), int(self._ranges[1][pos]), is_range
        hi, lo, end_hi, end_lo = (int(column[pos - v4_count]) for column in self._ranges[3:7])
        return 6, hi << 64 | lo, end_hi << 64 | end_lo, is_range

    def rule_columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(kind uint8 index into signatures.KINDS, score int8, port int32 -1 for none)."""
        from connscan.signatures import KINDS

        kind_of_text = np.array([KINDS.index(text) if text in KINDS else 255 for text in self._texts["kind"]], np.uint8)
        return kind_of_text[self._codes["kind"]], self._score.astype(np.int8), self._port


class _Texts:
    """A text column of a table file (checked UTF-8 offsets into its bytes), each text
    decoded when asked for: as Python strings, the 270k signatures' networks and sources
    alone would take about 45 MB."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray):
        self._data, self._offsets = data, offsets

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        start, end = self._offsets[i], self._offsets[i + 1]
        return self._data[start:end].tobytes().decode()

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def _signatures_from_columns(arrays, n_sig, fail) -> SavedSignatures:
    texts, codes = {}, {}
    for field in _SIGNATURE_TEXT:
        data = arrays.get(f"sig_{field}_data")
        offsets = arrays.get(f"sig_{field}_offsets")
        code = arrays.get(f"sig_{field}_code")
        if (data is None or offsets is None or code is None or data.dtype != np.uint8
                or offsets.dtype != np.int64 or offsets.ndim != 1 or len(offsets) < 1
                or offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] != len(data)
                or code.dtype != np.int32 or code.shape != (n_sig,)
                or (n_sig and (code.min() < 0 or code.max() >= len(offsets) - 1))):
            raise fail(f"bad signature column {field!r}")
        # Every text is UTF-8 when the whole column is and no text starts inside a character.
        starts = offsets[1:-1]
        try:
            bytes(data).decode()
        except UnicodeDecodeError:
            raise fail(f"signature column {field!r} is not UTF-8") from None
        if np.any(data[starts[starts < len(data)]] & 0xC0 == 0x80):
            raise fail(f"signature column {field!r} is not UTF-8")
        texts[field] = _Texts(data, offsets)
        codes[field] = code
    numbers = {}
    for field in ("score", "port"):
        column = arrays.get(f"sig_{field}")
        if column is None or column.dtype != np.int32 or column.shape != (n_sig,):
            raise fail(f"bad signature column {field!r}")
        numbers[field] = column
    ranges = tuple(arrays.get(f"sig_{name}") for name in _SIGNATURE_RANGES)
    if any(r is None for r in ranges):
        raise fail("signature ranges missing")
    v4_start, v4_end, v4_index, v6_start_hi, v6_start_lo, v6_end_hi, v6_end_lo, v6_index = ranges
    v4_ok = (v4_start.dtype == v4_end.dtype == np.uint32 and v4_index.dtype == np.int32
             and v4_start.ndim == 1 and v4_start.shape == v4_end.shape == v4_index.shape)
    v6_ok = (all(c.dtype == np.uint64 and c.ndim == 1 and c.shape == v6_index.shape
                 for c in (v6_start_hi, v6_start_lo, v6_end_hi, v6_end_lo)) and v6_index.dtype == np.int32)
    if not (v4_ok and v6_ok):
        raise fail("bad signature ranges")
    # Each signature has exactly one range, which does not end before it starts.
    index = np.concatenate([v4_index, v6_index])
    if (len(index) != n_sig or (n_sig and (index.min() < 0 or index.max() >= n_sig))
            or np.bincount(index, minlength=n_sig).max(initial=1) != 1
            or np.any(v4_end < v4_start)
            or np.any((v6_end_hi < v6_start_hi) | ((v6_end_hi == v6_start_hi) & (v6_end_lo < v6_start_lo)))):
        raise fail("bad signature ranges")
    return SavedSignatures(texts, codes, numbers["score"], numbers["port"], ranges)
