"""Checksummed, memory-mapped table files: one on-disk format for every compiled table.

Layout (all integers little-endian):

    fixed header (64 bytes)
      magic        8 bytes  b"CSTABLE\\0"
      version      u32      FORMAT_VERSION
      reserved     u32      0 (must be zero)
      body_length  u64      bytes after the fixed header (== file size - 64)
      checksum     32 bytes BLAKE2b-256 of the body
      reserved     8 bytes  0 (must be zero)
    body
      doc_length   u64      length of the JSON document that follows
      document     JSON     {"kind": str, "meta": {...}, "sections": [{"name", "dtype",
                            "shape", "offset", "length"}, ...]}; offsets are absolute
      sections     each starts on an 8-byte boundary, zero padding in between

Every field is validated against the file size before an array is made, so a truncated or
corrupt file raises CacheError (naming the file and the fault) instead of reading garbage.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from connscan.errors import CacheError

MAGIC = b"CSTABLE\0"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sIIQ32sQ")
HEADER_SIZE = _HEADER.size  # 64
_DOC_LENGTH = struct.Struct("<Q")
_ALIGN = 8
# Plain little-endian numbers and fixed-width bytes only: never object or structured dtypes.
_DTYPE_RE = re.compile(r"^(<[uif][1248]|\|[ub]1|\|S[1-9][0-9]{0,3})$")
_MAX_DOC_LENGTH = 1 << 26


@dataclass
class TableFile:
    """A validated table file: ``meta`` (JSON) and read-only ``arrays`` backed by an mmap."""

    path: Path
    kind: str
    version: int
    meta: dict
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _padding(n: int) -> int:
    return -n % _ALIGN


def write_tables(path, kind: str, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` and JSON-serialisable ``meta`` to ``path`` atomically (temp + rename)."""
    path = Path(path)
    prepared = {}
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        if not _DTYPE_RE.match(array.dtype.str):
            raise ValueError(f"table section {name!r}: unsupported dtype {array.dtype.str}")
        prepared[str(name)] = array

    # The directory holds absolute offsets, which depend on the document's own length:
    # iterate until the length is stable (it changes at most a few digits).
    doc_length = 0
    while True:
        offset = HEADER_SIZE + _DOC_LENGTH.size + doc_length
        offset += _padding(offset)
        sections = []
        for name, array in prepared.items():
            sections.append({"name": name, "dtype": array.dtype.str, "shape": list(array.shape),
                             "offset": offset, "length": array.nbytes})
            offset += array.nbytes + _padding(array.nbytes)
        document = json.dumps({"kind": kind, "meta": meta, "sections": sections},
                              sort_keys=True, separators=(",", ":")).encode()
        if len(document) == doc_length:
            break
        doc_length = len(document)

    body = bytearray(_DOC_LENGTH.pack(doc_length) + document)
    body += bytes(_padding(HEADER_SIZE + len(body)))
    for array, entry in zip(prepared.values(), sections):
        assert HEADER_SIZE + len(body) == entry["offset"]
        body += array.tobytes()
        body += bytes(_padding(array.nbytes))
    checksum = hashlib.blake2b(body, digest_size=32).digest()
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(body), checksum, 0)

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(header)
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_tables(path, kind: str, verify: bool = True) -> TableFile:
    """Open and validate a table file of ``kind``; arrays are read-only views on an mmap.

    ``verify`` checks the BLAKE2b checksum of the whole body (the structure is always checked).
    """
    path = Path(path)

    def fail(problem: str) -> CacheError:
        return CacheError(f"{path}: {problem}")

    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < HEADER_SIZE + _DOC_LENGTH.size:
                raise fail(f"truncated table file ({size} bytes)")
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise CacheError(f"{path}: cannot read table file: {exc.strerror or exc}") from exc

    magic, version, reserved, body_length, checksum, reserved2 = _HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise fail("not a connscan table file (bad magic)")
    if version != FORMAT_VERSION:
        raise fail(f"table format version {version}, expected {FORMAT_VERSION}")
    if reserved or reserved2:
        raise fail("reserved header fields are not zero")
    if body_length != size - HEADER_SIZE:
        raise fail(f"body length {body_length} does not match file size {size} (truncated?)")
    if verify:
        body = memoryview(buf)[HEADER_SIZE:]
        try:
            actual = hashlib.blake2b(body, digest_size=32).digest()
        finally:
            body.release()
        if actual != checksum:
            raise fail("checksum mismatch (corrupt table file)")

    (doc_length,) = _DOC_LENGTH.unpack_from(buf, HEADER_SIZE)
    doc_start = HEADER_SIZE + _DOC_LENGTH.size
    if doc_length > min(size - doc_start, _MAX_DOC_LENGTH):
        raise fail(f"directory length {doc_length} exceeds the file")
    try:
        document = json.loads(bytes(buf[doc_start:doc_start + doc_length]))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise fail(f"unreadable directory ({type(exc).__name__})") from exc
    if not isinstance(document, dict):
        raise fail("directory is not a JSON object")
    if document.get("kind") != kind:
        raise fail(f"table kind {document.get('kind')!r}, expected {kind!r}")
    meta = document.get("meta")
    if not isinstance(meta, dict):
        raise fail("metadata is not a JSON object")
    sections = document.get("sections")
    if not isinstance(sections, list):
        raise fail("section directory is not a list")

    data_start = doc_start + doc_length
    arrays: dict[str, np.ndarray] = {}
    extents = []
    for number, entry in enumerate(sections):
        name, array, extent = _section(entry, number, data_start, size, fail)
        if name in arrays:
            raise fail(f"duplicate section {name!r}")
        arrays[name] = np.frombuffer(buf, dtype=array[0], count=array[1],
                                     offset=extent[0]).reshape(array[2])
        extents.append(extent)
    extents.sort()
    for (start_a, end_a), (start_b, _end_b) in zip(extents, extents[1:]):
        if start_b < end_a:
            raise fail("sections overlap")
    return TableFile(path=path, kind=kind, version=version, meta=meta, arrays=arrays)


def _section(entry, number: int, data_start: int, size: int, fail):
    """Validate one directory entry; return (name, (dtype, count, shape), (start, end))."""
    if not isinstance(entry, dict):
        raise fail(f"section {number}: entry is not an object")
    name = entry.get("name")
    dtype_text = entry.get("dtype")
    shape = entry.get("shape")
    offset = entry.get("offset")
    length = entry.get("length")
    label = f"section {name!r}" if isinstance(name, str) else f"section {number}"
    if not isinstance(name, str):
        raise fail(f"{label}: name is not a string")
    if not isinstance(dtype_text, str) or not _DTYPE_RE.match(dtype_text):
        raise fail(f"{label}: unsupported dtype {dtype_text!r}")
    if (not isinstance(shape, list) or len(shape) > 8
            or not all(type(d) is int and 0 <= d < 1 << 48 for d in shape)):
        raise fail(f"{label}: bad shape {shape!r}")
    if type(offset) is not int or type(length) is not int or offset < 0 or length < 0:
        raise fail(f"{label}: bad offset/length {offset!r}/{length!r}")
    if offset % _ALIGN:
        raise fail(f"{label}: offset {offset} is not {_ALIGN}-byte aligned")
    if offset < data_start:
        raise fail(f"{label}: offset {offset} overlaps the header")
    if offset + length > size:
        raise fail(f"{label}: bytes {offset}..{offset + length} exceed the file size {size}")
    dtype = np.dtype(dtype_text)
    count = 1
    for dim in shape:
        count *= dim
    if count * dtype.itemsize != length:
        raise fail(f"{label}: length {length} does not match shape {shape} of {dtype_text}")
    return name, (dtype, count, tuple(shape)), (offset, offset + length)
