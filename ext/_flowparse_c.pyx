# cython: boundscheck=False, wraparound=False, cdivision=True, language_level=3
"""Native field extractor for delimited flow text (nfdump CSV, Zeek TSV, AWS flow logs).

``split_fields(block, delimiter, ncols, wanted, comment)`` reads a block of whole lines
(no quoting) and returns only the wanted columns, as the offsets and bytes of Arrow string
arrays, plus a status per non-blank line. Every field boundary is found by scanning the
block itself, so no offset can point outside it; the hot loop runs without the GIL.

Line status: 0 ok, 1 comment (starts with ``comment``), 2 wrong number of fields,
3 a wanted field holds a byte outside printable ASCII (addresses, ports, protocols and
times are ASCII in every format read here), 4 a port field that is not a port (``bad_slot``
says which wanted column).

Column kinds (``kinds[j]``): 0 text (Arrow string offsets + bytes); 1 port (int32, -1 for
"" and "-"; anything else that is not 0..65535 makes the line status 4); 2 wall-clock time
"YYYY-MM-DD HH:MM:SS[.fraction]" (int64 microseconds since 1970 as if UTC, plus a validity
mask: an impossible date is null, not an error); 3 epoch seconds "123[.456]" and 4 epoch
milliseconds "123" (int64 microseconds + validity; masked values like "XXXXXXXXXX.XXXXXX"
are null).

``open_quote_lines(block, delimiter)`` finds, for quoted CSV (which pyarrow parses), the
lines that leave a quoted value open: the reader rejects them instead of letting the
parser read the next lines into the value.
"""
import sys

import numpy as np

cimport numpy as cnp
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy

cnp.import_array()

if sys.byteorder != "little":  # the word-at-a-time scans take the first byte from the low end
    raise ImportError("connscan._flowparse_c needs a little-endian CPU")

cdef extern from *:
    """
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif
    /* Bits j of *delims / *breaks: p[j] is c / a line feed, over the 64 bytes at p (all
       readable); one load per 16 bytes serves both. */
    static inline void connscan_masks64(const unsigned char* p, unsigned char c,
                                        uint64_t* delims, uint64_t* breaks) {
    #if defined(__SSE2__)
        __m128i needle = _mm_set1_epi8((char)c), lf = _mm_set1_epi8(10);
        unsigned long long d = 0, b = 0;
        for (int part = 0; part < 4; part++) {
            __m128i v = _mm_loadu_si128((const __m128i*)(p + 16 * part));
            d |= (unsigned long long)(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, needle)) << (16 * part);
            b |= (unsigned long long)(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, lf)) << (16 * part);
        }
        *delims = d;
        *breaks = b;
    #else
        unsigned long long d = 0, b = 0;
        for (int j = 0; j < 64; j++) {
            d |= (unsigned long long)(p[j] == c) << j;
            b |= (unsigned long long)(p[j] == 10) << j;
        }
        *delims = d;
        *breaks = b;
    #endif
    }

    static inline int connscan_popcount64(unsigned long long x) {
    #if defined(__POPCNT__)
        return __builtin_popcountll(x);
    #else  /* without -mpopcnt the builtin is a library call: add the bits in place */
        x = x - ((x >> 1) & 0x5555555555555555ULL);
        x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
        x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
        return (int)((x * 0x0101010101010101ULL) >> 56);
    #endif
    }

    /* How many of p[0:n] are c: 16 bytes per step, in byte lanes emptied every 255 steps. */
    static long long connscan_count_byte(const unsigned char* p, long long n, unsigned char c) {
        long long count = 0, i = 0;
    #if defined(__SSE2__)
        __m128i needle = _mm_set1_epi8((char)c), zero = _mm_setzero_si128();
        while (n - i >= 16) {
            __m128i lanes = zero;
            for (int step = 0; step < 255 && n - i >= 16; step++, i += 16)
                lanes = _mm_sub_epi8(lanes, _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i*)(p + i)), needle));
            __m128i sums = _mm_sad_epu8(lanes, zero);
            count += _mm_cvtsi128_si32(sums) + _mm_extract_epi16(sums, 4);
        }
    #endif
        for (; i < n; i++)
            count += p[i] == c;
        return count;
    }
    """
    int __builtin_ctzll(unsigned long long) nogil
    void connscan_masks64(const uint8_t* p, uint8_t c, uint64_t* delims, uint64_t* breaks) noexcept nogil
    int connscan_popcount64(uint64_t x) noexcept nogil
    long long connscan_count_byte(const uint8_t* p, long long n, uint8_t c) noexcept nogil

# word-at-a-time byte tests (8 bytes per step)
cdef uint64_t ONES = 0x0101010101010101ULL
cdef uint64_t HIGHS = 0x8080808080808080ULL
cdef uint64_t BELOW_SPACE = 0x2020202020202020ULL
cdef uint64_t FILLER = 0x4141414141414141ULL  # "AAAAAAAA": printable padding

cdef enum:
    OK = 0
    COMMENT = 1
    BAD_COUNT = 2
    BAD_BYTES = 3
    BAD_VALUE = 4

cdef enum:
    ZERO = 48      # '0'
    NINE = 57      # '9'
    SPACE = 32
    DASH = 45
    DOT = 46
    COLON = 58
    LETTER_T = 84

cdef enum:
    TEXT = 0
    PORT = 1
    WALLCLOCK = 2
    EPOCH_S = 3
    EPOCH_MS = 4


cdef inline uint64_t _load(const uint8_t* p) noexcept nogil:
    cdef uint64_t word
    memcpy(&word, p, 8)  # one unaligned load
    return word


cdef inline int32_t _port(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    """0..65535, -1 for unset ("" or "-"), -2 for anything else."""
    cdef Py_ssize_t i
    cdef int32_t value = 0
    while n > 0 and p[0] == SPACE:
        p += 1
        n -= 1
    while n > 0 and p[n - 1] == SPACE:
        n -= 1
    if n == 0 or (n == 1 and p[0] == DASH):
        return -1
    if n > 5:
        return -2
    for i in range(n):
        if p[i] < ZERO or p[i] > NINE:
            return -2
        value = value * 10 + (p[i] - ZERO)
    return value if value <= 65535 else -2


cdef inline bint _digits(const uint8_t* p, Py_ssize_t n, int64_t* out) noexcept nogil:
    cdef Py_ssize_t i
    cdef int64_t value = 0
    if n <= 0:
        return False
    for i in range(n):
        if p[i] < ZERO or p[i] > NINE:
            return False
        value = value * 10 + (p[i] - ZERO)
    out[0] = value
    return True


cdef inline bint _fraction_micros(const uint8_t* p, Py_ssize_t n, int64_t* out) noexcept nogil:
    """Digits after the decimal point -> microseconds (first 6 digits, the rest dropped)."""
    cdef Py_ssize_t i
    cdef int64_t value = 0
    if n > 9:
        return False
    for i in range(n):
        if p[i] < ZERO or p[i] > NINE:
            return False
        if i < 6:
            value = value * 10 + (p[i] - ZERO)
    for i in range(n, 6):
        value *= 10
    out[0] = value
    return True


cdef inline int64_t _days_from_civil(int64_t y, int64_t m, int64_t d) noexcept nogil:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y -= m <= 2
    cdef int64_t era = (y if y >= 0 else y - 399) // 400
    cdef int64_t yoe = y - era * 400
    cdef int64_t doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    cdef int64_t doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


cdef struct Minute:
    # the last "YYYY-MM-DD HH:MM" prefix that parsed (its 16 bytes) and its microseconds:
    # flow records come in time order, so most share the previous record's minute
    uint64_t head
    uint64_t tail
    int64_t micros
    bint known


cdef inline bint _minute(const uint8_t* p, int64_t* out) noexcept nogil:
    """Microseconds since 1970 of "YYYY-MM-DD HH:MM" (or with T) at p, read as UTC."""
    cdef int64_t y, mo, d, h, mi, dim
    if p[4] != DASH or p[7] != DASH or (p[10] != SPACE and p[10] != LETTER_T) or p[13] != COLON:
        return False
    if not (_digits(p, 4, &y) and _digits(p + 5, 2, &mo) and _digits(p + 8, 2, &d)
            and _digits(p + 11, 2, &h) and _digits(p + 14, 2, &mi)):
        return False
    if y < 1 or mo < 1 or mo > 12 or d < 1 or h > 23 or mi > 59:  # year 0 is no date (as for datetime)
        return False
    dim = 31
    if mo == 4 or mo == 6 or mo == 9 or mo == 11:
        dim = 30
    elif mo == 2:
        dim = 29 if (y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)) else 28
    if d > dim:
        return False
    out[0] = (_days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60) * 1000000
    return True


cdef inline bint _wallclock(const uint8_t* p, Py_ssize_t n, int64_t* out, Minute* last) noexcept nogil:
    """"YYYY-MM-DD HH:MM:SS[.fraction]" -> microseconds; the minute is parsed only when it
    differs from ``last``'s."""
    cdef int64_t sec, frac = 0, micros
    cdef uint64_t head, tail
    if n < 19 or p[16] != COLON or not _digits(p + 17, 2, &sec) or sec > 59:
        return False
    if n > 19:
        if p[19] != DOT or not _fraction_micros(p + 20, n - 20, &frac):
            return False
    head = _load(p)
    tail = _load(p + 8)
    if not (last.known and head == last.head and tail == last.tail):
        if not _minute(p, &micros):
            return False
        last.head, last.tail, last.micros, last.known = head, tail, micros, True
    out[0] = last.micros + sec * 1000000 + frac
    return True


cdef inline bint _epoch(const uint8_t* p, Py_ssize_t n, int kind, int64_t* out) noexcept nogil:
    cdef Py_ssize_t dot = 0
    cdef int64_t whole, frac = 0
    while dot < n and p[dot] != DOT:
        dot += 1
    if kind == EPOCH_MS:
        if dot != n or n > 15 or not _digits(p, n, &whole):
            return False
        out[0] = whole * 1000
        return True
    if dot > 12 or not _digits(p, dot, &whole):
        return False
    if dot < n and not _fraction_micros(p + dot + 1, n - dot - 1, &frac):
        return False
    out[0] = whole * 1000000 + frac
    return True


cdef inline uint64_t _unprintable(uint64_t word) noexcept nogil:
    """High bit set in some byte iff a byte is below 0x20 or above 0x7e (exact as a test)."""
    return (((word - BELOW_SPACE) & ~word) | (word + ONES) | word) & HIGHS


cdef inline bint _printable(const uint8_t* p, Py_ssize_t n, const uint8_t* limit) noexcept nogil:
    """All of p[0:n] is printable ASCII; may read (not use) bytes up to ``limit``."""
    cdef uint64_t bad = 0, word, keep
    while n >= 8:
        bad |= _unprintable(_load(p))
        p += 8
        n -= 8
    if n > 0:
        if p + 8 <= limit:
            keep = (<uint64_t>1 << (8 * n)) - 1
            word = (_load(p) & keep) | (FILLER & ~keep)
            bad |= _unprintable(word)
        else:
            while n > 0:
                bad |= <uint8_t>(p[0] - 0x20) > 0x5e
                p += 1
                n -= 1
    return bad == 0


cdef struct Chunks:
    # the delimiters and line feeds of one 64-byte chunk of the block, as bits: fields and
    # lines end where a bit scan says (field lengths vary, and so would a branch per byte),
    # and the fields after the last wanted one are counted by popcount
    const uint8_t* buf
    Py_ssize_t size
    Py_ssize_t base      # the chunk the masks cover, -1 before the first
    uint64_t delims
    uint64_t breaks
    uint8_t delimiter


cdef inline void _load_chunk(Chunks* c, Py_ssize_t chunk) noexcept nogil:
    cdef Py_ssize_t j
    c.base = chunk
    if chunk + 64 <= c.size:
        connscan_masks64(c.buf + chunk, c.delimiter, &c.delims, &c.breaks)
        return
    c.delims = c.breaks = 0
    for j in range(c.size - chunk):  # the block's last, partial chunk: never read past it
        c.delims |= (<uint64_t>(c.buf[chunk + j] == c.delimiter)) << j
        c.breaks |= (<uint64_t>(c.buf[chunk + j] == 10)) << j


cdef inline Py_ssize_t _next_stop(Chunks* c, Py_ssize_t i) noexcept nogil:
    """Index of the first delimiter or line feed in buf[i:], or the block size."""
    cdef Py_ssize_t chunk = i & ~(<Py_ssize_t>63)
    cdef uint64_t bits
    if chunk != c.base:
        _load_chunk(c, chunk)
    bits = (c.delims | c.breaks) & (~(<uint64_t>0) << (i - chunk))
    while bits == 0:
        chunk += 64
        if chunk >= c.size:
            return c.size
        _load_chunk(c, chunk)
        bits = c.delims | c.breaks
    return chunk + __builtin_ctzll(bits)


cdef inline Py_ssize_t _line_feed(Chunks* c, Py_ssize_t i, Py_ssize_t* delimiters) noexcept nogil:
    """Index of the first line feed in buf[i:] (or the block size); ``delimiters``: how many
    delimiters come before it."""
    cdef Py_ssize_t chunk = i & ~(<Py_ssize_t>63)
    cdef uint64_t keep = ~(<uint64_t>0) << (i - chunk), bits
    cdef Py_ssize_t count = 0
    if chunk != c.base:
        _load_chunk(c, chunk)
    while True:
        bits = c.breaks & keep
        if bits != 0:
            bits = bits & (~bits + 1)  # the first line feed alone
            delimiters[0] = count + connscan_popcount64(c.delims & keep & (bits - 1))
            return chunk + __builtin_ctzll(bits)
        count += connscan_popcount64(c.delims & keep)
        chunk += 64
        if chunk >= c.size:
            delimiters[0] = count
            return c.size
        _load_chunk(c, chunk)
        keep = ~(<uint64_t>0)


cdef struct Output:
    # where one wanted column goes (arrays sized for every line of the block)
    int kind
    uint8_t* text        # TEXT: field bytes, back to back
    int32_t* offsets     # TEXT: offsets[k] .. offsets[k + 1] is row k
    int32_t* ports       # PORT
    int64_t* micros      # times
    uint8_t* valid       # times: 1 when the text was a time
    Minute minute        # WALLCLOCK: the last minute parsed


cdef inline bint _copy_printable(uint8_t* dst, const uint8_t* src, Py_ssize_t n, const uint8_t* limit) noexcept nogil:
    """Copy src[0:n] to dst and say whether it is all printable ASCII. A short field moves
    as two words (``dst`` has 16 bytes of slack), checked in the same registers."""
    cdef uint64_t a, b, keep
    if n <= 16 and src + 16 <= limit:
        a = _load(src)
        b = _load(src + 8)
        memcpy(dst, &a, 8)
        memcpy(dst + 8, &b, 8)
        if n < 8:  # bytes past the field become printable filler
            keep = (<uint64_t>1 << (8 * n)) - 1
            a = (a & keep) | (FILLER & ~keep)
            b = FILLER
        elif n < 16:
            keep = (<uint64_t>1 << (8 * (n - 8))) - 1
            b = (b & keep) | (FILLER & ~keep)
        return (_unprintable(a) | _unprintable(b)) == 0
    memcpy(dst, src, n)
    return _printable(src, n, limit)


cdef Py_ssize_t _scan(const uint8_t* buf, Py_ssize_t size, uint8_t delimiter, int ncols,
                      const int32_t* slot_of, Output* out, int comment,
                      uint8_t* status, int64_t* line_start, int64_t* line_end, int32_t* nfields,
                      int8_t* bad_slot, Py_ssize_t capacity, Py_ssize_t* n_ok) noexcept nogil:
    """One pass over the lines: fields are copied/converted while the line is in cache and
    kept only for lines that end up OK. Returns the number of non-blank lines."""
    cdef Py_ssize_t pos = 0, end, n = 0, cur, fstart, fend, i, rest, k = 0, length
    cdef int last_wanted = 0
    cdef const uint8_t* limit = buf + size
    cdef Chunks chunks
    chunks.buf, chunks.size, chunks.base, chunks.delimiter = buf, size, -1, delimiter
    chunks.delims = chunks.breaks = 0
    cdef int column, slot, first_bad
    cdef int32_t port
    cdef bint bytes_bad, line_done
    cdef Output* o
    for column in range(ncols):
        if slot_of[column] >= 0:
            last_wanted = column
    while pos < size and n < capacity:
        if comment >= 0 and buf[pos] == comment:
            end = _line_feed(&chunks, pos, &rest)
            status[n] = COMMENT
            nfields[n] = 0
            line_start[n] = pos
            line_end[n] = end - 1 if buf[end - 1] == 13 and end - 1 > pos else end
            n += 1
            pos = end + 1
            continue
        column = 0
        fstart = pos
        bytes_bad = False
        first_bad = -1
        # fields up to the last wanted one: copy or convert them into row k
        while True:
            i = _next_stop(&chunks, fstart)
            line_done = i == size or buf[i] == 10
            fend = i - 1 if line_done and i > fstart and buf[i - 1] == 13 else i  # CR LF ends a line too
            if line_done and column == 0 and fend == pos:
                break  # a blank line
            slot = slot_of[column]
            if slot >= 0 and not bytes_bad:
                # a port or time that parses is printable: only a failed one needs the check
                length = fend - fstart
                o = &out[slot]
                if o.kind == TEXT:
                    bytes_bad = not _copy_printable(o.text + o.offsets[k], buf + fstart, length, limit)
                    o.offsets[k + 1] = o.offsets[k] + <int32_t>length
                elif o.kind == PORT:
                    port = _port(buf + fstart, length)
                    if port != -2:
                        o.ports[k] = port
                    elif not _printable(buf + fstart, length, limit):
                        bytes_bad = True
                    elif first_bad < 0:
                        first_bad = slot
                else:
                    if o.kind == WALLCLOCK:
                        o.valid[k] = _wallclock(buf + fstart, length, &o.micros[k], &o.minute)
                    else:
                        o.valid[k] = _epoch(buf + fstart, length, o.kind, &o.micros[k])
                    if not o.valid[k]:
                        o.micros[k] = 0  # no leftover from an uncommitted line
                        bytes_bad = not _printable(buf + fstart, length, limit)
            column += 1
            if line_done or column > last_wanted:
                break
            fstart = i + 1
        if line_done:
            if column == 0:  # blank: not a record
                pos = i + 1
                continue
            end, cur = i, fend
        else:  # the rest of the line only needs its fields counted
            end = _line_feed(&chunks, i + 1, &rest)
            column += rest + 1
            cur = end - 1 if buf[end - 1] == 13 else end  # buf[i] is the delimiter, not a CR
        line_start[n] = pos
        line_end[n] = cur
        nfields[n] = column
        if column != ncols:
            status[n] = BAD_COUNT
        elif bytes_bad:
            status[n] = BAD_BYTES
        elif first_bad >= 0:
            status[n] = BAD_VALUE
            bad_slot[n] = <int8_t>first_bad
        else:
            status[n] = OK
            k += 1  # commit row k; an uncommitted row is overwritten by the next line
        n += 1
        pos = end + 1
    n_ok[0] = k
    return n


def split_fields(const uint8_t[::1] block, int delimiter, int ncols, wanted, int comment=-1, kinds=None):
    """Split ``block`` into lines and fields; see the module docstring.

    Returns ``(status uint8[m], line_start int64[m], line_end int64[m], nfields int32[m],
    columns, bad_slot int8[m])`` over the m non-blank lines. ``columns[j]`` covers the k
    lines with status 0: ``(offsets int32[k+1], data uint8[...])`` for text, ``int32[k]``
    for ports, ``(int64[k] microseconds, bool[k] valid)`` for times. A port that is not a
    port is reported for the first such column in line order.
    """
    if not 0 <= delimiter <= 255 or delimiter in (10, 13):
        raise ValueError(f"delimiter must be one byte other than CR and LF, not {delimiter}")
    if comment != -1 and (not 0 <= comment <= 255 or comment in (10, 13)):
        raise ValueError(f"comment must be -1 or one byte other than CR and LF, not {comment}")
    if ncols <= 0:
        raise ValueError(f"ncols must be positive, not {ncols}")
    cdef Py_ssize_t size = block.shape[0]
    if size >= 0x7FFFFFFF:
        raise ValueError("block too large for 32-bit string offsets")
    cdef int j, nslots = len(wanted)
    kinds = [TEXT] * nslots if kinds is None else [int(k) for k in kinds]
    if len(kinds) != nslots or any(not TEXT <= k <= EPOCH_MS for k in kinds):
        raise ValueError(f"kinds must give one of 0..4 for each wanted column, not {kinds}")
    cdef cnp.ndarray[int32_t, ndim=1] slot_of = np.full(ncols, -1, np.int32)
    for j in range(nslots):
        column = int(wanted[j])
        if not 0 <= column < ncols:
            raise ValueError(f"wanted column {column} outside 0..{ncols - 1}")
        if slot_of[column] >= 0:
            raise ValueError(f"wanted column {column} given twice")
        slot_of[column] = j
    cdef const uint8_t* buf = &block[0] if size > 0 else NULL
    cdef Py_ssize_t capacity = 1
    if size > 0:
        with nogil:
            capacity = _count_lines(buf, size)
    # every line the scan counts gets its status, bounds and field count written
    cdef cnp.ndarray[uint8_t, ndim=1] status = np.empty(capacity, np.uint8)
    cdef cnp.ndarray[int64_t, ndim=1] line_start = np.empty(capacity, np.int64)
    cdef cnp.ndarray[int64_t, ndim=1] line_end = np.empty(capacity, np.int64)
    cdef cnp.ndarray[int32_t, ndim=1] nfields = np.empty(capacity, np.int32)
    cdef cnp.ndarray[int8_t, ndim=1] bad_slot = np.full(capacity, -1, np.int8)
    # per wanted column: the arrays the scan fills (row k < capacity; text <= block size,
    # plus 16 bytes of slack for _copy_text); an OK row has every wanted column written
    arrays = []
    cdef Output* out = <Output*>calloc(max(nslots, 1), sizeof(Output))
    if out == NULL:
        raise MemoryError()
    cdef cnp.ndarray[uint8_t, ndim=1] text, valid
    cdef cnp.ndarray[int32_t, ndim=1] offsets, ports
    cdef cnp.ndarray[int64_t, ndim=1] micros
    cdef Py_ssize_t n = 0, n_ok = 0
    try:
        for j in range(nslots):
            out[j].kind = kinds[j]
            if kinds[j] == TEXT:
                text = np.empty(size + 16, np.uint8)
                offsets = np.empty(capacity + 1, np.int32)
                offsets[0] = 0
                out[j].text = &text[0]
                out[j].offsets = &offsets[0]
                arrays.append((offsets, text))
            elif kinds[j] == PORT:
                ports = np.empty(capacity, np.int32)
                out[j].ports = &ports[0]
                arrays.append(ports)
            else:
                micros = np.empty(capacity, np.int64)
                valid = np.empty(capacity, np.uint8)
                out[j].micros = &micros[0]
                out[j].valid = &valid[0]
                arrays.append((micros, valid))
        if size > 0:
            with nogil:
                n = _scan(buf, size, <uint8_t>delimiter, ncols, &slot_of[0], out, comment,
                          &status[0], &line_start[0], &line_end[0], &nfields[0], &bad_slot[0],
                          capacity, &n_ok)
    finally:
        free(out)
    columns = []
    for j in range(nslots):
        if kinds[j] == TEXT:
            offsets_j, text_j = arrays[j]
            text_j.resize(offsets_j[n_ok], refcheck=False)  # shrunk in place: no view of it exists
            columns.append((_first(offsets_j, n_ok + 1), text_j))
        elif kinds[j] == PORT:
            columns.append(_first(arrays[j], n_ok))
        else:
            columns.append((_first(arrays[j][0], n_ok), _first(arrays[j][1], n_ok).view(np.bool_)))  # valid is 0/1
    return _first(status, n), _first(line_start, n), _first(line_end, n), _first(nfields, n), columns, _first(bad_slot, n)


def _first(array, Py_ssize_t n):
    """array[:n]: a view when that is most of the array, else a compact copy."""
    return array[:n] if 2 * n >= array.shape[0] else array[:n].copy()


cdef inline Py_ssize_t _count_lines(const uint8_t* buf, Py_ssize_t size) noexcept nogil:
    """Line feeds + 1: at least the number of lines."""
    return 1 + <Py_ssize_t>connscan_count_byte(buf, size, 10)


def lower_letters(const int32_t[::1] offsets, const uint8_t[::1] data):
    """Protocol names the quick way: whether each of the n values ``data[offsets[i]:
    offsets[i + 1]]`` is one or more ASCII letters (names that need no other change), and
    then ``data`` with them lower-cased. Returns ``(True, lowered copy of data, or None when
    nothing was upper case)`` or ``(False, None)``. Offsets are checked before use."""
    cdef Py_ssize_t n = offsets.shape[0] - 1, i
    if n < 0:
        raise ValueError("lower_letters: no offsets")
    for i in range(n):
        if offsets[i] >= offsets[i + 1]:  # an empty value is not a name; decreasing is corrupt
            return False, None
    if n == 0:
        return True, None
    if offsets[0] < 0 or offsets[n] > data.shape[0]:
        raise ValueError(f"lower_letters: offsets {offsets[0]}..{offsets[n]} outside the {data.shape[0]} data bytes")
    cdef Py_ssize_t first = offsets[0], last = offsets[n]
    cdef uint8_t byte, folded
    cdef bint upper = False, letters = True
    with nogil:
        for i in range(first, last):
            byte = data[i]
            folded = byte | 0x20
            if folded < 97 or folded > 122:  # not a-z once folded: not a letter
                letters = False
                break
            upper |= byte != folded
    if not letters:
        return False, None
    if not upper:
        return True, None
    lowered = np.array(data, dtype=np.uint8)
    cdef uint8_t[::1] out = lowered
    with nogil:
        for i in range(first, last):
            out[i] |= 0x20
    return True, lowered


def open_quote_lines(const uint8_t[::1] block, int delimiter, int quote=34):
    """The lines of ``block`` that end inside a quoted value, read one line at a time by
    the rules of pyarrow's CSV parser: a quote opens a value only at the start of a field,
    a doubled quote inside it is one quote, the next quote closes it. Lines end at LF, CR
    or CRLF. Returns ``(starts int64[k], ends int64[k])``, each line's bytes without its
    line break. (A CSV parser would read the following lines into such a value.)"""
    if not 0 <= delimiter <= 255 or not 0 <= quote <= 255 or delimiter == quote or 10 in (delimiter, quote) or 13 in (delimiter, quote):
        raise ValueError("delimiter and quote must be two different bytes other than CR and LF")
    cdef Py_ssize_t size = block.shape[0], i = 0, line_start = 0, k = 0
    if size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cdef const uint8_t* p = &block[0]
    cdef uint8_t c, d = <uint8_t>delimiter, q = <uint8_t>quote
    cdef int state = 0  # 0 at the start of a field, 1 in an unquoted part, 2 in a quoted part
    cdef cnp.ndarray[int64_t, ndim=1] out_start = np.empty(16, np.int64), out_end = np.empty(16, np.int64)
    while i <= size:
        c = p[i] if i < size else 10  # the end of the block ends its last line
        if c == 10 or c == 13:
            if state == 2 and i > line_start:
                if k == out_start.shape[0]:
                    out_start = np.resize(out_start, 2 * k)
                    out_end = np.resize(out_end, 2 * k)
                out_start[k] = line_start
                out_end[k] = i
                k += 1
            if c == 13 and i + 1 < size and p[i + 1] == 10:
                i += 1
            state = 0
            line_start = i + 1
        elif state == 2:
            if c == q:
                if i + 1 < size and p[i + 1] == q:
                    i += 1  # a doubled quote: one quote in the value
                else:
                    state = 1
        elif c == d:
            state = 0
        elif state == 0 and c == q:
            state = 2
        else:
            state = 1
        i += 1
    return out_start[:k].copy(), out_end[:k].copy()
