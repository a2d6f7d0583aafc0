"""The row-template renderer (connscan._render_c and its twin _render_py).

Each implementation is checked against references built without it: json.dumps for the
JSON strings, output._iso of a Python datetime for the times, Python's int formatting;
the two implementations are also compared with each other where Python's datetime cannot
serve (years outside 1..9999). Corrupt buffers must give a ValueError, never a crash.
On real flow files the rendered lines equal json.dumps / format_text_line of the Finding
objects.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import SHARED_DATA, impl_fixture

from connscan import _native
from connscan.engine import Engine, _chunk_buffers
from connscan.flows import evaluate_flow_columns, home_engine_for
from connscan.geoip import GeoTable
from connscan.output import (_iso, escape_value, finding_to_dict, format_text_line, json_lines_of_flow_findings,
                             text_lines_of_flow_findings)
from connscan.rules import Evaluator, RuleConfig
from connscan.signatures import SignatureSet
from connscan.sources import ReaderOptions, open_source

render = impl_fixture("render")

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MIN_US = (datetime.min.replace(tzinfo=timezone.utc) - _EPOCH) // timedelta(microseconds=1)
_MAX_US = (datetime.max.replace(tzinfo=timezone.utc) - _EPOCH) // timedelta(microseconds=1)
_DAY_US = 86_400_000_000
# Characters JSON must escape and must not (0x7f, non-ASCII, U+2028, an emoji); the text
# format's escapes (": ", a final ":", control, format, private-use, unassigned characters).
_TEXT = st.text(alphabet=st.sampled_from(['a', 'Z', '0', ' ', ':', '"', '\\', '/', '\n', '\r', '\t', '\b', '\f',
                                          '\x00', '\x01', '\x1f', '\x7f', 'é', '\u2028', '\x85', '😀', '\xa0', '\xad',
                                          '\u200b', '\ud7ff', '\ue000', '\ufffd', '\U000e0001', '\U0010ffff']),
                max_size=12) | st.text(max_size=6)
_MICROS = st.one_of(
    st.integers(_MIN_US, _MAX_US),
    st.integers(-2 * _DAY_US, 2 * _DAY_US),  # around 1970
    st.integers(-3, 3).map(lambda k: k * 1_000_000),  # whole seconds: no fraction
    st.sampled_from([_MIN_US, _MIN_US + 1, _MAX_US, _MAX_US - 999_999, 0, -1, 1, 999_999, -999_999, -1_000_001,
                     951_782_400_000_000, 946_684_799_999_999, 253_402_214_400_000_000]),
)


def _json_string(value: str) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def _iso_reference(micros: int) -> bytes:
    return b'"' + _iso(_EPOCH + timedelta(microseconds=micros)).encode() + b'"'


def _text_segment(module, prefix: bytes, array: pa.Array, kind=None) -> tuple:
    return (module.JSON_TEXT if kind is None else kind, prefix, *_chunk_buffers(array))


@st.composite
def rows(draw):
    """Columns of n rows: texts (with nulls, in a sliced Arrow array), numbers, times."""
    n = draw(st.integers(0, 25))
    skip = draw(st.integers(0, 5))  # rows before the slice: the array's offset
    texts = draw(st.lists(st.none() | _TEXT, min_size=n + skip, max_size=n + skip))
    wide = draw(st.booleans())
    array = pa.array(texts, pa.large_string() if wide else pa.string()).slice(skip)
    numbers = draw(st.lists(st.integers(-2**63, 2**63 - 1) | st.integers(-3, 100), min_size=n, max_size=n))
    micros = draw(st.lists(_MICROS, min_size=n, max_size=n))
    valid = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    pieces = draw(st.lists(_TEXT, min_size=1, max_size=4))
    index = draw(st.lists(st.integers(0, len(pieces) - 1), min_size=n, max_size=n))
    return n, texts[skip:], array, numbers, micros, valid, pieces, index


@settings(max_examples=300, deadline=None)
@given(data=rows())
def test_lines_equal_the_reference(data):
    n, texts, array, numbers, micros, valid, pieces, index = data
    expected = b"".join(
        b"{" + pieces[k].encode()
        + (b"" if text is None else b',"s":' + _json_string(text))
        + b" S: " + escape_value(text).encode()
        + (b',"n":%d' % number if number >= 0 else b"")
        + b" N: " + (b"%d" % number if number >= 0 else b"-")
        + (b',"t":' + _iso_reference(us) if ok else b"")
        + b"}\n"
        for text, number, us, ok, k in zip(texts, numbers, micros, valid, index))
    for impl in ("c", "py"):
        if impl not in _native.implementations("render"):
            continue
        module = _native.load("render", impl)
        segments = [
            (module.LITERAL, b"{"),
            (module.PIECE, [piece.encode() for piece in pieces], np.array(index, np.int32)),
            _text_segment(module, b',"s":', array),
            _text_segment(module, b" S: ", array, module.THOR_TEXT),
            (module.NUMBER, b',"n":', np.array(numbers, np.int64), None),
            (module.NUMBER, b" N: ", np.array(numbers, np.int64), b"-"),
            (module.TIMESTAMP, b',"t":"', b'"', np.array(micros, np.int64), np.array(valid, bool)),
            (module.LITERAL, b"}"),
        ]
        assert module.render_lines(n, segments) == expected, impl


def test_every_ascii_character_escapes_like_json_dumps(render):
    values = [chr(c) for c in range(0x80)] + ["\u2028\u2029", "é😀\x7f", 'a"b\\c', ""]
    array = pa.array(values)
    got = render.render_lines(len(values), [_text_segment(render, b"", array)])
    assert got == b"".join(_json_string(value) + b"\n" for value in values)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.binary(max_size=8) | st.text(max_size=4).map(str.encode), min_size=1, max_size=8))
def test_text_escapes_utf8_like_escape_value_and_rejects_the_rest(values):
    offsets = np.cumsum([0] + [len(v) for v in values]).astype(np.int32)
    data = np.frombuffer(b"".join(values), np.uint8)
    try:
        expected = b"".join(b"=" + escape_value(v.decode()).encode() + b"\n" for v in values)
    except UnicodeDecodeError:
        bad = next(i for i, v in enumerate(values) if not _is_utf8(v))
        expected = f"segment 0, row {bad}: invalid UTF-8"
    for impl in _native.implementations("render"):
        module = _native.load("render", impl)
        segments = [(module.THOR_TEXT, b"=", offsets, data, None, 0)]
        if isinstance(expected, str):
            with pytest.raises(ValueError, match=expected):
                module.render_lines(len(values), segments)
        else:
            assert module.render_lines(len(values), segments) == expected, impl


def test_text_escapes_the_field_separator_like_escape_value(render):
    values = ["a: b", "a:", ":", "a:b", "::", " : ", "fe80::", "x: :", "é:\u200b: \xa0", "tab\there", "\x7f\x85\U000e0001"]
    array = pa.array(values)
    got = render.render_lines(len(values), [_text_segment(render, b"", array, render.THOR_TEXT)])
    assert got == b"".join(escape_value(value).encode() + b"\n" for value in values)
    assert got.split(b"\n")[:2] == [b"a\\x3a b", b"a\\x3a"]  # by hand, in case escape_value changes


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode()
        return True
    except UnicodeDecodeError:
        return False


@pytest.mark.parametrize("value", [b"\xff", b"\xc0\x80", b"\xe0\x80\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                                   b"\xf5\x80\x80\x80", b"\xe2\x82", b"a\x80", b"\xf0\x9f\x98"])
def test_malformed_utf8_in_text_is_a_value_error(render, value):
    with pytest.raises(ValueError, match="row 1: invalid UTF-8"):
        render.render_lines(2, [(render.THOR_TEXT, b"", np.array([0, 1, 1 + len(value)]), b"a" + value, None, 0)])


def test_times_outside_pythons_years(render):
    year_10000 = _MAX_US + 1
    year_0_end = _MIN_US - 1
    year_0_start = year_0_end - 366 * _DAY_US + 1
    micros = np.array([year_10000, year_0_end, year_0_start, year_0_start - _DAY_US, -2**63, 2**63 - 1], np.int64)
    got = render.render_lines(len(micros), [(render.TIMESTAMP, b'"', b'"', micros, np.ones(len(micros), bool))])
    # By hand: year 0 is a leap year (proleptic Gregorian); int64 microseconds reach year 294247.
    lines = got.split(b"\n")
    assert lines[:4] == [b'"10000-01-01T00:00:00Z"', b'"0000-12-31T23:59:59.999999Z"', b'"0000-01-01T00:00:00Z"',
                         b'"-0001-12-31T00:00:00Z"']
    assert lines[4].startswith(b'"-290308-') and lines[5].startswith(b'"294247-')


@settings(max_examples=100, deadline=None)
@given(micros=st.lists(st.integers(-2**63, 2**63 - 1), min_size=1, max_size=20))
def test_compiled_and_python_times_agree_everywhere(micros):
    if len(_native.implementations("render")) < 2:
        pytest.skip("compiled renderer not built")
    segment = (_native.load("render", "py").TIMESTAMP, b"", b"", np.array(micros, np.int64), np.ones(len(micros), bool))
    assert _native.load("render", "c").render_lines(len(micros), [segment]) == \
        _native.load("render", "py").render_lines(len(micros), [segment])


def test_no_rows_and_no_segments(render):
    assert render.render_lines(0, [(render.LITERAL, b"x")]) == b""
    assert render.render_lines(3, []) == b"\n\n\n"
    assert render.render_lines(2, [(render.LITERAL, b"")]) == b"\n\n"


def _text(render, offsets, data, validity=None, bit_offset=0, n=None):
    offsets = np.array(offsets, np.int32 if max(map(abs, offsets)) < 2**31 else np.int64)
    n = len(offsets) - 1 if n is None else n
    return render.render_lines(n, [(render.JSON_TEXT, b"", offsets, np.frombuffer(data, np.uint8), validity, bit_offset)])


@pytest.mark.parametrize(("offsets", "message"), [
    ([0, 2, 9], r"row 1: string offsets 2\.\.9 outside the data buffer \(4 bytes\)"),
    ([0, 3, 1], r"row 1: string offsets 3\.\.1 outside"),
    ([-1, 2], r"row 0: string offsets -1\.\.2 outside"),
    ([0, 2**62], r"row 0: string offsets 0\.\.4611686018427387904 outside"),
    ([0, 4, 2, 4], r"row 1: string offsets 4\.\.2 outside"),
])
def test_corrupt_offsets_are_a_value_error(render, offsets, message):
    with pytest.raises(ValueError, match=message):
        _text(render, offsets, b"abcd")


def test_offsets_of_null_rows_are_checked_too(render):
    with pytest.raises(ValueError, match="row 1: string offsets"):
        _text(render, [0, 1, 99], b"abcd", validity=np.array([0b01], np.uint8))


def test_wrong_shapes_are_a_value_error(render):
    with pytest.raises(ValueError, match="string offsets of shape"):
        _text(render, [0, 1, 2], b"ab", n=3)
    with pytest.raises(ValueError, match="validity bitmap too short"):
        _text(render, [0] * 10, b"", validity=np.array([255], np.uint8))
    with pytest.raises(ValueError, match="validity bitmap too short"):
        _text(render, [0, 0], b"", validity=np.array([255], np.uint8), bit_offset=8)
    with pytest.raises(ValueError, match=r"segment 1: values of shape \(2,\) for 3 rows"):
        render.render_lines(3, [(render.LITERAL, b"x"), (render.NUMBER, b"", np.zeros(2, np.int64), None)])
    with pytest.raises(ValueError, match="unknown kind 9"):
        render.render_lines(1, [(9, b"")])
    with pytest.raises(ValueError, match="row count must not be negative"):
        render.render_lines(-1, [])


@pytest.mark.parametrize("index", [[0, 2], [-1, 0]])
def test_piece_index_outside_the_pieces_is_a_value_error(render, index):
    with pytest.raises(ValueError, match=r"segment 0, row \d: piece -?\d outside 0\.\.1"):
        render.render_lines(2, [(render.PIECE, [b"a", b"b"], np.array(index))])


def test_sliced_validity_bitmap(render):
    values = [None if i % 3 == 0 else f"v{i}" for i in range(20)]
    array = pa.array(values).slice(7, 9)
    assert array.offset == 7
    got = render.render_lines(len(array), [_text_segment(render, b"=", array)])
    assert got == b"".join((b"" if v is None else b"=" + _json_string(v)) + b"\n" for v in values[7:16])


_REAL_FLOWS = SHARED_DATA / "flows" / "zeek-malware-conn"


@pytest.mark.parametrize("name", ["trickbot-2018-11-conn.log", "locky-malspam-2016-12-16-conn.log"])
def test_real_flows_render_like_the_finding_objects(render, shared_data, name):
    engine = Engine(SignatureSet.load([str(shared_data / "c2/abusech-feodo/ipblocklist-2024-04-04.csv")], strict=False),
                    GeoTable.open())
    evaluator = Evaluator(engine, RuleConfig(all_connections=True), hostname="real")
    home = home_engine_for()
    source = open_source(str(_REAL_FLOWS / name), None, ReaderOptions(tz="UTC", batch_rows=4000), session={})
    rendered = 0
    for batch in source.batches():
        flow = evaluate_flow_columns(batch, evaluator, home, name)
        if flow is None:
            continue
        expected = "".join(json.dumps(finding_to_dict(f), ensure_ascii=False, separators=(",", ":")) + "\n"
                           for f in flow.findings())
        assert json_lines_of_flow_findings(flow, impl=render) == expected
        expected = "".join(format_text_line(f, "tag", "host") + "\n" for f in flow.findings())
        assert text_lines_of_flow_findings(flow, "tag", "host", impl=render) == expected
        rendered += len(flow)
    assert rendered > 1000
