# cython: boundscheck=False, wraparound=False, cdivision=True, language_level=3
"""Native core of connscan.engine: table validation, nogil lookups, address text parser.

Same functions as the pure-Python twin ``connscan._engine_py``; the table layout is
described in ``connscan.engine``. Every index read from a table is checked in ``Tables``
before any lookup trusts it, so a corrupt saved engine raises ValueError, never crashes.
"""
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memchr

import numpy as np

cdef extern from *:
    """
    #define CONNSCAN_PREFETCH(p) __builtin_prefetch((p), 0, 0)
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif
    /* Bit i of *dots: byte i of s[0:16] is '.'; of *other: it is neither '.' nor a digit. */
    static inline void connscan_dotted_masks(const unsigned char* s, unsigned int* dots, unsigned int* other) {
    #if defined(__SSE2__)
        __m128i v = _mm_loadu_si128((const __m128i*)s);
        __m128i t = _mm_sub_epi8(v, _mm_set1_epi8('0'));
        __m128i digit = _mm_cmpeq_epi8(_mm_min_epu8(t, _mm_set1_epi8(9)), t);
        *dots = (unsigned int)_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8('.')));
        *other = ~((unsigned int)_mm_movemask_epi8(digit) | *dots) & 0xFFFFu;
    #else
        unsigned int d = 0, o = 0;
        for (int i = 0; i < 16; i++) {
            d |= (unsigned int)(s[i] == '.') << i;
            o |= (unsigned int)(s[i] != '.' && (unsigned char)(s[i] - '0') > 9) << i;
        }
        *dots = d;
        *other = o;
    #endif
    }
    """
    void CONNSCAN_PREFETCH(const void* p) noexcept nogil
    void connscan_dotted_masks(const uint8_t* s, unsigned int* dots, unsigned int* other) noexcept nogil
    int __builtin_ctz(unsigned int) noexcept nogil

# Lookups ahead whose first-level entry is prefetched: random reads overlap their misses.
cdef enum:
    PREFETCH_DISTANCE = 32

cdef uint32_t SEGMENT_FLAG = 0x80000000u
cdef uint64_t LOW32 = 0xFFFFFFFFu
cdef uint64_t MAPPED_PREFIX = 0xFFFFu    # ::ffff:0:0/96 is IPv4


ctypedef struct V4Table:
    const uint32_t* starts   # sorted interval starts, starts[0] == 0
    const uint32_t* value    # value id per interval
    const uint32_t* l1       # top-bits level: value id, or SEGMENT_FLAG | segment
    const uint32_t* seg      # per segment: first interval, interval count
    uint32_t shift           # 32 - first-level bits

ctypedef struct V6Table:
    const uint64_t* keys     # interleaved (hi, lo) interval starts, keys[0..1] == 0
    const uint32_t* value    # value id per interval
    const uint32_t* index    # interval containing each top-bits block start, + sentinel
    uint32_t shift           # 64 - index bits


cdef inline uint32_t v4_find(const V4Table* t, uint32_t addr) noexcept nogil:
    cdef uint32_t entry = t.l1[addr >> t.shift]
    cdef uint32_t base, count, half
    if entry & SEGMENT_FLAG:
        # Mixed block: branch-free search for the last start <= addr among its intervals.
        entry &= ~SEGMENT_FLAG
        base = t.seg[2 * entry]
        count = t.seg[2 * entry + 1]
        while count > 1:
            half = count >> 1
            base = base + half if t.starts[base + half] <= addr else base
            count -= half
        return t.value[base]
    return entry


cdef inline uint32_t v6_find(const V6Table* t, uint64_t hi, uint64_t lo) noexcept nogil:
    cdef uint64_t top = hi >> t.shift
    cdef uint32_t base = t.index[top]
    cdef uint32_t count = t.index[top + 1] - base + 1
    cdef uint32_t half
    cdef const uint64_t* key
    while count > 1:
        half = count >> 1
        key = t.keys + 2 * <size_t>(base + half)
        base = base + half if (key[0] < hi) | ((key[0] == hi) & (key[1] <= lo)) else base
        count -= half
    return t.value[base]


cdef class Tables:
    """Validated engine tables; the constructor raises ValueError naming the bad table."""

    cdef V4Table v4
    cdef V6Table v6
    cdef const uint64_t* values
    cdef readonly object arrays   # keeps every buffer alive
    cdef const uint32_t[::1] m4_starts
    cdef const int64_t[::1] m4_offsets
    cdef const int32_t[::1] m4_sigs
    cdef const uint64_t[:, ::1] m6_keys
    cdef const int64_t[::1] m6_offsets
    cdef const int32_t[::1] m6_sigs

    def __init__(self, dict arrays, Py_ssize_t n_signatures):
        # The raw pointers below point into these arrays (contiguous copies if need be).
        kept = {name: _array(arrays, name, dtype, ndim) for name, dtype, ndim in _SECTIONS}
        self.arrays = kept
        cdef const uint64_t[::1] values = kept["values"]
        cdef const uint32_t[::1] v4_starts = kept["v4_starts"]
        cdef const uint32_t[::1] v4_value = kept["v4_value"]
        cdef const uint32_t[::1] v4_l1 = kept["v4_l1"]
        cdef const uint32_t[:, ::1] v4_seg = kept["v4_seg"]
        cdef const uint64_t[:, ::1] v6_keys = kept["v6_keys"]
        cdef const uint32_t[::1] v6_value = kept["v6_value"]
        cdef const uint32_t[::1] v6_index = kept["v6_index"]
        self.m4_starts = kept["m4_starts"]
        self.m4_offsets = kept["m4_offsets"]
        self.m4_sigs = kept["m4_sigs"]
        self.m6_keys = kept["m6_keys"]
        self.m6_offsets = kept["m6_offsets"]
        self.m6_sigs = kept["m6_sigs"]

        cdef Py_ssize_t nv = values.shape[0], n4 = v4_starts.shape[0], n6 = v6_keys.shape[0]
        cdef Py_ssize_t nseg = v4_seg.shape[0], i
        cdef int v4_bits = _log2(v4_l1.shape[0]), v6_bits = _log2(v6_index.shape[0] - 1)
        cdef const char* problem = NULL
        if nv == 0 or n4 == 0 or n6 == 0:
            raise ValueError("empty value or interval table")
        if v4_value.shape[0] != n4 or v6_value.shape[0] != n6:
            raise ValueError("interval and value tables differ in length")
        if v4_bits < 1 or v4_bits > 24:
            raise ValueError("table v4_l1 has a bad length")
        if v6_bits < 1 or v6_bits > 24:
            raise ValueError("table v6_index has a bad length")

        with nogil:
            for i in range(nv):
                if <int32_t>(<uint32_t>values[i]) < -1 or <int32_t>(<uint32_t>values[i]) >= n_signatures:
                    problem = "table values holds a signature index out of range"
                    break
            if problem == NULL:
                problem = _check_v4(&v4_starts[0], &v4_value[0], n4, &v4_l1[0], v4_l1.shape[0],
                                    &v4_seg[0, 0] if nseg else NULL, nseg, nv)
            if problem == NULL:
                problem = _check_v6(&v6_keys[0, 0], &v6_value[0], n6, &v6_index[0],
                                    v6_index.shape[0], nv)
        if problem != NULL:
            raise ValueError(problem.decode())
        _check_matches(self.m4_starts, None, self.m4_offsets, self.m4_sigs, n_signatures, "m4")
        _check_matches(None, self.m6_keys, self.m6_offsets, self.m6_sigs, n_signatures, "m6")

        self.values = &values[0]
        self.v4.starts = &v4_starts[0]
        self.v4.value = &v4_value[0]
        self.v4.l1 = &v4_l1[0]
        self.v4.seg = &v4_seg[0, 0] if nseg else NULL
        self.v4.shift = 32 - v4_bits
        self.v6.keys = &v6_keys[0, 0]
        self.v6.value = &v6_value[0]
        self.v6.index = &v6_index[0]
        self.v6.shift = 64 - v6_bits


_SECTIONS = [
    ("values", np.uint64, 1), ("v4_starts", np.uint32, 1), ("v4_value", np.uint32, 1),
    ("v4_l1", np.uint32, 1), ("v4_seg", np.uint32, 2), ("v6_keys", np.uint64, 2),
    ("v6_value", np.uint32, 1), ("v6_index", np.uint32, 1), ("m4_starts", np.uint32, 1),
    ("m4_offsets", np.int64, 1), ("m4_sigs", np.int32, 1), ("m6_keys", np.uint64, 2),
    ("m6_offsets", np.int64, 1), ("m6_sigs", np.int32, 1),
]


def _array(dict arrays, str name, dtype, int ndim):
    array = arrays.get(name)
    if not isinstance(array, np.ndarray) or array.dtype != dtype or array.ndim != ndim:
        raise ValueError(f"table {name} must be a {ndim}-d {np.dtype(dtype).name} array")
    if ndim == 2 and array.shape[1] != 2:
        raise ValueError(f"table {name} must have 2 columns")
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    return array


cdef int _log2(Py_ssize_t n) noexcept:
    """log2(n) for a power of two n >= 2, else -1."""
    cdef int bits = 0
    if n < 2 or (n & (n - 1)):
        return -1
    while (<Py_ssize_t>1 << bits) < n:
        bits += 1
    return bits


cdef const char* _check_v4(const uint32_t* starts, const uint32_t* value, Py_ssize_t n,
                           const uint32_t* l1, Py_ssize_t nl1, const uint32_t* seg,
                           Py_ssize_t nseg, Py_ssize_t nv) noexcept nogil:
    cdef Py_ssize_t i
    cdef uint32_t entry
    if starts[0] != 0:
        return "table v4_starts does not start at 0"
    for i in range(n):
        if i and starts[i] <= starts[i - 1]:
            return "table v4_starts is not strictly increasing"
        if value[i] >= nv:
            return "table v4_value holds a value id out of range"
    for i in range(nseg):
        if seg[2 * i + 1] < 1 or <uint64_t>seg[2 * i] + seg[2 * i + 1] > <uint64_t>n:
            return "table v4_seg holds a segment out of bounds"
    for i in range(nl1):
        entry = l1[i]
        if entry & SEGMENT_FLAG:
            if (entry & ~SEGMENT_FLAG) >= nseg:
                return "table v4_l1 holds an entry out of range"
        elif entry >= nv:
            return "table v4_l1 holds an entry out of range"
    return NULL


cdef const char* _check_v6(const uint64_t* keys, const uint32_t* value, Py_ssize_t n,
                           const uint32_t* index, Py_ssize_t nindex, Py_ssize_t nv) noexcept nogil:
    cdef Py_ssize_t i
    if keys[0] != 0 or keys[1] != 0:
        return "table v6_keys does not start at 0"
    for i in range(n):
        if i and (keys[2 * i] < keys[2 * i - 2]
                  or (keys[2 * i] == keys[2 * i - 2] and keys[2 * i + 1] <= keys[2 * i - 1])):
            return "table v6_keys is not strictly increasing"
        if value[i] >= nv:
            return "table v6_value holds a value id out of range"
    for i in range(nindex):
        if index[i] >= n or (i and index[i] < index[i - 1]):
            return "table v6_index holds an entry out of range"
    return NULL


cdef _check_matches(const uint32_t[::1] starts4, const uint64_t[:, ::1] keys6,
                    const int64_t[::1] offsets, const int32_t[::1] sigs,
                    Py_ssize_t n_signatures, str name):
    cdef Py_ssize_t n = starts4.shape[0] if keys6 is None else keys6.shape[0]
    cdef Py_ssize_t i, nsigs = sigs.shape[0]
    cdef bint ok = n >= 1 and offsets.shape[0] == n + 1
    if ok:
        with nogil:
            if keys6 is None:
                ok = starts4[0] == 0
                for i in range(1, n):
                    ok = ok and starts4[i] > starts4[i - 1]
            else:
                ok = keys6[0, 0] == 0 and keys6[0, 1] == 0
                for i in range(1, n):
                    ok = ok and (keys6[i, 0] > keys6[i - 1, 0] or (
                        keys6[i, 0] == keys6[i - 1, 0] and keys6[i, 1] > keys6[i - 1, 1]))
            ok = ok and offsets[0] == 0 and offsets[n] == nsigs
            for i in range(n):
                ok = ok and offsets[i + 1] >= offsets[i]
            for i in range(nsigs):
                ok = ok and 0 <= sigs[i] < n_signatures
    if not ok:
        raise ValueError(f"table {name} (signature partition) is inconsistent")


# ----------------------------------------------------------------------------- lookups


cdef inline void _store(uint64_t value, int32_t* sig, uint16_t* cc) noexcept nogil:
    sig[0] = <int32_t>(<uint32_t>value)
    cc[0] = <uint16_t>(value >> 32)


cdef inline uint32_t _v6_or_mapped(const V4Table* v4, const V6Table* v6,
                                   uint64_t hi, uint64_t lo) noexcept nogil:
    if hi == 0 and (lo >> 32) == MAPPED_PREFIX:
        return v4_find(v4, <uint32_t>(lo & LOW32))
    return v6_find(v6, hi, lo)


def lookup_ipv4(Tables t, const uint32_t[::1] addrs, int32_t[::1] out_sig, uint16_t[::1] out_cc):
    """Most specific signature (-1 none) and country code (the S2 bytes as uint16)."""
    cdef Py_ssize_t i, n = addrs.shape[0]
    _check_out(n, out_sig, out_cc)
    cdef const V4Table* v4 = &t.v4
    cdef const uint64_t* values = t.values
    with nogil:
        for i in range(n):
            if i + PREFETCH_DISTANCE < n:
                CONNSCAN_PREFETCH(&v4.l1[addrs[i + PREFETCH_DISTANCE] >> v4.shift])
            _store(values[v4_find(v4, addrs[i])], &out_sig[i], &out_cc[i])


def lookup_ipv6(Tables t, const uint64_t[::1] hi, const uint64_t[::1] lo,
                int32_t[::1] out_sig, uint16_t[::1] out_cc):
    cdef Py_ssize_t i, n = hi.shape[0]
    if lo.shape[0] != n:
        raise ValueError("hi and lo differ in length")
    _check_out(n, out_sig, out_cc)
    cdef const V4Table* t4 = &t.v4
    cdef const V6Table* t6 = &t.v6
    cdef const uint64_t* values = t.values
    with nogil:
        for i in range(n):
            if i + PREFETCH_DISTANCE < n:
                CONNSCAN_PREFETCH(&t6.index[hi[i + PREFETCH_DISTANCE] >> t6.shift])
            _store(values[_v6_or_mapped(t4, t6, hi[i], lo[i])], &out_sig[i], &out_cc[i])


def lookup_parsed(Tables t, const uint8_t[::1] kind, const uint32_t[::1] v4,
                  const uint64_t[::1] hi, const uint64_t[::1] lo,
                  int32_t[::1] out_sig, uint16_t[::1] out_cc):
    cdef Py_ssize_t i, n = kind.shape[0]
    if v4.shape[0] != n or hi.shape[0] != n or lo.shape[0] != n:
        raise ValueError("parsed address arrays differ in length")
    _check_out(n, out_sig, out_cc)
    cdef const V4Table* t4 = &t.v4
    cdef const V6Table* t6 = &t.v6
    cdef const uint64_t* values = t.values
    with nogil:
        for i in range(n):
            if i + PREFETCH_DISTANCE < n and kind[i + PREFETCH_DISTANCE] == 4:
                CONNSCAN_PREFETCH(&t4.l1[v4[i + PREFETCH_DISTANCE] >> t4.shift])
            if kind[i] == 4:
                _store(values[v4_find(t4, v4[i])], &out_sig[i], &out_cc[i])
            elif kind[i] == 6:
                _store(values[_v6_or_mapped(t4, t6, hi[i], lo[i])], &out_sig[i], &out_cc[i])
            else:
                out_sig[i] = -1
                out_cc[i] = 0


cdef _check_out(Py_ssize_t n, int32_t[::1] out_sig, uint16_t[::1] out_cc):
    if out_sig.shape[0] != n or out_cc.shape[0] != n:
        raise ValueError("output arrays do not match the input length")


def matches_v4(Tables t, uint32_t addr):
    """Every signature containing ``addr``, most specific first."""
    cdef Py_ssize_t low = 0, high = t.m4_starts.shape[0], mid
    while high - low > 1:   # invariant: m4_starts[low] <= addr < m4_starts[high]
        mid = (low + high) >> 1
        if t.m4_starts[mid] <= addr:
            low = mid
        else:
            high = mid
    return [t.m4_sigs[i] for i in range(t.m4_offsets[low], t.m4_offsets[low + 1])]


def matches_v6(Tables t, uint64_t hi, uint64_t lo):
    if hi == 0 and (lo >> 32) == MAPPED_PREFIX:
        return matches_v4(t, <uint32_t>(lo & LOW32))
    cdef Py_ssize_t low = 0, high = t.m6_keys.shape[0], mid
    while high - low > 1:
        mid = (low + high) >> 1
        if t.m6_keys[mid, 0] < hi or (t.m6_keys[mid, 0] == hi and t.m6_keys[mid, 1] <= lo):
            low = mid
        else:
            high = mid
    return [t.m6_sigs[i] for i in range(t.m6_offsets[low], t.m6_offsets[low + 1])]


# ----------------------------------------------------------------------------- parser


cdef inline int _hex(uint8_t c) noexcept nogil:
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    if 65 <= c <= 70:
        return c - 55
    return -1


cdef uint32_t OCTET_WEIGHTS[4][3]
OCTET_WEIGHTS[:] = [[0, 0, 0], [1, 0, 0], [10, 1, 0], [100, 10, 1]]


cdef inline uint32_t _octet(const uint8_t* s, unsigned int length, uint32_t* bad) noexcept nogil:
    """The value of 1..3 digits (known to be digits) at s, without a branch on the length
    (bytes past the part weigh 0); ``bad`` set for a leading zero."""
    cdef const uint32_t* weight = OCTET_WEIGHTS[length]
    cdef uint32_t d0 = s[0] - 48
    bad[0] |= (length > 1) & (d0 == 0)
    return d0 * weight[0] + (<uint32_t>s[1] - 48) * weight[1] + (<uint32_t>s[2] - 48) * weight[2]


cdef inline bint _parse_ipv4_16(const uint8_t* s, Py_ssize_t n, uint32_t* out) noexcept nogil:
    """_parse_ipv4 for text with 17 readable bytes at ``s`` (7 <= n <= 15): the dots and
    stray bytes found in one 16-byte compare, the parts from their lengths (few branches:
    random addresses make a byte-by-byte scan mispredict at every dot)."""
    cdef unsigned int dots, other, within = (1u << n) - 1, a, b, c
    cdef uint32_t bad = 0, v0, v1, v2, v3
    connscan_dotted_masks(s, &dots, &other)
    dots &= within
    # exactly three dots, found lowest first (no popcount: without -mpopcnt it is a call)
    if (other & within) or dots == 0:
        return False
    a = __builtin_ctz(dots)
    dots &= dots - 1
    if dots == 0:
        return False
    b = __builtin_ctz(dots)
    dots &= dots - 1
    if dots == 0:
        return False
    c = __builtin_ctz(dots)
    if dots & (dots - 1):
        return False
    # each part 1..3 digits: a, b-a-1, c-b-1, n-c-1 (unsigned: 0 wraps above 2)
    if a - 1 > 2 or b - a - 2 > 2 or c - b - 2 > 2 or <unsigned int>n - c - 2 > 2:
        return False
    v0 = _octet(s, a, &bad)
    v1 = _octet(s + a + 1, b - a - 1, &bad)
    v2 = _octet(s + b + 1, c - b - 1, &bad)
    v3 = _octet(s + c + 1, <unsigned int>n - c - 1, &bad)
    if bad or (v0 | v1 | v2 | v3) > 255:
        return False
    out[0] = v0 << 24 | v1 << 16 | v2 << 8 | v3
    return True


cdef inline bint _parse_ipv4(const uint8_t* s, Py_ssize_t n, uint32_t* out) noexcept nogil:
    """Strict dotted quad: four decimal parts 0..255, no leading zeros, nothing else."""
    cdef Py_ssize_t pos = 0
    cdef uint32_t result = 0, part, digit
    cdef int k
    if n < 7 or n > 15:
        return False
    for k in range(4):
        if k:
            if pos >= n or s[pos] != 46:  # '.'
                return False
            pos += 1
        if pos >= n:
            return False
        part = <uint32_t>s[pos] - 48  # wraps above 9 for anything but a digit
        if part > 9:
            return False
        pos += 1
        if pos < n:
            digit = <uint32_t>s[pos] - 48
            if digit <= 9:
                if part == 0:
                    return False  # leading zero
                part = part * 10 + digit
                pos += 1
                if pos < n:
                    digit = <uint32_t>s[pos] - 48
                    if digit <= 9:
                        part = part * 10 + digit
                        pos += 1
                        if part > 255:
                            return False
        result = result << 8 | part
    if pos != n:
        return False
    out[0] = result
    return True


cdef bint _parse_ipv6(const uint8_t* s, Py_ssize_t n, uint64_t* hi, uint64_t* lo) noexcept nogil:
    """RFC 4291 text: 8 hex groups, one '::' standing for at least one group, IPv4 tail."""
    cdef uint16_t groups[8]
    cdef int count = 0, skip = -1, d, k
    cdef Py_ssize_t i = 0, start
    cdef uint32_t value, tail
    if n < 2:
        return False
    if s[0] == 58:  # ':' must open '::'
        if s[1] != 58:
            return False
        skip = 0
        i = 2
    while i < n:
        start = i
        value = 0
        while i < n:
            d = _hex(s[i])
            if d < 0:
                break
            value = value << 4 | <uint32_t>d
            i += 1
            if i - start > 4:
                return False
        if i < n and s[i] == 46:  # '.': the rest is an IPv4 tail (two groups)
            if count > 6 or not _parse_ipv4(s + start, n - start, &tail):
                return False
            groups[count] = <uint16_t>(tail >> 16)
            groups[count + 1] = <uint16_t>tail
            count += 2
            break
        if i == start or count == 8:
            return False
        groups[count] = <uint16_t>value
        count += 1
        if i == n:
            break
        if s[i] != 58:
            return False
        i += 1
        if i == n:
            return False  # a single trailing ':'
        if s[i] == 58:
            if skip >= 0:
                return False
            skip = count
            i += 1
    if (skip < 0 and count != 8) or (skip >= 0 and count > 7):
        return False
    hi[0] = 0
    lo[0] = 0
    cdef uint64_t g
    for k in range(8):
        if skip < 0 or k < skip:
            g = groups[k]
        elif k < skip + 8 - count:
            g = 0
        else:
            g = groups[k - (8 - count)]
        if k < 4:
            hi[0] = hi[0] << 16 | g
        else:
            lo[0] = lo[0] << 16 | g
    return True


cdef int _parse_address(const uint8_t* s, Py_ssize_t n, Py_ssize_t room, uint32_t* v4,
                        uint64_t* hi, uint64_t* lo) noexcept nogil:
    """Kind (0 invalid, 4, 6) of one address text; ``::ffff:a.b.c.d`` gives 4. ``room``:
    the bytes readable from ``s`` (the text and what follows it in its buffer)."""
    cdef const uint8_t* zone
    v4[0] = 0
    hi[0] = 0
    lo[0] = 0
    if n == 0:
        return 0
    if s[0] == 91:  # '[': URL style brackets hold IPv6 text only
        if n < 2 or s[n - 1] != 93:
            return 0
        s += 1
        n -= 2
    elif 7 <= n <= 15 and room > 16:  # the common case first: a quad with a word to read
        if _parse_ipv4_16(s, n, v4):
            return 4
        if memchr(s, 58, n) == NULL:
            return 0
    elif _parse_ipv4(s, n, v4):  # near the buffer's end: byte by byte, stops at the first ':'
        return 4
    elif memchr(s, 58, n) == NULL:
        return 0
    zone = <const uint8_t*>memchr(s, 37, n)  # '%zone': non-empty, no second '%'
    if zone != NULL:
        if zone + 1 == s + n or memchr(zone + 1, 37, s + n - zone - 1) != NULL:
            return 0
        n = zone - s
    if not _parse_ipv6(s, n, hi, lo):
        hi[0] = 0
        lo[0] = 0
        return 0
    if hi[0] == 0 and (lo[0] >> 32) == MAPPED_PREFIX:
        v4[0] = <uint32_t>(lo[0] & LOW32)
        hi[0] = 0
        lo[0] = 0
        return 4
    return 6


ctypedef fused offset_t:
    int32_t
    int64_t


ctypedef struct TextColumn:
    const uint8_t* data      # string bytes (never NULL)
    Py_ssize_t data_len
    const uint8_t* valid     # Arrow validity bitmap, NULL when every entry is valid
    Py_ssize_t bit_offset    # position of entry 0 in the bitmap


cdef inline int _parse_entry(const TextColumn* col, const offset_t* offsets, Py_ssize_t i,
                             uint32_t* v4, uint64_t* hi, uint64_t* lo) noexcept nogil:
    """Kind of entry i (0 also for null), or -1 when its offsets leave the data buffer."""
    cdef Py_ssize_t bit
    cdef int64_t start = offsets[i], end = offsets[i + 1]
    if col.valid != NULL:
        bit = col.bit_offset + i
        if not (col.valid[bit >> 3] >> (bit & 7)) & 1:
            v4[0] = 0
            hi[0] = 0
            lo[0] = 0
            return 0
    if start < 0 or end < start or end > col.data_len:
        return -1
    return _parse_address(col.data + start, end - start, col.data_len - start, v4, hi, lo)


cdef TextColumn _text_column(const uint8_t[::1] data, validity, Py_ssize_t bit_offset, Py_ssize_t n,
                             const uint8_t* nothing) except *:
    cdef TextColumn col
    cdef const uint8_t[::1] bitmap
    col.data_len = data.shape[0]
    col.data = &data[0] if col.data_len else nothing
    col.valid = NULL
    col.bit_offset = bit_offset
    if validity is not None:
        bitmap = validity
        if bit_offset < 0 or (bit_offset + n + 7) // 8 > bitmap.shape[0]:
            raise ValueError("validity bitmap too short")
        if bitmap.shape[0]:
            col.valid = &bitmap[0]
    return col


cdef _bad_offsets(const offset_t[::1] offsets, Py_ssize_t i, Py_ssize_t data_len):
    return ValueError(f"string {i}: offsets {offsets[i]}..{offsets[i + 1]} outside the "
                      f"data buffer ({data_len} bytes)")


def parse_text(const offset_t[::1] offsets, const uint8_t[::1] data, validity, Py_ssize_t bit_offset,
               uint8_t[::1] kind, uint32_t[::1] v4, uint64_t[::1] hi, uint64_t[::1] lo):
    """Parse Arrow string buffers (offsets n+1, data bytes, validity bitmap or None).

    Offsets are checked against the data buffer before any byte is read (ValueError).
    """
    cdef Py_ssize_t n = offsets.shape[0] - 1, i, bad = -1
    cdef uint8_t nothing = 0
    cdef int k
    if n < 0 or kind.shape[0] != n or v4.shape[0] != n or hi.shape[0] != n or lo.shape[0] != n:
        raise ValueError("parse output arrays do not match the offsets")
    cdef TextColumn col = _text_column(data, validity, bit_offset, n, &nothing)
    with nogil:
        for i in range(n):
            k = _parse_entry(&col, &offsets[0], i, &v4[i], &hi[i], &lo[i])
            if k < 0:
                bad = i
                break
            kind[i] = <uint8_t>k
    if bad >= 0:
        raise _bad_offsets(offsets, bad, col.data_len)


# ----------------------------------------------------------------------------- flow ends

cdef enum:
    ENDS_BLOCK = 1024  # rows parsed ahead of their lookups, so that those can be prefetched

ctypedef struct Parsed:
    uint32_t v4
    uint64_t hi
    uint64_t lo
    int kind


cdef uint64_t NO_VALUE = 0xFFFFFFFFu   # signature -1, no country


cdef inline uint64_t _value_of(const V4Table* t4, const V6Table* t6, const uint64_t* values,
                               const Parsed* p) noexcept nogil:
    if p.kind == 4:
        return values[v4_find(t4, p.v4)]
    if p.kind == 6:
        return values[_v6_or_mapped(t4, t6, p.hi, p.lo)]
    return NO_VALUE


cdef inline void _prefetch(const V4Table* t4, const Parsed* p) noexcept nogil:
    if p.kind == 4:
        CONNSCAN_PREFETCH(&t4.l1[p.v4 >> t4.shift])


cdef inline Py_ssize_t _parse_block(const TextColumn* col, const offset_t* offsets, Py_ssize_t first,
                                    Py_ssize_t size, Parsed* out) noexcept nogil:
    """Parse rows first..first+size-1; the row whose offsets leave the buffer, else -1."""
    cdef Py_ssize_t j
    for j in range(size):
        out[j].kind = _parse_entry(col, offsets, first + j, &out[j].v4, &out[j].hi, &out[j].lo)
        if out[j].kind < 0:
            return first + j
    return -1


cdef inline void _look_up_block(const V4Table* t4, const V6Table* t6, const uint64_t* values,
                                const Parsed* ends, Py_ssize_t size, uint64_t* out) noexcept nogil:
    """One tight loop per block and side: lookups far enough apart overlap their misses."""
    cdef Py_ssize_t j
    for j in range(size):
        if j + PREFETCH_DISTANCE < size:
            _prefetch(t4, &ends[j + PREFETCH_DISTANCE])
        out[j] = _value_of(t4, t6, values, &ends[j])


def look_up_ends(Tables t, Tables home,
                 const offset_t[::1] src_offsets, const uint8_t[::1] src_data, src_validity, Py_ssize_t src_bit,
                 const offset_t[::1] dst_offsets, const uint8_t[::1] dst_data, dst_validity, Py_ssize_t dst_bit,
                 uint8_t[::1] bad, uint8_t[::1] src_home, uint8_t[::1] inbound,
                 int32_t[::1] remote_sig, uint16_t[::1] remote_cc, int32_t[::1] local_sig):
    """Both ends of n flows (Arrow string buffers as in parse_text) parsed, looked up in the
    home networks ``home`` and in ``t``, and sorted into local and remote: the destination
    is the local end only when it alone is home (``inbound``).

    ``bad``: 0, or 1/2 when the source/destination is not an address (its outputs are then
    -1 and 0). Offsets are checked against their data buffer before use (ValueError).
    """
    cdef Py_ssize_t n = src_offsets.shape[0] - 1, i, j, block, bad_row = -1, bad_side = 0
    cdef uint8_t nothing = 0
    if (n < 0 or dst_offsets.shape[0] != n + 1 or bad.shape[0] != n or src_home.shape[0] != n
            or inbound.shape[0] != n or local_sig.shape[0] != n):
        raise ValueError("flow end arrays do not match the offsets")
    _check_out(n, remote_sig, remote_cc)
    cdef TextColumn src_col = _text_column(src_data, src_validity, src_bit, n, &nothing)
    cdef TextColumn dst_col = _text_column(dst_data, dst_validity, dst_bit, n, &nothing)
    cdef Parsed src[ENDS_BLOCK]
    cdef Parsed dst[ENDS_BLOCK]
    cdef uint64_t src_value[ENDS_BLOCK]
    cdef uint64_t dst_value[ENDS_BLOCK]
    cdef uint64_t src_in[ENDS_BLOCK]
    cdef uint64_t dst_in[ENDS_BLOCK]
    cdef bint flip
    cdef Py_ssize_t size
    with nogil:
        block = 0
        while block < n:
            size = min(<Py_ssize_t>ENDS_BLOCK, n - block)
            bad_row = _parse_block(&src_col, &src_offsets[0], block, size, src)
            if bad_row >= 0:
                bad_side = 1
                break
            bad_row = _parse_block(&dst_col, &dst_offsets[0], block, size, dst)
            if bad_row >= 0:
                bad_side = 2
                break
            _look_up_block(&home.v4, &home.v6, home.values, src, size, src_in)
            _look_up_block(&home.v4, &home.v6, home.values, dst, size, dst_in)
            _look_up_block(&t.v4, &t.v6, t.values, src, size, src_value)
            _look_up_block(&t.v4, &t.v6, t.values, dst, size, dst_value)
            for j in range(size):
                i = block + j
                if src[j].kind == 0 or dst[j].kind == 0:
                    bad[i] = 1 if src[j].kind == 0 else 2
                    src_home[i] = inbound[i] = 0
                    remote_sig[i] = local_sig[i] = -1
                    remote_cc[i] = 0
                    continue
                bad[i] = 0
                flip = <int32_t><uint32_t>dst_in[j] >= 0 and <int32_t><uint32_t>src_in[j] < 0
                src_home[i] = <int32_t><uint32_t>src_in[j] >= 0
                inbound[i] = flip
                _store(src_value[j] if flip else dst_value[j], &remote_sig[i], &remote_cc[i])
                local_sig[i] = <int32_t><uint32_t>(dst_value[j] if flip else src_value[j])
            block += size
    if bad_row >= 0:
        if bad_side == 1:
            raise _bad_offsets(src_offsets, bad_row, src_col.data_len)
        raise _bad_offsets(dst_offsets, bad_row, dst_col.data_len)


def side_ports(const uint8_t[::1] inbound, const int32_t[::1] sport, const int32_t[::1] dport,
               int64_t[::1] lport, int64_t[::1] rport):
    """The local and remote port of each flow from its source and destination port: the
    destination is the local side when ``inbound``. One pass for what would be four."""
    cdef Py_ssize_t n = inbound.shape[0], i
    cdef bint flip
    if sport.shape[0] != n or dport.shape[0] != n or lport.shape[0] != n or rport.shape[0] != n:
        raise ValueError("side_ports: columns differ in length")
    with nogil:
        for i in range(n):
            flip = inbound[i] != 0
            lport[i] = dport[i] if flip else sport[i]
            rport[i] = sport[i] if flip else dport[i]


# ------------------------------------------------------------------ rules: the row filter

cdef inline int _sig_attention(int32_t sig, const int8_t* flags, Py_ssize_t n_flags, int8_t bit) noexcept nogil:
    """1: the signature needs a look, 0: it does not (or no signature), -1: its flag is not
    known yet, -2: the index is outside the flag table."""
    if sig < 0:
        return 0
    if sig >= n_flags:
        return -2
    if flags[sig] < 0:
        return -1
    return (flags[sig] & bit) != 0


def attention_rows(const int32_t[::1] rsig, local_sig, const uint16_t[::1] country,
                   const uint8_t[::1] inbound, const int64_t[::1] lport, const int64_t[::1] rport,
                   const int8_t[::1] sig_flags, int attention_bit,
                   const uint8_t[::1] relevant, const uint8_t[::1] suspicious):
    """The rows the rules must look at, in one pass: a remote or local (``local_sig``,
    int32 or None) signature whose flag has ``attention_bit``, a remote country marked in
    ``relevant`` (by its two letters read as uint16), or a service port (the local port
    when ``inbound``, else the remote one; -1 unknown) marked at port + 1 in ``suspicious``.

    Returns ``(rows int64, None)``, or ``(None, signatures int32)`` when hit signatures have
    no flag yet (< 0): the caller works those out and asks again.
    """
    cdef Py_ssize_t n = rsig.shape[0], i, k = 0, n_unknown = 0, n_flags = sig_flags.shape[0]
    cdef const int32_t[::1] lsig
    cdef bint has_local = local_sig is not None
    if has_local:
        lsig = local_sig
    if (country.shape[0] != n or inbound.shape[0] != n or lport.shape[0] != n or rport.shape[0] != n
            or (has_local and lsig.shape[0] != n)):
        raise ValueError("attention_rows: columns differ in length")
    if relevant.shape[0] != 1 << 16 or suspicious.shape[0] != (1 << 16) + 1:
        raise ValueError("attention_rows: relevant needs 65536 entries, suspicious 65537")
    rows = np.empty(n, np.int64)
    unknown = np.empty(2 * n, np.int32)
    cdef int64_t[::1] out = rows
    cdef int32_t[::1] pending = unknown
    cdef const int8_t* flags = &sig_flags[0] if n_flags else NULL
    cdef int r, l
    cdef int64_t port
    cdef bint bad_index = False
    with nogil:
        for i in range(n):
            r = _sig_attention(rsig[i], flags, n_flags, attention_bit)
            l = _sig_attention(lsig[i], flags, n_flags, attention_bit) if has_local else 0
            if r == -2 or l == -2:
                bad_index = True
                break
            if r == -1:
                pending[n_unknown] = rsig[i]
                n_unknown += 1
            if l == -1:
                pending[n_unknown] = lsig[i]
                n_unknown += 1
            port = lport[i] if inbound[i] else rport[i]
            # written always, kept when needed: no branch on the (random) outcome
            out[k] = i
            k += (r == 1) | (l == 1) | (relevant[country[i]] != 0) | (
                suspicious[port + 1 if <uint64_t>port <= 0xFFFF else 0] != 0)
    if bad_index:
        raise ValueError(f"attention_rows: a signature index outside the {n_flags} flags")
    if n_unknown:
        return None, unknown[:n_unknown]
    return rows[:k], None
