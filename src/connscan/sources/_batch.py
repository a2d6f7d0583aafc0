"""Column conversions shared by the readers: text columns -> the contract batch."""
from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connscan import _native
from connscan.engine import _chunk_buffers
from connscan.sources import BATCH_SCHEMA, SourceAccount

# IANA protocol numbers worth a name; others stay numbers ("99").
PROTO_NAMES = {1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp", 51: "ah", 58: "icmp6", 132: "sctp"}
_PROTO_ALIASES = {"ipv6-icmp": "icmp6", "icmpv6": "icmp6", "icmp6": "icmp6"}

UNSET = ("", "-", "(empty)")

START_TYPE = pa.timestamp("us", tz="UTC")


def proto_name(text: str) -> str:
    """Lower-case protocol name; numbers become names where we have one."""
    text = text.strip().lower()
    if text in UNSET:
        return ""
    if text.isdigit():
        return PROTO_NAMES.get(int(text), str(int(text)))
    return _PROTO_ALIASES.get(text, text)


def normalise_proto(column: pa.Array) -> pa.Array:
    """Protocol text or numbers -> contract names, via the (small) dictionary of values."""
    if pa.types.is_integer(column.type):
        column = pc.cast(column, pa.string())
    column = column.fill_null("") if column.null_count else column
    named = _letter_names(column)
    if named is not None:
        return named
    encoded = pc.dictionary_encode(column)
    values = encoded.dictionary.to_pylist()
    names = [proto_name(v) for v in values]
    # the common exports need no gather: Zeek's names are already right, nfdump's upper case
    if names == values:
        return column
    if all(v.isascii() for v in values) and names == [v.lower() for v in values]:
        return pc.ascii_lower(column)
    return pa.array(names, pa.string()).take(encoded.indices)


def _letter_names(column) -> pa.Array | None:
    """The column lower-cased when every value is ASCII letters only ("TCP", "udp"): such
    names are already contract names once lower-cased; None when some value is not."""
    if not isinstance(column, pa.Array) or column.type != pa.string() or column.null_count or not len(column):
        return None
    offsets, data, _, _ = _chunk_buffers(column)
    if not len(data):
        return None
    letters, lowered = _native.load("flowparse").lower_letters(offsets, data)
    if not letters:
        return None
    if lowered is None:
        return column
    return pa.Array.from_buffers(pa.string(), len(column), [None, column.buffers()[1], pa.py_buffer(lowered)], offset=column.offset)


def parse_ports(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Port text -> (int32 values with -1 for unset, bool mask of malformed entries)."""
    if column.type == pa.int32() and not column.null_count:
        # int32 without nulls (the native extractor's ports, -1 unset): no copies when in range
        values = column.to_numpy()
        bad = (values < -1) | (values > 65535)
        if not bad.any():
            return values, bad
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        # any width and sign (Parquet ports are often uint16) or float (pandas writes ports
        # with gaps as float64, the gaps NaN): numpy compares without wrapping or casting
        known = column.is_valid().to_numpy(zero_copy_only=False)
        raw = pc.fill_null(column, pa.scalar(0, column.type)).to_numpy(zero_copy_only=False)
        if raw.dtype.kind == "f":
            known &= ~np.isnan(raw)
            whole = (raw == np.floor(raw)) & (raw >= -1) & (raw <= 65535)
        else:
            whole = (raw <= 65535) if raw.dtype.kind == "u" else (raw >= -1) & (raw <= 65535)
        values = np.full(len(raw), -1, np.int32)
        values[known & whole] = raw[known & whole]
        return values, known & ~whole
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
            or pa.types.is_dictionary(column.type)):
        column = column.cast(pa.string())  # booleans, decimals, ...: their text decides
    try:
        ints = pc.cast(column, pa.int32())
        values = ints.fill_null(-1).to_numpy(zero_copy_only=False)
        bad = (values < 0) | (values > 65535)
        if ints.null_count:
            bad &= ~ints.is_null().to_numpy(zero_copy_only=False)
        return np.where(bad, -1, values).astype(np.int32), bad
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    # rare path: unset markers or malformed entries; decide each, still vectorised
    text = pc.utf8_trim_whitespace(column)
    unset = pc.or_(pc.is_in(text, value_set=pa.array(UNSET)), pc.is_null(text)).to_numpy(zero_copy_only=False)
    digits = pc.match_substring_regex(text, r"^[0-9]{1,5}$").fill_null(False)
    values = pc.cast(pc.if_else(digits, text, pa.scalar(None, pa.string())), pa.int32()).fill_null(-1).to_numpy(zero_copy_only=False)
    bad = ~unset & (~digits.to_numpy(zero_copy_only=False) | (values > 65535))
    return np.where(bad | unset, -1, values).astype(np.int32), bad


def epoch_seconds(column: pa.Array) -> pa.Array:
    """Epoch seconds text ("1481764837.536038"); masked ("XXXX...") or unset -> null."""
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        seconds = pc.cast(column, pa.float64())
    else:
        numeric = pc.match_substring_regex(column, r"^[0-9]+(\.[0-9]*)?$")
        seconds = pc.cast(pc.if_else(numeric, column, pa.scalar(None, pa.string())), pa.float64())
    micros = pc.cast(pc.round(pc.multiply(seconds, 1e6)), pa.int64())
    return pc.cast(micros, pa.int64()).cast(START_TYPE)


_MINUTE_US = 60_000_000
_PROBE_SPAN_US = 2 * 24 * 3600 * 1_000_000  # batches spanning longer get the full conversion


def wallclock_to_utc(naive: pa.Array, tz: str) -> pa.Array:
    """Naive wall-clock timestamps of zone ``tz`` -> UTC (DST gaps/overlaps: the earlier)."""
    if tz in ("UTC", "Etc/UTC", "Z"):
        return naive.cast(pa.int64()).cast(START_TYPE)
    offset = _constant_offset(naive, tz)
    if offset is not None:  # one subtraction instead of a zone lookup per row (~60 ns)
        return pc.subtract(naive.cast(pa.int64()), offset).cast(START_TYPE)
    return pc.assume_timezone(naive, tz, ambiguous="earliest", nonexistent="earliest")


def _constant_offset(naive: pa.Array, tz: str) -> int | None:
    """The zone's offset (us) when it is the same for every wall-clock time of the batch's
    range, probed minute by minute (zone transitions are never less than a minute apart);
    None when the range is long or crosses a transition."""
    bounds = pc.min_max(naive.cast(pa.int64()))
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    if low is None or high - low > _PROBE_SPAN_US:
        return None
    probes = np.append(np.arange(low, high, _MINUTE_US, dtype=np.int64), high)
    utc = pc.assume_timezone(pa.array(probes, pa.timestamp("us")), tz, ambiguous="earliest", nonexistent="earliest")
    offsets = probes - utc.cast(pa.int64()).to_numpy()
    return int(offsets[0]) if (offsets == offsets[0]).all() else None


def null_starts(n: int) -> pa.Array:
    return pa.nulls(n, START_TYPE)


def flow_batches(
    account: SourceAccount,
    rows: np.ndarray,
    src: pa.Array,
    dst: pa.Array,
    sport: pa.Array | None,
    dport: pa.Array | None,
    proto: pa.Array | None,
    start: pa.Array | None,
    batch_rows: int,
) -> Iterator[pa.RecordBatch]:
    """Validate ports, reject the malformed rows, and yield contract batches."""
    n = len(rows)
    if n == 0:
        return
    keep = np.ones(n, bool)
    ports = []
    for label, column in (("sport", sport), ("dport", dport)):
        if column is None:
            ports.append(np.full(n, -1, np.int32))
            continue
        values, bad = parse_ports(column)
        if bad.any():
            texts = column.to_pylist()
            for i in np.flatnonzero(bad & keep):
                account.reject(int(rows[i]), f"invalid {label}", f"{label}={texts[i]!r}")
            keep &= ~bad
        ports.append(values)
    proto = normalise_proto(proto) if proto is not None else pa.array([""] * n, pa.string())
    start = start.cast(START_TYPE) if start is not None else null_starts(n)
    columns = [
        address_text(src),
        address_text(dst),
        pa.array(ports[0], pa.int32()),
        pa.array(ports[1], pa.int32()),
        proto,
        start,
        pa.array(rows, pa.int64()),
    ]
    batch = pa.RecordBatch.from_arrays(columns, schema=BATCH_SCHEMA)
    if not keep.all():
        batch = batch.filter(pa.array(keep))
    for offset in range(0, batch.num_rows, batch_rows):
        yield batch.slice(offset, batch_rows)


def batches_from_lists(account, rows, src, dst, sport, dport, proto, start_us, batch_rows):
    """flow_batches over per-record Python lists (the JSON readers); start in epoch us."""
    texts = [pa.array(values, pa.string()) for values in (src, dst, sport, dport, proto)]
    start = pa.array(start_us, pa.int64()).cast(START_TYPE)
    yield from flow_batches(account, np.array(rows, np.int64), *texts, start, batch_rows)


def batches_from_table(account, rows, table, roles, batch_rows, convert_start, prepare=None):
    """flow_batches over the columns of ``table`` that ``roles`` names (src, dst, ...)."""

    def column(role):
        if role not in roles:
            return None
        values = table.column(roles[role])
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        return prepare(values) if prepare is not None else values

    start = column("start")
    yield from flow_batches(
        account, rows, column("src"), column("dst"), column("sport"), column("dport"),
        column("proto"), convert_start(start) if start is not None else None, batch_rows,
    )


# Epoch times over this are milliseconds (any date after 1973), at or below it seconds.
EPOCH_MILLIS_ABOVE = 1e11


def epoch_micros(column: pa.Array) -> pa.Array:
    """Integer epoch microseconds as START_TYPE."""
    return column.cast(pa.int64()).cast(START_TYPE)


def address_text(column: pa.Array) -> pa.Array:
    """An address column as text: text as it is; packed addresses (4 or 16 bytes, as flow
    collectors store them in Parquet) and IPv4 numbers as the addresses they hold (an
    IPv4-mapped IPv6 address as its IPv4 form). A value that is none of these becomes ""
    (an invalid address, rejected downstream)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if pa.types.is_integer(kind):
        if pa.types.is_dictionary(column.type):
            column = column.cast(kind)
        if kind == pa.uint64():  # beyond int64: no IPv4 number anyway
            column = pc.if_else(pc.less_equal(column, pa.scalar(0xFFFFFFFF, kind)), column, pa.scalar(None, kind))
        return _as_string(_ipv4_numbers_text(column.cast(pa.int64())))
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
        encoded = column if pa.types.is_dictionary(column.type) else column.dictionary_encode()
        texts = pa.array([_packed_address(value) for value in encoded.dictionary.to_pylist()], pa.string())
        return _as_string(texts.take(encoded.indices))
    return _as_string(column)


def _ipv4_numbers_text(numbers: pa.Array) -> pa.Array:
    """int64 IPv4 numbers as dotted quads; outside 0..2**32-1: null."""
    inside = pc.and_(pc.greater_equal(numbers, 0), pc.less_equal(numbers, 0xFFFFFFFF))
    numbers = pc.if_else(inside, numbers, pa.scalar(None, pa.int64()))
    octets = [pc.cast(pc.bit_wise_and(pc.shift_right(numbers, shift), 255), pa.string()) for shift in (24, 16, 8, 0)]
    return pc.binary_join_element_wise(*octets, ".")


def _packed_address(value: bytes | None) -> str | None:
    if value is None or len(value) not in (4, 16):
        return None
    address = ipaddress.ip_address(value)
    return str(getattr(address, "ipv4_mapped", None) or address)


def _as_string(column: pa.Array) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.type != pa.string():
        column = column.cast(pa.string())
    return column.fill_null("") if column.null_count else column
