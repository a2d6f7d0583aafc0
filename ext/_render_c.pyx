# cython: boundscheck=False, wraparound=False, cdivision=True, language_level=3
"""Row-template renderer: the compiled twin of connscan._render_py, whose docstring
describes the segments.

Two passes per call, each without the GIL: first the exact size of the output, segment
by segment (every offset, piece index and THOR_TEXT character is checked on the way, so
the second pass reads only what was checked), then the lines, row by row, into one bytes
object of that size. The escapers count when given no output buffer and write otherwise,
so the two passes cannot disagree.
"""
import numpy as np

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy

# The segment kinds are defined once, in the pure-Python twin.
from connscan._render_py import JSON_TEXT, LITERAL, NUMBER, PIECE, THOR_TEXT, TIMESTAMP

cdef extern from "Python.h":
    const Py_ssize_t PY_SSIZE_T_MAX
    bint Py_UNICODE_ISPRINTABLE(Py_UCS4 ch) nogil  # str.isprintable of one character

cdef enum Kind:
    K_LITERAL
    K_PIECE
    K_JSON_TEXT
    K_THOR_TEXT
    K_NUMBER
    K_TIMESTAMP

_KINDS = {LITERAL: K_LITERAL, PIECE: K_PIECE, JSON_TEXT: K_JSON_TEXT, THOR_TEXT: K_THOR_TEXT, NUMBER: K_NUMBER,
          TIMESTAMP: K_TIMESTAMP}

cdef enum:
    FITS = -1        # _measure: every row checked, total updated
    TOO_LARGE = -2   # _measure: the output would not fit in a Py_ssize_t
    BAD_TEXT = -1    # _thor_escape: the value is not UTF-8

cdef struct Segment:
    Kind kind
    const char* text           # LITERAL text, or the prefix of a value
    Py_ssize_t text_len
    const char* suffix         # TIMESTAMP: written after the time
    Py_ssize_t suffix_len
    const char* missing        # NUMBER, THOR_TEXT: written after the prefix for an unknown
    Py_ssize_t missing_len     # value; NULL: the segment is left out
    const char** pieces        # PIECE: the pieces and their lengths
    Py_ssize_t* piece_len
    Py_ssize_t n_pieces
    const int64_t* values      # PIECE index, NUMBER values, TIMESTAMP microseconds
    const uint8_t* valid       # TIMESTAMP: 1 where the time is known
    const int32_t* offsets32   # *_TEXT: n + 1 offsets, one of the two set
    const int64_t* offsets64
    const uint8_t* data        # *_TEXT: string bytes from offset data_lo on
    int64_t data_lo
    Py_ssize_t data_len        # *_TEXT: size of the whole data buffer
    const uint8_t* validity    # *_TEXT: Arrow validity bitmap, NULL when all are valid
    Py_ssize_t bit_offset
    bint escapes               # *_TEXT: some value needs escaping (found by _measure)

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
    """Fill ``s`` from the tuple ``segment``; shapes checked here, values by _measure.

    Arrays are copied (bytes are immutable): _write trusts what _measure checked, so
    nothing may change in between (another thread, without the GIL)."""
    cdef Py_ssize_t j
    kind = segment[0]
    if kind not in _KINDS:
        raise ValueError(f"segment {k}: unknown kind {kind!r}")
    s.kind = _KINDS[kind]
    if s.kind == K_LITERAL:
        _, text = segment
        s.text = _bytes(text, &s.text_len, keep)
    elif s.kind == K_PIECE:
        _, pieces, index = segment
        pieces = [bytes(piece) for piece in pieces]
        keep.append(pieces)
        s.n_pieces = len(pieces)
        s.pieces = <const char**>calloc(max(s.n_pieces, 1), sizeof(char*))
        s.piece_len = <Py_ssize_t*>calloc(max(s.n_pieces, 1), sizeof(Py_ssize_t))
        if s.pieces == NULL or s.piece_len == NULL:
            raise MemoryError()
        for j in range(s.n_pieces):
            s.pieces[j] = PyBytes_AS_STRING(pieces[j])
            s.piece_len[j] = PyBytes_GET_SIZE(pieces[j])
        s.values = _int64_pointer(_values(k, n, index), keep)
    elif s.kind == K_NUMBER:
        _, prefix, values, missing = segment
        s.text = _bytes(prefix, &s.text_len, keep)
        s.values = _int64_pointer(_values(k, n, values), keep)
        if missing is not None:
            s.missing = _bytes(missing, &s.missing_len, keep)
    elif s.kind == K_TIMESTAMP:
        _, prefix, suffix, micros, valid = segment
        s.text = _bytes(prefix, &s.text_len, keep)
        s.suffix = _bytes(suffix, &s.suffix_len, keep)
        s.values = _int64_pointer(_values(k, n, micros), keep)
        valid = (_values(k, n, valid) != 0).view(np.uint8)
        keep.append(valid)
        s.valid = _byte_pointer(valid)
    else:
        _, prefix, offsets, data, validity, bit_offset = segment
        s.text = _bytes(prefix, &s.text_len, keep)
        if s.kind == K_THOR_TEXT:
            s.missing = _bytes(b"-", &s.missing_len, keep)  # as output.escape_value(None)
        _prepare_text(s, k, n, offsets, data, validity, bit_offset, keep)
    return 0


cdef int _prepare_text(Segment* s, Py_ssize_t k, Py_ssize_t n, offsets, data, validity,
                       Py_ssize_t bit_offset, list keep) except -1:
    offsets = np.asarray(offsets)
    if offsets.shape != (n + 1,):
        raise ValueError(f"segment {k}: string offsets of shape {offsets.shape} for {n} rows")
    cdef const int32_t[::1] narrow
    if offsets.dtype == np.int32:
        offsets = np.array(offsets)
        narrow = offsets
        s.offsets32 = &narrow[0]
    else:
        offsets = np.array(offsets, np.int64)
        s.offsets64 = _int64_pointer(offsets, keep)
    keep.append(offsets)
    data = np.frombuffer(data, np.uint8)
    s.data_len = len(data)
    # Only the bytes the offsets can reach (window [data_lo, hi)), copied.
    s.data_lo = min(max(int(offsets.min()), 0), s.data_len)
    window = np.array(data[s.data_lo:min(max(int(offsets.max()), s.data_lo), s.data_len)])
    keep.append(window)
    s.data = _byte_pointer(window)
    if validity is not None:
        validity = np.frombuffer(validity, np.uint8)
        if bit_offset < 0 or (bit_offset + n + 7) // 8 > len(validity):
            raise ValueError(f"segment {k}: validity bitmap too short for {n} rows at bit {bit_offset}")
        validity = np.array(validity[bit_offset // 8:(bit_offset + n + 7) // 8])
        keep.append(validity)
        s.validity = _byte_pointer(validity)
        s.bit_offset = bit_offset % 8
    return 0


cdef _values(Py_ssize_t k, Py_ssize_t n, values):
    values = np.asarray(values)
    if values.shape != (n,):
        raise ValueError(f"segment {k}: values of shape {values.shape} for {n} rows")
    return np.array(values, np.int64)  # a copy, as all that _measure checks (see _prepare)


cdef const char* _bytes(value, Py_ssize_t* size, list keep) except NULL:
    value = bytes(value)
    keep.append(value)
    size[0] = PyBytes_GET_SIZE(value)
    return PyBytes_AS_STRING(value)


cdef const int64_t* _int64_pointer(values, list keep) except? NULL:
    cdef const int64_t[::1] view = values
    keep.append(values)  # the array, not the view, keeps the memory
    return &view[0] if view.shape[0] else NULL


cdef const uint8_t* _byte_pointer(values) except? NULL:
    cdef const uint8_t[::1] view = values
    return &view[0] if view.shape[0] else NULL


cdef _row_error(const Segment* s, Py_ssize_t k, Py_ssize_t i):
    """The ValueError of the row _measure found invalid."""
    if s.kind == K_PIECE:
        return ValueError(f"segment {k}, row {i}: piece {s.values[i]} outside 0..{s.n_pieces - 1}")
    cdef int64_t start = _offset(s, i), end = _offset(s, i + 1)
    if start < 0 or end < start or end > s.data_len:
        return ValueError(f"segment {k}, row {i}: string offsets {start}..{end} outside the data buffer "
                          f"({s.data_len} bytes)")
    return ValueError(f"segment {k}, row {i}: invalid UTF-8")


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
    first row whose offsets, piece index or text are invalid."""
    cdef Py_ssize_t i, size, length
    cdef int64_t start, end, index
    cdef Py_ssize_t missing = s.text_len + s.missing_len if s.missing != NULL else 0
    for i in range(n):
        if s.kind == K_LITERAL:
            size = s.text_len
        elif s.kind == K_PIECE:
            index = s.values[i]
            if index < 0 or index >= s.n_pieces:
                return i
            size = s.piece_len[index]
        elif s.kind == K_NUMBER:
            size = s.text_len + _digits(<uint64_t>s.values[i]) if s.values[i] >= 0 else missing
        elif s.kind == K_TIMESTAMP:
            size = s.text_len + _iso_width(_moment(s.values[i])) + s.suffix_len if s.valid[i] else 0
        else:
            start = _offset(s, i)
            end = _offset(s, i + 1)
            if start < 0 or end < start or end > s.data_len:
                return i  # every row's offsets are checked, null or not
            if _is_null(s, i):
                size = missing
            else:
                if s.kind == K_JSON_TEXT:
                    length = _json_escape(s.data + (start - s.data_lo), end - start, NULL)
                    size = 2  # the quotes
                else:
                    length = _thor_escape(s.data + (start - s.data_lo), end - start, NULL)
                    if length == BAD_TEXT:
                        return i
                    size = 0
                s.escapes = s.escapes or length != end - start  # escaping only ever lengthens
                if not (_add(&size, length) and _add(&size, s.text_len)):
                    return TOO_LARGE
        if not _add(total, size):
            return TOO_LARGE
    return FITS


cdef char* _write(const Segment* s, Py_ssize_t i, char* out) noexcept nogil:
    """Write segment ``s`` of row ``i`` at ``out`` (sized by _measure); return the end."""
    cdef int64_t start, end, index
    cdef bint json
    if s.kind == K_LITERAL:
        return _copy(out, s.text, s.text_len)
    if s.kind == K_PIECE:
        index = s.values[i]
        return _copy(out, s.pieces[index], s.piece_len[index])
    if s.kind == K_TIMESTAMP:
        if not s.valid[i]:
            return out
        out = _write_iso(_copy(out, s.text, s.text_len), _moment(s.values[i]))
        return _copy(out, s.suffix, s.suffix_len)
    if (s.kind == K_NUMBER and s.values[i] < 0) or (s.kind != K_NUMBER and _is_null(s, i)):
        if s.missing == NULL:
            return out
        return _copy(_copy(out, s.text, s.text_len), s.missing, s.missing_len)
    out = _copy(out, s.text, s.text_len)
    if s.kind == K_NUMBER:
        return _write_digits(out, <uint64_t>s.values[i], _digits(<uint64_t>s.values[i]))
    start = _offset(s, i) - s.data_lo
    end = _offset(s, i + 1) - s.data_lo
    json = s.kind == K_JSON_TEXT
    if json:
        out[0] = b'"'
        out += 1
    if not s.escapes:
        out = _copy(out, <const char*>s.data + start, end - start)
    elif json:
        out += _json_escape(s.data + start, end - start, out)
    else:
        out += _thor_escape(s.data + start, end - start, out)
    if json:
        out[0] = b'"'
        out += 1
    return out


cdef inline char* _copy(char* out, const char* text, Py_ssize_t size) noexcept nogil:
    if size > 0:
        memcpy(out, text, size)
    return out + size


cdef Py_ssize_t _json_escape(const uint8_t* text, Py_ssize_t size, char* out) noexcept nogil:
    """Length of ``text`` escaped as in a JSON string (quotes not included); written at
    ``out`` unless it is NULL."""
    cdef Py_ssize_t j, length = 0
    cdef uint8_t c
    for j in range(size):
        c = text[j]
        if ESCAPED_LEN[c] == 1:
            if out != NULL:
                out[length] = <char>c
            length += 1
        elif ESCAPED_LEN[c] == 2:
            if out != NULL:
                out[length] = b"\\"
                out[length + 1] = SHORT_ESCAPE[c]
            length += 2
        else:
            length += _code_escape(out, length, b"u", c, 4)
    return length


cdef Py_ssize_t _thor_escape(const uint8_t* text, Py_ssize_t size, char* out) noexcept nogil:
    """Length of UTF-8 ``text`` escaped as output.escape_value escapes it, or BAD_TEXT when it
    is not UTF-8; written at ``out`` unless it is NULL."""
    cdef Py_ssize_t j = 0, length = 0
    cdef int k
    cdef Py_UCS4 ch
    while j < size:
        k = _utf8_char(text + j, size - j, &ch)
        if k == 0:
            return BAD_TEXT
        if ch == 58 and (j + 1 == size or text[j + 1] == 32):  # ":" ending the value or before a space
            length += _code_escape(out, length, b"x", ch, 2)
        elif (0x20 <= ch < 0x7F) or (ch >= 0x80 and Py_UNICODE_ISPRINTABLE(ch)):
            if out != NULL:
                memcpy(out + length, text + j, k)
            length += k
        elif ch < 0x100:
            length += _code_escape(out, length, b"x", ch, 2)
        elif ch < 0x10000:
            length += _code_escape(out, length, b"u", ch, 4)
        else:
            length += _code_escape(out, length, b"U", ch, 8)
        j += k
    return length


cdef inline Py_ssize_t _code_escape(char* out, Py_ssize_t at, char letter, uint32_t code, int digits) noexcept nogil:
    """Backslash, ``letter``, ``code`` in ``digits`` lowercase hex digits: written at
    out + at unless out is NULL; returns its length."""
    cdef int d
    if out != NULL:
        out[at] = b"\\"
        out[at + 1] = letter
        for d in range(digits):
            out[at + 2 + d] = HEX_DIGITS[(code >> (4 * (digits - 1 - d))) & 15]
    return 2 + digits


cdef inline int _utf8_char(const uint8_t* p, Py_ssize_t left, Py_UCS4* ch) noexcept nogil:
    """Byte length of the UTF-8 character at ``p`` (``left`` bytes remain), its code point
    in ``ch``; 0 when malformed as Python's strict decoder sees it (overlong, surrogate,
    above U+10FFFF, truncated)."""
    cdef uint8_t b0 = p[0]
    if b0 < 0x80:
        ch[0] = b0
        return 1
    if b0 < 0xC2 or b0 > 0xF4:
        return 0
    if b0 < 0xE0:
        if left < 2 or (p[1] & 0xC0) != 0x80:
            return 0
        ch[0] = ((b0 & 0x1F) << 6) | (p[1] & 0x3F)
        return 2
    if b0 < 0xF0:
        if left < 3 or (p[1] & 0xC0) != 0x80 or (p[2] & 0xC0) != 0x80:
            return 0
        if (b0 == 0xE0 and p[1] < 0xA0) or (b0 == 0xED and p[1] > 0x9F):
            return 0
        ch[0] = ((b0 & 0x0F) << 12) | ((p[1] & 0x3F) << 6) | (p[2] & 0x3F)
        return 3
    if left < 4 or (p[1] & 0xC0) != 0x80 or (p[2] & 0xC0) != 0x80 or (p[3] & 0xC0) != 0x80:
        return 0
    if (b0 == 0xF0 and p[1] < 0x90) or (b0 == 0xF4 and p[1] > 0x8F):
        return 0
    ch[0] = ((b0 & 0x07) << 18) | ((p[1] & 0x3F) << 12) | ((p[2] & 0x3F) << 6) | (p[3] & 0x3F)
    return 4


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
    # year "-MM-DDTHH:MM:SS" [".ffffff"] "Z"
    return _year_width(m.year) + 15 + (7 if m.fraction else 0) + 1


cdef char* _write_iso(char* out, Moment m) noexcept nogil:
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
    return out + 1
