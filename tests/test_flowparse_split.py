"""The native field extractor's word-at-a-time paths: field lengths around 8 and 16 bytes,
bytes at the edges of printable ASCII, fields that end at the end of the block.

Expected values come from plain ``bytes.split`` (independent of both implementations) and
from the pure-Python twin.
"""
from __future__ import annotations

import ctypes
from datetime import datetime, timedelta
import mmap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connscan import _native
from support import impl_fixture

flowparse = impl_fixture("flowparse")

EDGE_BYTES = [0x00, 0x09, 0x0A, 0x0D, 0x1F, 0x20, 0x7E, 0x7F, 0x80, 0xFF]


@st.composite
def fields(draw):
    """Printable runs of 0..40 bytes (across the 8- and 16-byte word steps), sometimes with
    one byte from the edges of printable ASCII inside."""
    text = bytearray(draw(st.binary(min_size=0, max_size=40).map(lambda b: bytes(0x21 + x % 94 for x in b))))
    if draw(st.booleans()):
        text.insert(draw(st.integers(0, len(text))), draw(st.sampled_from(EDGE_BYTES)))
    return bytes(text)


def _expected_text(block: bytes, delimiter: int, ncols: int, wanted):
    """Status and wanted fields per non-blank line, by bytes.split (text columns only)."""
    status, columns = [], [[] for _ in wanted]
    for raw in block.split(b"\n"):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line:
            continue
        parts = line.split(bytes([delimiter]))
        if len(parts) != ncols:
            status.append(2)
        elif any(not all(0x20 <= b <= 0x7E for b in parts[c]) for c in wanted):
            status.append(3)
        else:
            status.append(0)
            for j, c in enumerate(wanted):
                columns[j].append(parts[c])
    return status, columns


def _texts(column):
    offsets, data = column
    data = bytes(data)
    return [data[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


lines = st.lists(st.lists(fields(), min_size=1, max_size=5), max_size=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=lines, ncols=st.integers(1, 5), delimiter=st.sampled_from([ord(","), ord("\t")]), final_newline=st.booleans(), data=st.data())
def test_text_fields_match_bytes_split(flowparse, rows, ncols, delimiter, final_newline, data):
    block = b"\n".join(bytes([delimiter]).join(r) for r in rows) + (b"\n" if final_newline else b"")
    wanted = data.draw(st.lists(st.integers(0, ncols - 1), unique=True, min_size=1, max_size=ncols))
    status, starts, ends, nfields, columns, _ = flowparse.split_fields(block, delimiter, ncols, np.array(wanted, np.int32))
    exp_status, exp_columns = _expected_text(block, delimiter, ncols, wanted)
    assert status.tolist() == exp_status
    assert [_texts(c) for c in columns] == exp_columns
    assert [block[s:e].count(bytes([delimiter])) + 1 for s, e in zip(starts, ends)] == nfields.tolist()


port_or_time = st.one_of(
    fields(),
    st.integers(0, 70000).map(lambda v: str(v).encode()),
    st.sampled_from([b"80\x80", b"\xff", b"8\x7f", b"2024-01-01 00:00:0\x01", b"1700000000.\x1f", b"1700000000.123456"]),
)


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.lists(port_or_time, min_size=4, max_size=4), max_size=12), kinds=st.lists(st.integers(0, 4), min_size=4, max_size=4))
def test_native_equals_twin_on_typed_fields_with_edge_bytes(rows, kinds):
    if len(_native.implementations("flowparse")) < 2:
        pytest.skip("compiled extractor not built")
    block = b"".join(b",".join(r) + b"\n" for r in rows)
    wanted = np.array([3, 0, 2], np.int32)  # column 1 is never wanted
    c, py = (_native.load("flowparse", impl=i).split_fields(block, ord(","), 4, wanted, -1, kinds[:3]) for i in ("c", "py"))
    for a, b in zip(c[:4] + c[5:], py[:4] + py[5:]):
        assert a.tolist() == b.tolist()
    for a, b in zip(c[4], py[4]):
        if isinstance(a, tuple):
            assert [x.tolist() for x in a] == [x.tolist() for x in b]
        else:
            assert a.tolist() == b.tolist()


def test_status_precedence_of_bad_bytes_over_bad_port(flowparse):
    # a bad port before a non-text address: the bytes win; a bad port alone is a bad value
    block = b"99999,1.2.3.\xff\n99999,1.2.3.4\n80,1.2.3.4\n8\x800,1.2.3.4\n"
    status, _, _, _, columns, bad_slot = flowparse.split_fields(block, ord(","), 2, np.array([0, 1], np.int32), -1, [1, 0])
    assert status.tolist() == [3, 4, 0, 3]
    assert bad_slot.tolist() == [-1, 0, -1, -1]
    assert columns[0].tolist() == [80] and _texts(columns[1]) == [b"1.2.3.4"]


def _guarded(block: bytes):
    """``block`` placed right before an unreadable page: reading past its end would crash."""
    page = mmap.PAGESIZE
    size = (len(block) // page + 2) * page
    area = mmap.mmap(-1, size)
    anchor = ctypes.c_char.from_buffer(area)
    base = ctypes.addressof(anchor)
    del anchor  # releases the export, so that the area can be closed
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mprotect(ctypes.c_void_p(base + size - page), ctypes.c_size_t(page), 0) != 0:
        pytest.skip("mprotect unavailable")
    start = size - page - len(block)
    area[start : size - page] = block
    return area, memoryview(area)[start : size - page]


@pytest.mark.parametrize("tail", [b"a", b"abcdefg", b"abcdefgh", b"abcdefghijklmno", b"abcdefghijklmnopq", b"1.2.3.4,\xff"])
def test_no_read_past_the_end_of_the_block(flowparse, tail):
    block = b"x,1,2024-01-01 00:00:00\nyy,22,2024-01-01 00:00:01\n" + tail.replace(b",", b"") + b",443," + tail
    area, view = _guarded(block)
    try:
        status, _, _, _, columns, _ = flowparse.split_fields(view, ord(","), 3, np.array([0, 1, 2], np.int32), -1, [0, 1, 0])
        assert status.tolist() == _expected_text(block, ord(","), 3, [0, 1, 2])[0]
        assert _texts(columns[2])[-1:] == ([tail] if status[-1] == 0 else [b"2024-01-01 00:00:01"])
    finally:
        view.release()
        area.close()


@st.composite
def clock_runs(draw):
    """(text, microseconds or None) of wall-clock times in runs that share their minute (the
    extractor reuses the minute it parsed last); now and then one byte is changed, which the
    twin (datetime) then judges."""
    moment = draw(st.datetimes(datetime(1900, 1, 1), datetime(2200, 1, 1)))
    out = []
    for step in draw(st.lists(st.integers(0, 150), min_size=1, max_size=60)):
        moment += timedelta(seconds=step, microseconds=draw(st.integers(0, 999_999)))
        shape = draw(st.sampled_from(["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S.%f"]))
        text = moment.strftime(shape).encode()
        exact = moment if "%f" in shape else moment.replace(microsecond=0)
        expected = (exact - datetime(1970, 1, 1)) // timedelta(microseconds=1)
        if draw(st.integers(0, 7)) == 0:
            at = draw(st.integers(0, len(text) - 1))
            text = text[:at] + draw(st.sampled_from([b"0", b"3", b"6", b"9", b"X", b"-", b" "])) + text[at + 1:]
            expected = "twin"
        out.append((text, expected))
    return out


@settings(max_examples=200, deadline=None)
@given(runs=clock_runs(), crlf=st.booleans())
def test_wallclock_times_in_runs_of_one_minute(runs, crlf):
    block = b"".join(text + (b"\r\n" if crlf else b"\n") for text, _ in runs)
    results = {}
    for impl in _native.implementations("flowparse"):
        status, _, _, _, columns, _ = _native.load("flowparse", impl=impl).split_fields(block, ord(","), 1, np.array([0], np.int32), -1, [2])
        assert status.tolist() == [0] * len(runs)
        micros, valid = columns[0]
        results[impl] = [int(m) if v else None for m, v in zip(micros.tolist(), valid.tolist())]
    twin = results["py"]
    assert all(result == twin for result in results.values())
    assert [got for got, (_, exp) in zip(twin, runs) if exp != "twin"] == [exp for _, exp in runs if exp != "twin"]
