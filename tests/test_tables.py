"""Table files: round trips, and every kind of damage is reported as CacheError."""
from __future__ import annotations

import hashlib
import json
import os
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from connscan.errors import CacheError
from connscan.tables import FORMAT_VERSION, HEADER_SIZE, MAGIC, read_tables, write_tables

SMALL_ARRAYS = {
    "starts": np.array([0, 16777216, 3232235520], dtype=np.uint32),
    "country": np.array([0, 3, 1], dtype=np.uint16),
    "hi": np.array([0, 2**63 + 5], dtype=np.uint64),
    "codes": np.array([b"", b"DE", b"US"], dtype="S2"),
    "empty": np.zeros(0, dtype=np.int32),
    "grid": np.arange(6, dtype=np.int64).reshape(2, 3),
}


@pytest.fixture
def small_file(tmp_path):
    path = tmp_path / "small.cstab"
    write_tables(path, "test", {"source": "unit", "countries": ["", "DE"]}, SMALL_ARRAYS)
    return path


def _assert_same(arrays, expected):
    assert set(arrays) == set(expected)
    for name, array in expected.items():
        assert arrays[name].dtype == array.dtype, name
        assert arrays[name].shape == array.shape, name
        assert np.array_equal(arrays[name], array), name


def test_round_trip(small_file):
    table = read_tables(small_file, "test")
    assert table.kind == "test"
    assert table.version == FORMAT_VERSION
    assert table.meta == {"source": "unit", "countries": ["", "DE"]}
    _assert_same(table.arrays, SMALL_ARRAYS)


def test_arrays_are_read_only_and_aligned(small_file):
    table = read_tables(small_file, "test")
    for array in table.arrays.values():
        assert not array.flags.writeable
        assert array.ctypes.data % 8 == 0 or array.size == 0
    with pytest.raises(ValueError):
        table.arrays["starts"][0] = 1


def test_big_endian_input_is_stored_little_endian(tmp_path):
    path = tmp_path / "be.cstab"
    big = np.arange(10, dtype=">u4")
    write_tables(path, "test", {}, {"a": big})
    loaded = read_tables(path, "test").arrays["a"]
    assert loaded.dtype == np.dtype("<u4")
    assert loaded.tolist() == list(range(10))


def test_object_arrays_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unsupported dtype"):
        write_tables(tmp_path / "o.cstab", "test", {}, {"a": np.array([object()])})


def test_rewrite_is_atomic_and_leaves_no_temp_files(tmp_path, small_file):
    write_tables(small_file, "test", {"v": 2}, {"a": np.arange(3, dtype=np.uint8)})
    assert read_tables(small_file, "test").meta == {"v": 2}
    assert sorted(os.listdir(tmp_path)) == ["small.cstab"]


def test_wrong_kind(small_file):
    with pytest.raises(CacheError, match="kind 'test', expected 'engine'"):
        read_tables(small_file, "engine")


def test_missing_file_names_it(tmp_path):
    missing = tmp_path / "nope.cstab"
    with pytest.raises(CacheError, match="nope.cstab"):
        read_tables(missing, "test")


def test_every_truncation_is_detected(small_file, tmp_path):
    data = small_file.read_bytes()
    cut = tmp_path / "cut.cstab"
    for length in range(len(data)):
        cut.write_bytes(data[:length])
        for verify in (True, False):
            with pytest.raises(CacheError, match="cut.cstab"):
                read_tables(cut, "test", verify=verify)


def test_every_single_byte_flip_is_detected(small_file, tmp_path):
    data = small_file.read_bytes()
    bad = tmp_path / "flip.cstab"
    for position in range(len(data)):
        flipped = bytearray(data)
        flipped[position] ^= 1 << (position % 8)  # every bit position gets its turn
        bad.write_bytes(bytes(flipped))
        with pytest.raises(CacheError, match="flip.cstab"):
            read_tables(bad, "test")


@settings(max_examples=100, deadline=None)
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=6))
def test_random_damage_without_checksum_never_crashes(tmp_path_factory, flips):
    # verify=False skips the checksum: the structural checks alone must stop every bad
    # directory, so the outcome is CacheError or arrays that lie inside the file.
    path = tmp_path_factory.mktemp("flips") / "t.cstab"
    write_tables(path, "test", {"k": 1}, SMALL_ARRAYS)
    data = bytearray(path.read_bytes())
    for position, mask in flips:
        data[position % len(data)] ^= mask
    path.write_bytes(bytes(data))
    try:
        table = read_tables(path, "test", verify=False)
    except CacheError:
        return
    for array in table.arrays.values():
        assert array.nbytes <= len(data)
        assert len(array.tobytes()) == array.nbytes  # reads every byte: must stay inside the mapping


def _write_raw(path, document: dict | bytes, payload: bytes = b"", version=FORMAT_VERSION):
    """A file with a hand-made directory and a *valid* checksum, to test the structure checks."""
    doc = document if isinstance(document, bytes) else json.dumps(document).encode()
    body = struct.pack("<Q", len(doc)) + doc
    body += bytes(-(HEADER_SIZE + len(body)) % 8) + payload
    checksum = hashlib.blake2b(body, digest_size=32).digest()
    path.write_bytes(struct.pack("<8sIIQ32sQ", MAGIC, version, 0, len(body), checksum, 0) + body)


def _data_offset(document: dict) -> int:
    doc = json.dumps(document).encode()
    n = HEADER_SIZE + 8 + len(doc)
    return n + (-n % 8)


def _valid_document(**entry):
    # A placeholder offset of fixed width, fixed up below once the document length is known.
    base = {"name": "a", "dtype": "<u4", "shape": [4], "offset": 999, "length": 16}
    base.update(entry)
    return {"kind": "test", "meta": {}, "sections": [base]}


def test_hand_made_valid_file_is_accepted(tmp_path):
    path = tmp_path / "ok.cstab"
    document = _valid_document()
    document["sections"][0]["offset"] = _data_offset(document)
    _write_raw(path, document, np.arange(4, dtype="<u4").tobytes())
    assert read_tables(path, "test").arrays["a"].tolist() == [0, 1, 2, 3]


BAD_ENTRIES = {
    "beyond the end": ({"offset": 10**6}, "exceed the file size"),
    "unaligned": ({"offset": "data+4"}, "aligned"),
    "inside header": ({"offset": 8}, "overlaps the header"),
    "negative offset": ({"offset": -8}, "bad offset"),
    "length vs shape": ({"length": 12}, "does not match shape"),
    "object dtype": ({"dtype": "|O"}, "unsupported dtype"),
    "big endian dtype": ({"dtype": ">u4"}, "unsupported dtype"),
    "structured dtype": ({"dtype": [["x", "<u4"]]}, "unsupported dtype"),
    "negative shape": ({"shape": [-4]}, "bad shape"),
    "shape not list": ({"shape": 4}, "bad shape"),
    "float offset": ({"offset": 64.0}, "bad offset"),
    "name not str": ({"name": 7}, "name is not a string"),
}


@pytest.mark.parametrize("entry,message", list(BAD_ENTRIES.values()), ids=list(BAD_ENTRIES))
def test_bad_directory_entry(tmp_path, entry, message):
    path = tmp_path / "bad.cstab"
    document = _valid_document(**{k: (0 if v == "data+4" else v) for k, v in entry.items()})
    section = document["sections"][0]
    if entry.get("offset") == "data+4":
        section["offset"] = _data_offset(document) + 4
    elif "offset" not in entry:
        section["offset"] = _data_offset(document)
    _write_raw(path, document, bytes(64))
    for verify in (True, False):
        with pytest.raises(CacheError, match=message):
            read_tables(path, "test", verify=verify)


def test_overlapping_and_duplicate_sections(tmp_path):
    path = tmp_path / "bad.cstab"
    entry = {"name": "a", "dtype": "<u4", "shape": [2], "offset": 999, "length": 8}
    document = {"kind": "test", "meta": {}, "sections": [entry, dict(entry, name="b")]}
    start = _data_offset(document)
    entry["offset"] = document["sections"][1]["offset"] = start
    _write_raw(path, document, bytes(16))
    with pytest.raises(CacheError, match="sections overlap"):
        read_tables(path, "test")
    document["sections"][1]["name"] = "a"
    document["sections"][1]["offset"] = start + 8
    _write_raw(path, document, bytes(16))
    with pytest.raises(CacheError, match="duplicate section"):
        read_tables(path, "test")


@pytest.mark.parametrize("document,message", [
    (b"{not json", "unreadable directory"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"kind": "test", "meta": [], "sections": []}', "metadata is not a JSON object"),
    (b'{"kind": "test", "meta": {}, "sections": {}}', "section directory is not a list"),
    (b'{"kind": "test", "meta": {}, "sections": [5]}', "entry is not an object"),
    (b"\xff\xfe", "unreadable directory"),
    (b"[" * 100_000 + b"]" * 100_000, "unreadable directory"),
])
def test_bad_directory_document(tmp_path, document, message):
    path = tmp_path / "bad.cstab"
    _write_raw(path, document)
    with pytest.raises(CacheError, match=message):
        read_tables(path, "test")


def test_other_version_and_magic(tmp_path, small_file):
    path = tmp_path / "v.cstab"
    _write_raw(path, {"kind": "test", "meta": {}, "sections": []}, version=FORMAT_VERSION + 1)
    with pytest.raises(CacheError, match="format version"):
        read_tables(path, "test")
    path.write_bytes(b"PK\x03\x04" + small_file.read_bytes()[4:])
    with pytest.raises(CacheError, match="bad magic"):
        read_tables(path, "test")


@settings(max_examples=40, deadline=None)
@given(arrays=st.dictionaries(
    st.text(min_size=1, max_size=8),
    hnp.arrays(st.sampled_from([np.uint8, np.uint16, np.uint32, np.uint64, np.int32, np.float64,
                                np.dtype("S2"), np.bool_]),
               hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5)),
    max_size=5))
def test_round_trip_random(tmp_path_factory, arrays):
    path = tmp_path_factory.mktemp("rt") / "r.cstab"
    write_tables(path, "rand", {"n": len(arrays)}, arrays)
    table = read_tables(path, "rand")
    assert table.meta == {"n": len(arrays)}
    assert set(table.arrays) == set(arrays)
    for name, array in arrays.items():
        loaded = table.arrays[name]
        assert loaded.shape == array.shape and loaded.dtype == array.dtype
        assert np.array_equal(loaded, array, equal_nan=array.dtype.kind == "f")
