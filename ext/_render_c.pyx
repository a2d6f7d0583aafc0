# cython: boundscheck=False, wraparound=False, cdivision=True, language_level=3
"""Row-template renderer: the compiled twin of connscan._render_py, whose docstring
describes the segments.

Two passes per call, each segment's sizing without the GIL: first the exact size of the
output (every offset, length and piece index is checked on the way, so the second pass
reads and writes only what was checked), then the lines, row by row, into one bytes
object of that size.
"""
import numpy as np

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy

# The segment kinds are defined once, in the pure-Python twin.
from connscan._render_py import JSON_TEXT, LITERAL, NUMBER, PIECE, TIMESTAMP

cdef extern from "Python.h":
    const Py_ssize_t PY_SSIZE_T_MAX

cdef enum Kind:
    K_LITERAL
    K_PIECE
    K_JSON_TEXT
    K_NUMBER
    K_TIMESTAMP

_KINDS = {LITERAL: K_LITERAL, PIECE: K_PIECE, JSON_TEXT: K_JSON_TEXT, NUMBER: K_NUMBER, TIMESTAMP: K_TIMESTAMP}

cdef enum:
    FITS = -1        # _measure: every row checked, total updated
    TOO_LARGE = -2   # _measure: the output would not fit in a Py_ssize_t

cdef struct Segment:
    Kind kind
    const char* text           # LITERAL text, or the prefix of a value
    Py_ssize_t text_len
    const char** pieces        # PIECE: the pieces and their lengths
    Py_ssize_t* piece_len
    Py_ssize_t n_pieces
    const int64_t* values      # PIECE index, NUMBER values, TIMESTAMP microseconds
    const uint8_t* valid       # TIMESTAMP: 1 where the time is known
    const int32_t* offsets32   # JSON_TEXT: n + 1 offsets, one of the two set
    const int64_t* offsets64
    const uint8_t* data        # JSON_TEXT: string bytes
    Py_ssize_t data_len
    const uint8_t* validity    # JSON_TEXT: Arrow validity bitmap, NULL when all are valid
    Py_ssize_t bit_offset
    bint escapes               # JSON_TEXT: some value needs escaping (found by _measure)

cdef struct Moment:
    int64_t year
    int month, day, hour, minute, second
    int64_t fraction           # microseconds

# Per byte, its length in a JSON string as json.dumps(ensure_ascii=False) writes it, and
# the letter of its two-character escape.
cdef uint8_t ESCAPED_LEN[256]
cdef char SHORT_ESCAPE[256]
cdef const char* HEX_DIGITS = b"0123456789abcdef"
for _byte in range(256):
    ESCAPED_LEN[_byte] = 6 if _byte < 0x20 else 1
    SHORT_ESCAPE[_byte] = 0
for _byte, _letter in ((0x22, b'"'), (0x5C, b"\\"), (0x08, b"b"), (0x0C, b"f"), (0x0A, b"n"), (0x0D, b"r"), (0x09, b"t")):
    ESCAPED_LEN[_byte] = 2
    SHORT_ESCAPE[_byte] = _letter[0]


def render_lines(Py_ssize_t n, segments):
    """The n lines of ``segments`` (see connscan._render_py), each ending in ``\\n``, as bytes."""
    if n < 0:
        raise ValueError(f"row count must not be negative, not {n}")
    segments = list(segments)
    cdef Py_ssize_t count = len(segments), k, i, bad = FITS, total = n  # the newlines
    cdef Segment* segs = <Segment*>calloc(max(count, 1), sizeof(Segment))
    if segs == NULL:
        raise MemoryError()
    keep = []  # the objects behind the segments' pointers, alive until the end
    cdef char* out
    try:
        for k in range(count):
            _prepare(&segs[k], k, n, segments[k], keep)
            with nogil:
                bad = _measure(&segs[k], n, &total)
            if bad == TOO_LARGE:
                raise MemoryError(f"rendered lines too large (segment {k})")
            if bad >= 0:
                raise _row_error(&segs[k], k, bad)
        result = PyBytes_FromStringAndSize(NULL, total)
        out = PyBytes_AS_STRING(result)
        with nogil:
            for i in range(n):
                for k in range(count):
                    out = _write(&segs[k], i, out)
                out[0] = b"\n"
                out += 1
        return result
    finally:
        for k in range(count):
            free(segs[k].pieces)
            free(segs[k].piece_len)
        free(segs)


cdef int _prepare(Segment* s, Py_ssize_t k, Py_ssize_t n, segment, list keep) except -1:
    """Fill ``s`` from the tuple ``segment``; shapes checked here, values by _measure."""
    cdef Py_ssize_t j
    kind = segment[0]
    if kind not in _KINDS:
        raise ValueError(f"segment {k}: unknown kind {kind!r}")
    s.kind = _KINDS[kind]
    text = bytes(segment[1]) if s.kind != K_PIECE else b""
    keep.append(text)
    s.text = PyBytes_AS_STRING(text)
    s.text_len = PyBytes_GET_SIZE(text)
    if s.kind == K_PIECE:
        pieces = [bytes(piece) for piece in segment[1]]
        keep.append(pieces)
        s.n_pieces = len(pieces)
        s.pieces = <const char**>calloc(max(s.n_pieces, 1), sizeof(char*))
        s.piece_len = <Py_ssize_t*>calloc(max(s.n_pieces, 1), sizeof(Py_ssize_t))
        if s.pieces == NULL or s.piece_len == NULL:
            raise MemoryError()
        for j in range(s.n_pieces):
            s.pieces[j] = PyBytes_AS_STRING(pieces[j])
            s.piece_len[j] = PyBytes_GET_SIZE(pieces[j])
        s.values = _int64_pointer(_values(k, n, segment[2]), keep)
    elif s.kind == K_NUMBER:
        s.values = _int64_pointer(_values(k, n, segment[2]), keep)
    elif s.kind == K_TIMESTAMP:
        s.values = _int64_pointer(_values(k, n, segment[2]), keep)
        valid = np.ascontiguousarray(_values(k, n, segment[3]) != 0).view(np.uint8)
        keep.append(valid)
        s.valid = _byte_pointer(valid)
    elif s.kind == K_JSON_TEXT:
        _, _, offsets, data, validity, bit_offset = segment
        _prepare_text(s, k, n, offsets, data, validity, bit_offset, keep)
    return 0


cdef int _prepare_text(Segment* s, Py_ssize_t k, Py_ssize_t n, offsets, data, validity,
                       Py_ssize_t bit_offset, list keep) except -1:
    offsets = np.asarray(offsets)
    if offsets.shape != (n + 1,):
        raise ValueError(f"segment {k}: string offsets of shape {offsets.shape} for {n} rows")
    cdef const int32_t[::1] narrow
    if offsets.dtype == np.int32:
        offsets = np.ascontiguousarray(offsets)
        narrow = offsets
        s.offsets32 = &narrow[0]
    else:
        s.offsets64 = _int64_pointer(np.ascontiguousarray(offsets, np.int64), keep)
    keep.append(offsets)
    data = np.frombuffer(data, np.uint8)
    keep.append(data)
    s.data = _byte_pointer(data)
    s.data_len = len(data)
    if validity is not None:
        validity = np.frombuffer(validity, np.uint8)
        keep.append(validity)
        if bit_offset < 0 or (bit_offset + n + 7) // 8 > len(validity):
            raise ValueError(f"segment {k}: validity bitmap too short for {n} rows at bit {bit_offset}")
        s.validity = _byte_pointer(validity)
        s.bit_offset = bit_offset
    return 0


cdef _values(Py_ssize_t k, Py_ssize_t n, values):
    values = np.asarray(values)
    if values.shape != (n,):
        raise ValueError(f"segment {k}: values of shape {values.shape} for {n} rows")
    return np.ascontiguousarray(values, np.int64)


cdef const int64_t* _int64_pointer(values, list keep) except? NULL:
    cdef const int64_t[::1] view = values
    keep.append(values)  # the array, not the view, keeps the memory
    return &view[0] if view.shape[0] else NULL


cdef const uint8_t* _byte_pointer(values) except? NULL:
    cdef const uint8_t[::1] view = values
    return &view[0] if view.shape[0] else NULL


cdef _row_error(const Segment* s, Py_ssize_t k, Py_ssize_t i):
    if s.kind == K_PIECE:
        return ValueError(f"segment {k}, row {i}: piece {s.values[i]} outside 0..{s.n_pieces - 1}")
    return ValueError(f"segment {k}, row {i}: string offsets {_offset(s, i)}..{_offset(s, i + 1)} "
                      f"outside the data buffer ({s.data_len} bytes)")


cdef inline int64_t _offset(const Segment* s, Py_ssize_t i) noexcept nogil:
    return s.offsets32[i] if s.offsets32 != NULL else s.offsets64[i]


cdef inline bint _is_null(const Segment* s, Py_ssize_t i) noexcept nogil:
    cdef Py_ssize_t bit = s.bit_offset + i
    return s.validity != NULL and not (s.validity[bit >> 3] >> (bit & 7)) & 1


cdef inline bint _add(Py_ssize_t* total, Py_ssize_t size) noexcept nogil:
    if size > PY_SSIZE_T_MAX - total[0]:
        return False
    total[0] += size
    return True


cdef Py_ssize_t _measure(Segment* s, Py_ssize_t n, Py_ssize_t* total) noexcept nogil:
    """Add the bytes of segment ``s`` on all n rows to ``total``: FITS, TOO_LARGE, or the
    first row whose offsets or piece index are invalid."""
    cdef Py_ssize_t i, size
    cdef int64_t start, end, j, index
    for i in range(n):
        if s.kind == K_LITERAL:
            size = s.text_len
        elif s.kind == K_PIECE:
            index = s.values[i]
            if index < 0 or index >= s.n_pieces:
                return i
            size = s.piece_len[index]
        elif s.kind == K_NUMBER:
            size = s.text_len + _digits(<uint64_t>s.values[i]) if s.values[i] >= 0 else 0
        elif s.kind == K_TIMESTAMP:
            size = s.text_len + _iso_width(_moment(s.values[i])) if s.valid[i] else 0
        else:
            start = _offset(s, i)
            end = _offset(s, i + 1)
            if start < 0 or end < start or end > s.data_len:
                return i  # every row's offsets are checked, null or not
            size = 0
            if not _is_null(s, i):
                size = end - start
                for j in range(start, end):
                    size += ESCAPED_LEN[s.data[j]] - 1
                s.escapes = s.escapes or size != end - start
                if not _add(&size, s.text_len + 2):
                    return TOO_LARGE
        if not _add(total, size):
            return TOO_LARGE
    return FITS


cdef char* _write(const Segment* s, Py_ssize_t i, char* out) noexcept nogil:
    """Write segment ``s`` of row ``i`` at ``out`` (sized by _measure); return the end."""
    cdef int64_t start, end, index
    if s.kind == K_LITERAL:
        return _copy(out, s.text, s.text_len)
    if s.kind == K_PIECE:
        index = s.values[i]
        return _copy(out, s.pieces[index], s.piece_len[index])
    if s.kind == K_NUMBER:
        if s.values[i] < 0:
            return out
        out = _copy(out, s.text, s.text_len)
        return _write_digits(out, <uint64_t>s.values[i], _digits(<uint64_t>s.values[i]))
    if s.kind == K_TIMESTAMP:
        if not s.valid[i]:
            return out
        return _write_iso(_copy(out, s.text, s.text_len), _moment(s.values[i]))
    if _is_null(s, i):
        return out
    start = _offset(s, i)
    end = _offset(s, i + 1)
    out = _copy(out, s.text, s.text_len)
    out[0] = b'"'
    out += 1
    if s.escapes:
        out = _write_escaped(out, s.data + start, end - start)
    else:
        out = _copy(out, <const char*>s.data + start, end - start)
    out[0] = b'"'
    return out + 1


cdef inline char* _copy(char* out, const char* text, Py_ssize_t size) noexcept nogil:
    if size > 0:
        memcpy(out, text, size)
    return out + size


cdef char* _write_escaped(char* out, const uint8_t* text, Py_ssize_t size) noexcept nogil:
    cdef Py_ssize_t j
    cdef uint8_t c
    for j in range(size):
        c = text[j]
        if ESCAPED_LEN[c] == 1:
            out[0] = <char>c
            out += 1
        elif ESCAPED_LEN[c] == 2:
            out[0] = b"\\"
            out[1] = SHORT_ESCAPE[c]
            out += 2
        else:
            out[0] = b"\\"
            out[1] = b"u"
            out[2] = b"0"
            out[3] = b"0"
            out[4] = HEX_DIGITS[c >> 4]
            out[5] = HEX_DIGITS[c & 15]
            out += 6
    return out


cdef inline int _digits(uint64_t value) noexcept nogil:
    cdef int count = 1
    while value >= 10:
        value //= 10
        count += 1
    return count


cdef inline char* _write_digits(char* out, uint64_t value, int width) noexcept nogil:
    """``value`` in ``width`` decimal digits (zero-padded; width >= its digits)."""
    cdef int j
    for j in range(width - 1, -1, -1):
        out[j] = <char>(48 + value % 10)
        value //= 10
    return out + width


cdef inline Moment _moment(int64_t micros) noexcept nogil:
    """The UTC calendar fields of ``micros`` since 1970, proleptic Gregorian (H. Hinnant's
    days-to-civil algorithm); floor division, so pre-1970 times count back correctly."""
    cdef Moment m
    cdef int64_t seconds = micros // 1000000, days, second, era, day_of_era, year_of_era, day_of_year, month
    m.fraction = micros % 1000000
    if m.fraction < 0:
        m.fraction += 1000000
        seconds -= 1
    days = seconds // 86400
    second = seconds % 86400
    if second < 0:
        second += 86400
        days -= 1
    m.hour = <int>(second // 3600)
    m.minute = <int>(second // 60 % 60)
    m.second = <int>(second % 60)
    days += 719468
    era = (days if days >= 0 else days - 146096) // 146097
    day_of_era = days - era * 146097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36524 - day_of_era // 146096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    month = (5 * day_of_year + 2) // 153  # 0 is March
    m.day = <int>(day_of_year - (153 * month + 2) // 5 + 1)
    m.month = <int>(month + 3 if month < 10 else month - 9)
    m.year = year_of_era + era * 400 + (m.month <= 2)
    return m


cdef inline Py_ssize_t _year_width(int64_t year) noexcept nogil:
    cdef int digits = _digits(<uint64_t>(year if year >= 0 else -year))
    return (year < 0) + (digits if digits > 4 else 4)


cdef inline Py_ssize_t _iso_width(Moment m) noexcept nogil:
    # '"' year "-MM-DDTHH:MM:SS" [".ffffff"] 'Z"'
    return 1 + _year_width(m.year) + 15 + (7 if m.fraction else 0) + 2


cdef char* _write_iso(char* out, Moment m) noexcept nogil:
    out[0] = b'"'
    out += 1
    if m.year < 0:
        out[0] = b"-"
        out += 1
    out = _write_digits(out, <uint64_t>(m.year if m.year >= 0 else -m.year), <int>(_year_width(m.year) - (m.year < 0)))
    out[0] = b"-"
    out = _write_digits(out + 1, m.month, 2)
    out[0] = b"-"
    out = _write_digits(out + 1, m.day, 2)
    out[0] = b"T"
    out = _write_digits(out + 1, m.hour, 2)
    out[0] = b":"
    out = _write_digits(out + 1, m.minute, 2)
    out[0] = b":"
    out = _write_digits(out + 1, m.second, 2)
    if m.fraction:
        out[0] = b"."
        out = _write_digits(out + 1, <uint64_t>m.fraction, 6)
    out[0] = b"Z"
    out[1] = b'"'
    return out + 2
