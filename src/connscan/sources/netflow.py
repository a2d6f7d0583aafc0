"""NetFlow v5, v9 and IPFIX export packets -> flow batches.

Inputs are raw export packets, either captured in pcap / pcapng files (Ethernet, raw IP,
Linux cooked or loopback link types; IPv4/IPv6 + UDP) or stored as raw UDP payload files
(one v9 packet per file; v5 packets and IPFIX messages may be concatenated, since their
headers carry their length). Templates are learnt from the stream and scoped by
(exporter, version, source id / observation domain, template id); the exporter is the
capture's source address, and unknown ("") for payload files, so payload files of different
devices read in one run share one template space. A data set whose template has not arrived
yet is buffered until it does, also across the files of one `NetflowSession`; what never
gets a template is rejected as "unknown template", never guessed.

Every length and offset read from a packet is checked before use: a malformed packet, set
or record is counted as rejected with its reason (in the file's account), never a crash.

Row numbers count the data records of a file from 1, in file order, rejected ones included
(a malformed packet or set counts as one record); records decoded late, once their
template arrives, get the next free numbers of the file they were read from. Options
records and records without addresses are not flows: they are counted as skipped.
Captured packets that are not IP/UDP are counted as skipped packets, without row numbers.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connscan.errors import InputError
from connscan.sources import BATCH_SCHEMA
from connscan.sources._batch import PROTO_NAMES

CHUNK_ROWS = 65536
# Bytes of data sets kept while waiting for their templates; beyond it the oldest are rejected.
PENDING_LIMIT = 64 * 1024 * 1024
# No captured frame is this large; a bigger pcap record length means a corrupt file.
MAX_CAPTURE_RECORD = 16 * 1024 * 1024
V5_MAX_COUNT = 30  # Cisco's limit for one v5 packet
MAX_DATAGRAM = 65535  # the largest UDP payload
NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01
UNKNOWN = np.iinfo(np.int64).min  # an unknown time

# Information elements used (IANA IPFIX numbering, shared by NetFlow v9 field types).
IE_PROTO, IE_SPORT, IE_SRC4, IE_DPORT, IE_DST4 = 4, 7, 8, 11, 12
IE_LAST_SWITCHED, IE_FIRST_SWITCHED = 21, 22
IE_ICMP_TYPE_CODE4, IE_ICMP_TYPE_CODE6 = 32, 139  # carried in dport (type * 256 + code), as in v5
IE_SRC6, IE_DST6 = 27, 28
IE_START_SEC, IE_START_MS, IE_START_US, IE_START_NS = 150, 152, 154, 156
IE_START_DELTA_US = 158
IE_SYSTEM_INIT_MS = 160
WANTED = {
    IE_PROTO, IE_SPORT, IE_SRC4, IE_DPORT, IE_DST4, IE_LAST_SWITCHED, IE_FIRST_SWITCHED, IE_SRC6, IE_DST6,
    IE_START_SEC, IE_START_MS, IE_START_US, IE_START_NS, IE_START_DELTA_US, IE_SYSTEM_INIT_MS,
    IE_ICMP_TYPE_CODE4, IE_ICMP_TYPE_CODE6,
}
ADDRESS_LENGTH = {IE_SRC4: 4, IE_DST4: 4, IE_SRC6: 16, IE_DST6: 16}
VARIABLE = 65535

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">",  # microsecond timestamps
    b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">",  # nanosecond timestamps
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"


class MalformedPacket(ValueError):
    """A length or offset in a packet that does not fit; the message is the reject reason."""


def sniff(head: bytes) -> bool:
    """True when ``head`` (the first bytes of a file) looks like a NetFlow/IPFIX input."""
    if head[:4] in PCAP_MAGICS or head[:4] == PCAPNG_MAGIC:
        return True
    if len(head) < 4:
        return False
    version, second = struct.unpack_from(">HH", head)
    if version == 5:  # any count: a bad one is rejected by the reader with its reason
        return second >= 1 and len(head) >= 24
    if version == 9 and len(head) >= 24:
        set_id, set_length = struct.unpack_from(">HH", head, 20)
        return (set_id <= 1 or set_id >= 256) and set_length >= 4
    if version == 10 and len(head) >= 20:
        set_id, set_length = struct.unpack_from(">HH", head, 16)
        return second >= 20 and (set_id in (2, 3) or set_id >= 256) and set_length >= 4
    return False


@dataclass
class FileAccount:
    """Rejected and skipped records of one file, with the interface of
    `connscan.sources.SourceAccount` (whose instance the pipeline passes in instead).
    The rows of the yielded batches are counted by their consumer, not here."""

    name: str
    records_read: int = 0  # rejected + skipped here
    rejected: Counter = field(default_factory=Counter)  # reason -> count
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    rejects: list = field(default_factory=list)  # (row, reason, text)

    def reject(self, row: int, reason: str, text: str = "") -> None:
        self.records_read += 1
        self.rejected[reason] += 1
        self.rejects.append((row, reason, text))

    def skip(self, reason: str, count: int = 1) -> None:
        self.records_read += count
        self.skipped[reason] += count


class _FileCursor:
    """Row numbering and packet count of one file, reporting into its account."""

    def __init__(self, name: str, account):
        self.name = name
        self.account = account
        self.next_row = 1
        self.packets = 0

    def take_rows(self, count: int) -> int:
        first = self.next_row
        self.next_row += count
        return first

    def reject(self, reason: str, text: str) -> None:
        """One rejected record (a malformed packet or set counts as one), with its own row."""
        self.account.reject(self.take_rows(1), reason, text)

    def skip(self, reason: str, count: int = 1, records: bool = True) -> None:
        """Records that are not flows (numbered, as data records) or packets that hold none."""
        if records:
            self.take_rows(count)
        self.account.skip(reason, count)


@dataclass(frozen=True)
class Template:
    """A data or options template: (element id, length, enterprise number) per field."""

    version: int
    template_id: int
    fields: tuple  # ((ie, length, enterprise), ...); length VARIABLE = variable
    options: bool
    record_length: int | None  # None when a field has variable length
    offsets: dict  # ie -> (offset, length) of the wanted standard elements
    problem: str | None  # why its records cannot be decoded, if so
    bulk: bool  # flow records decodable later, many sets at once (see NetflowSession._defer)


def make_template(version: int, template_id: int, fields: list, options: bool) -> Template:
    offsets: dict = {}
    fixed = all(length != VARIABLE for _, length, _ in fields)
    position = 0
    problem = None
    for ie, length, enterprise in fields:
        if enterprise == 0 and ie in WANTED and ie not in offsets and length != 0:  # 0 bytes: absent
            offsets[ie] = (position, length)
            wanted_length = ADDRESS_LENGTH.get(ie)
            if length == VARIABLE or length > 8 and wanted_length is None:
                problem = problem or f"element {ie} has unusable length {length}"
            elif wanted_length is not None and length != wanted_length:
                problem = problem or f"address element {ie} has length {length}, not {wanted_length}"
        if length != VARIABLE:
            position += length
    record_length = position if fixed else None
    if fixed and record_length == 0:
        problem = "records of length 0"
    addresses = {IE_SRC4, IE_DST4} <= offsets.keys() or {IE_SRC6, IE_DST6} <= offsets.keys()
    bulk = fixed and not options and not problem and addresses
    return Template(version, template_id, tuple(fields), options, record_length, offsets, problem, bulk)


# The 48-byte v5 record as a template (element 0 marks padding).
V5_TEMPLATE = make_template(5, 0, [
    (IE_SRC4, 4, 0), (IE_DST4, 4, 0), (15, 4, 0), (10, 2, 0), (14, 2, 0), (2, 4, 0), (1, 4, 0),
    (IE_FIRST_SWITCHED, 4, 0), (IE_LAST_SWITCHED, 4, 0), (IE_SPORT, 2, 0), (IE_DPORT, 2, 0), (0, 1, 0),
    (6, 1, 0), (IE_PROTO, 1, 0), (5, 1, 0), (16, 2, 0), (17, 2, 0), (9, 1, 0), (13, 1, 0), (0, 2, 0),
], options=False)


@dataclass
class PacketContext:
    """Header values that data records are interpreted with."""

    version: int
    exporter: str
    domain: int  # v9 source id / IPFIX observation domain
    export_us: int | np.ndarray  # export time, microseconds since 1970 (per record in bulk)
    uptime_ms: int | np.ndarray | None  # sysUptime at export, v5/v9 only
    init_ms: np.ndarray | None = None  # bulk: the IPFIX exporter's init time when each set came


@dataclass
class BulkSets:
    """Data sets of one template and file whose decoding waits for the next batch."""

    template: Template
    exporter: str
    domain: int
    bodies: list = field(default_factory=list)  # whole records only
    counts: list = field(default_factory=list)
    export_us: list = field(default_factory=list)
    uptime_ms: list = field(default_factory=list)
    init_ms: list = field(default_factory=list)
    first_rows: list = field(default_factory=list)


@dataclass
class PendingSet:
    account: _FileCursor
    context: PacketContext
    data: bytes


@dataclass
class Columns:
    """Decoded flow records of one file, kept as numpy arrays until a batch is built."""

    parts: list = field(default_factory=list)
    rows: int = 0

    def add(self, part: dict) -> None:
        self.parts.append(part)
        self.rows += len(part["row"])


class NetflowSession:
    """Template state for a run over several files, read in the order given."""

    def __init__(self, chunk_rows: int = CHUNK_ROWS):
        self.chunk_rows = chunk_rows
        self.templates: dict = {}  # (exporter, version, domain, id) -> Template
        self.pending: dict = {}  # same key -> [PendingSet]
        self.pending_bytes = 0
        self.system_init_ms: dict = {}  # (exporter, domain) -> IPFIX systemInitTimeMilliseconds
        self.files: dict[str, _FileCursor] = {}
        self._columns: dict[str, Columns] = {}
        self._bulk: dict[str, dict] = {}  # file -> {id(template): BulkSets}
        self._growing: set[str] = set()  # files with records not yet in a batch
        self._order: dict[str, int] = {}  # file -> position in the run

    def account(self, source_name: str):
        return self.files[source_name].account

    # ---- reading -------------------------------------------------------------------

    def read(self, source, source_name: str | None = None, account=None) -> Iterator[tuple[str, pa.RecordBatch]]:
        """Decode one file (path or binary stream); yields (source name, batch) pairs.

        Batches of an earlier file can appear here: its data sets decoded now that this file
        brought their template. Call `finish()` after the last file. ``account`` receives the
        rejects and skips (default: a new `FileAccount`, see `account(name)`).
        """
        if source_name is None:
            source_name = str(source)
        cursor = self.files.get(source_name)
        if cursor is None:
            cursor = self.files[source_name] = _FileCursor(source_name, account or FileAccount(source_name))
        self._columns.setdefault(source_name, Columns())
        self._bulk.setdefault(source_name, {})
        self._order.setdefault(source_name, len(self._order))
        stream, close = _open(source, source_name)
        try:
            for exporter, payload in _payloads(stream, cursor):
                self._packet(payload, exporter, cursor)
                if cursor.packets % 64 == 0:  # a batch may exceed chunk_rows by 64 packets' records
                    yield from self._batches(self.chunk_rows)
        finally:
            if close:
                stream.close()
        yield from self._batches(1)

    def finish(self, source_name: str | None = None) -> None:
        """Reject the data sets (of one file, or all) whose template has not arrived."""
        for key in list(self.pending):
            exporter, version, domain, template_id = key
            waiting = []
            for pending in self.pending[key]:
                if source_name is not None and pending.account.name != source_name:
                    waiting.append(pending)
                    continue
                self.pending_bytes -= len(pending.data)
                pending.account.reject(
                    "unknown template",
                    f"v{version} template {template_id} of exporter {exporter or '-'} domain {domain} "
                    f"never seen ({len(pending.data)} bytes of records)",
                )
            if waiting:
                self.pending[key] = waiting
            else:
                del self.pending[key]

    # ---- packets -------------------------------------------------------------------

    def _packet(self, payload: bytes, exporter: str, account: _FileCursor) -> None:
        account.packets += 1
        if len(payload) < 4:
            account.reject("malformed packet", f"packet {account.packets}: {len(payload)} bytes")
            return
        version = struct.unpack_from(">H", payload)[0]
        try:
            if version == 5:
                self._v5(payload, account)
            elif version == 9:
                self._v9(payload, exporter, account)
            elif version == 10:
                self._ipfix(payload, exporter, account)
            else:
                raise MalformedPacket(f"not a NetFlow v5/v9/IPFIX packet (version {version})")
        except MalformedPacket as exc:
            account.reject("malformed packet", f"packet {account.packets}: {exc}")

    def _v5(self, payload: bytes, account: _FileCursor) -> None:
        if len(payload) < 24:
            raise MalformedPacket(f"v5 header needs 24 bytes, packet has {len(payload)}")
        _, count, uptime, secs, nsecs = struct.unpack_from(">HHIII", payload)
        if not 1 <= count <= V5_MAX_COUNT:
            raise MalformedPacket(f"v5 record count {count} outside 1..{V5_MAX_COUNT}")
        if len(payload) < 24 + 48 * count:
            raise MalformedPacket(f"v5 packet of {len(payload)} bytes too short for {count} records")
        context = PacketContext(5, "", 0, secs * 1_000_000 + nsecs // 1000, uptime)
        self._decode(V5_TEMPLATE, payload[24 : 24 + 48 * count], context, account)

    def _v9(self, payload: bytes, exporter: str, account: _FileCursor) -> None:
        if len(payload) < 20:
            raise MalformedPacket(f"v9 header needs 20 bytes, packet has {len(payload)}")
        _, _, uptime, secs, _, source_id = struct.unpack_from(">HHIIII", payload)
        context = PacketContext(9, exporter, source_id, secs * 1_000_000, uptime)
        for set_id, body in _sets(payload, 20, len(payload), "flowset"):
            if set_id == 0:
                self._templates(body, context, account, options=False)
            elif set_id == 1:
                self._v9_options_templates(body, context, account)
            elif set_id >= 256:
                self._data(set_id, body, context, account)
            else:
                account.skip("sets with a reserved id", records=False)

    def _ipfix(self, payload: bytes, exporter: str, account: _FileCursor) -> None:
        if len(payload) < 16:
            raise MalformedPacket(f"IPFIX header needs 16 bytes, message has {len(payload)}")
        _, length, export_time, _, domain = struct.unpack_from(">HHIII", payload)
        if not 16 <= length <= len(payload):
            raise MalformedPacket(f"IPFIX message length {length} outside 16..{len(payload)}")
        context = PacketContext(10, exporter, domain, export_time * 1_000_000, None)
        for set_id, body in _sets(payload, 16, length, "set"):
            if set_id == 2:
                self._templates(body, context, account, options=False)
            elif set_id == 3:
                self._templates(body, context, account, options=True)
            elif set_id >= 256:
                self._data(set_id, body, context, account)
            else:
                account.skip("sets with a reserved id", records=False)

    # ---- templates -----------------------------------------------------------------

    def _templates(self, body: bytes, context: PacketContext, account: _FileCursor, options: bool) -> None:
        """v9 template flowsets and IPFIX (options) template sets."""
        position = 0
        while len(body) - position >= 4:
            template_id, count = struct.unpack_from(">HH", body, position)
            if template_id == 0 and count == 0:
                break  # padding at the end of the set
            position += 4
            if template_id < 256:
                raise MalformedPacket(f"template id {template_id} below 256")
            if count == 0:  # IPFIX template withdrawal
                self.templates.pop(self._key(context, template_id), None)
                continue
            if options:
                if len(body) - position < 2:
                    raise MalformedPacket(f"options template {template_id}: header overruns the set")
                scope_count = struct.unpack_from(">H", body, position)[0]
                position += 2
                if scope_count > count:
                    raise MalformedPacket(f"options template {template_id}: {scope_count} scope fields of {count}")
            fields = []
            for _ in range(count):
                if len(body) - position < 4:
                    raise MalformedPacket(f"template {template_id}: {count} fields overrun the set")
                ie, length = struct.unpack_from(">HH", body, position)
                position += 4
                enterprise = 0
                if context.version == 10 and ie & 0x8000:
                    if len(body) - position < 4:
                        raise MalformedPacket(f"template {template_id}: enterprise number overruns the set")
                    enterprise = struct.unpack_from(">I", body, position)[0]
                    position += 4
                    ie &= 0x7FFF
                fields.append((ie, length, enterprise))
            self._learn(make_template(context.version, template_id, fields, options), context, account)

    def _v9_options_templates(self, body: bytes, context: PacketContext, account: _FileCursor) -> None:
        position = 0
        while len(body) - position >= 6:
            template_id, scope_length, option_length = struct.unpack_from(">HHH", body, position)
            if template_id == 0 and scope_length == 0 and option_length == 0:
                break  # padding
            position += 6
            if template_id < 256:
                raise MalformedPacket(f"options template id {template_id} below 256")
            if scope_length % 4 or option_length % 4 or len(body) - position < scope_length + option_length:
                raise MalformedPacket(
                    f"options template {template_id}: scope/option lengths {scope_length}/{option_length} "
                    f"do not fit the {len(body)}-byte flowset"
                )
            fields = []
            for _ in range((scope_length + option_length) // 4):
                ie, length = struct.unpack_from(">HH", body, position)
                position += 4
                # Scope field types live in their own number space: keep them out of WANTED.
                fields.append((ie, length, 0 if len(fields) >= scope_length // 4 else -1))
            self._learn(make_template(9, template_id, fields, True), context, account)

    def _learn(self, template: Template, context: PacketContext, account: _FileCursor) -> None:
        key = self._key(context, template.template_id)
        self.templates[key] = template
        waiting = self.pending.pop(key, [])
        for pending in waiting:
            self.pending_bytes -= len(pending.data)
            self._decode(template, pending.data, pending.context, pending.account)

    def _key(self, context: PacketContext, template_id: int) -> tuple:
        return (context.exporter, context.version, context.domain, template_id)

    # ---- data ----------------------------------------------------------------------

    def _data(self, set_id: int, body: bytes, context: PacketContext, account: _FileCursor) -> None:
        key = self._key(context, set_id)
        template = self.templates.get(key)
        if template is not None:
            self._decode(template, body, context, account)
            return
        self.pending.setdefault(key, []).append(PendingSet(account, context, bytes(body)))
        self.pending_bytes += len(body)
        while self.pending_bytes > PENDING_LIMIT:
            self._drop_oldest_pending()

    def _drop_oldest_pending(self) -> None:
        key = next(iter(self.pending))
        pending = self.pending[key].pop(0)
        if not self.pending[key]:
            del self.pending[key]
        self.pending_bytes -= len(pending.data)
        pending.account.reject(
            "unknown template",
            f"v{key[1]} template {key[3]} not seen before {PENDING_LIMIT} bytes of data were buffered",
        )

    def _decode(self, template: Template, body: bytes, context: PacketContext, account: _FileCursor) -> None:
        if template.problem:
            account.reject("bad template", f"template {template.template_id}: {template.problem}")
            return
        if template.record_length is None:
            try:
                values, count = _variable_records(template, body)
            except MalformedPacket as exc:
                account.reject("malformed record", f"template {template.template_id}: {exc}")
                return
            if count:
                self._records(template, values, count, context, account)
            return
        count = len(body) // template.record_length
        if count and template.bulk:
            self._defer(template, body, context, account)
        elif count:
            records = np.frombuffer(body, np.uint8, count * template.record_length).reshape(
                count, template.record_length)
            values = {ie: _uint(records, offset, length) if length <= 8 else records[:, offset : offset + length]
                      for ie, (offset, length) in template.offsets.items()}
            self._records(template, values, count, context, account)
        rest = body[count * template.record_length :]
        # Padding is zeros (v9 pads to 4 bytes, and only SHOULD use zeros); more is a cut record.
        if any(rest) and (len(rest) >= 4 or template.version == 10):
            account.reject("malformed record",
                           f"template {template.template_id}: {len(rest)} bytes after the last whole record")

    def _records(self, template: Template, values: dict, count: int, context: PacketContext,
                 account: _FileCursor) -> None:
        if template.options:
            init = values.get(IE_SYSTEM_INIT_MS)
            if init is not None and len(init):
                self.system_init_ms[(context.exporter, context.domain)] = int(init[-1])
            account.skip("options record", count)
            return
        self._emit_records(template, values, count, context, account)

    def _defer(self, template: Template, body: bytes, context: PacketContext, account: _FileCursor) -> None:
        """Keep a set of flow records for decoding with the others of its template (numpy per
        batch, not per packet); its rows are numbered now, in file order."""
        count = len(body) // template.record_length
        sets = self._bulk[account.name].get(id(template))
        if sets is None:
            sets = self._bulk[account.name][id(template)] = BulkSets(template, context.exporter, context.domain)
        sets.bodies.append(body[: count * template.record_length])
        sets.counts.append(count)
        sets.export_us.append(context.export_us)
        sets.uptime_ms.append(context.uptime_ms)
        sets.init_ms.append(self.system_init_ms.get((context.exporter, context.domain), UNKNOWN))
        sets.first_rows.append(account.take_rows(count))
        self._columns[account.name].rows += count
        self._growing.add(account.name)

    def _decode_deferred(self, name: str) -> None:
        for sets in self._bulk[name].values():
            template = sets.template
            counts = np.array(sets.counts, np.int64)
            total = int(counts.sum())
            records = np.frombuffer(b"".join(sets.bodies), np.uint8).reshape(total, template.record_length)
            values = {ie: _uint(records, offset, length) if length <= 8 else records[:, offset : offset + length]
                      for ie, (offset, length) in template.offsets.items()}
            uptime = None if template.version == 10 else np.repeat(np.array(sets.uptime_ms, np.int64), counts)
            context = PacketContext(template.version, sets.exporter, sets.domain,
                                    np.repeat(np.array(sets.export_us, np.int64), counts), uptime,
                                    np.repeat(np.array(sets.init_ms, np.int64), counts))
            set_start = np.repeat(np.cumsum(counts) - counts, counts)
            rows = np.repeat(np.array(sets.first_rows, np.int64), counts) + np.arange(total) - set_start
            self._columns[name].rows -= total
            self._emit_records(template, values, total, context, self.files[name], rows)
        self._bulk[name].clear()

    def _emit_records(self, template, values, count, context, account, rows=None) -> None:
        has4 = IE_SRC4 in values and IE_DST4 in values
        has6 = IE_SRC6 in values and IE_DST6 in values
        if not (has4 or has6):
            account.skip("records without addresses", count)
            return
        kind = np.full(count, 4 if has4 else 6, np.uint8)
        src4 = values[IE_SRC4].astype(np.uint32) if has4 else None
        dst4 = values[IE_DST4].astype(np.uint32) if has4 else None
        src6 = _as_bytes16(values[IE_SRC6]) if has6 else None
        dst6 = _as_bytes16(values[IE_DST6]) if has6 else None
        if has4 and has6:  # dual templates fill the unused family with zeros
            empty4 = (src4 == 0) & (dst4 == 0)
            kind[empty4 & ((src6 != bytes(16)) | (dst6 != bytes(16)))] = 6

        def column(ie, limit, default=-1, dtype=np.int32):
            """An element's values; absent -> default, out of range (a wide field) -> -1."""
            if ie not in values:
                return np.full(count, default, dtype)
            return np.where(values[ie] > limit, -1, values[ie].astype(np.int64)).astype(dtype)

        sport, dport = column(IE_SPORT, 65535), column(IE_DPORT, 65535)
        for ie in (IE_ICMP_TYPE_CODE4, IE_ICMP_TYPE_CODE6):
            if ie in values and IE_DPORT not in values:
                sport, dport = column(IE_SPORT, 65535, 0), column(ie, 65535)
        self._emit(account, rows, kind=kind, src4=src4, dst4=dst4, src6=src6, dst6=dst6,
                   sport=sport, dport=dport, proto=column(IE_PROTO, 255, dtype=np.int16),
                   start=self._start_times(values, count, context))

    def _start_times(self, values: dict, count: int, context: PacketContext) -> np.ndarray:
        """Flow start in microseconds since 1970 (int64 min = unknown)."""
        unknown = np.full(count, UNKNOWN, np.int64)
        if IE_START_MS in values:
            return values[IE_START_MS].astype(np.int64) * 1000
        if IE_START_SEC in values:
            return values[IE_START_SEC].astype(np.int64) * 1_000_000
        for ie, fraction_scale in ((IE_START_US, 1_000_000), (IE_START_NS, 1_000_000)):
            if ie in values:  # NTP 64-bit: seconds since 1900, 2**-32 fractions
                ntp = values[ie].astype(np.uint64)
                seconds = (ntp >> np.uint64(32)).astype(np.int64) - NTP_EPOCH_OFFSET
                fraction = ((ntp & np.uint64(0xFFFFFFFF)) * np.uint64(fraction_scale)) >> np.uint64(32)
                return seconds * 1_000_000 + fraction.astype(np.int64)
        if IE_FIRST_SWITCHED in values:
            first = values[IE_FIRST_SWITCHED].astype(np.int64)
            if context.uptime_ms is not None:  # v5/v9: relative to the header's sysUptime
                delta = _uptime_delta(context.uptime_ms, first, values.get(IE_LAST_SWITCHED))
                return context.export_us - delta * 1000
            init = values.get(IE_SYSTEM_INIT_MS)
            if init is None:
                init = context.init_ms
            if init is None:
                init = self.system_init_ms.get((context.exporter, context.domain), UNKNOWN)
            init = np.asarray(init, np.int64)  # IPFIX uptimes count from the exporter's init time
            first = first - _wrap(first, values.get(IE_LAST_SWITCHED))
            return np.where(init == UNKNOWN, unknown, (init + first) * 1000)
        if IE_START_DELTA_US in values:
            return context.export_us - values[IE_START_DELTA_US].astype(np.int64)
        return unknown

    def _emit(self, account: _FileCursor, rows: np.ndarray | None, **part) -> None:
        if rows is None:
            first = account.take_rows(len(part["kind"]))
            rows = np.arange(first, first + len(part["kind"]), dtype=np.int64)
        part["row"] = rows
        self._columns[account.name].add(part)
        self._growing.add(account.name)

    # ---- batches -------------------------------------------------------------------

    def _batches(self, minimum_rows: int) -> Iterator[tuple[str, pa.RecordBatch]]:
        for name in sorted(self._growing, key=self._order.get):  # files in reading order
            columns = self._columns[name]
            if columns.rows >= minimum_rows:
                self._decode_deferred(name)
                yield name, _build_batch(columns.parts)
                columns.parts, columns.rows = [], 0
                self._growing.discard(name)


SOURCE_METADATA_KEY = b"connscan.file"


class NetflowReader:
    """Iterator of the flow batches of one file; its rejects and skips go to ``account``.

    With a ``session`` dict shared by the files of one run, templates carry over to later
    files. When the run sets ``session["netflow_deferred"] = True`` it also promises to call
    `finish_session(session)` after the last file and to route batches whose schema metadata
    names another file (`SOURCE_METADATA_KEY`): data sets of an earlier file that waited for
    a template found in this one. Otherwise what still waits at the end of a file is rejected
    there as "unknown template".
    """

    format = "netflow"

    def __init__(self, source, source_name=None, *, account=None, session: dict | None = None,
                 chunk_rows: int = CHUNK_ROWS):
        self.source_name = source_name if source_name is not None else str(source)
        self.deferred = bool(session is not None and session.get("netflow_deferred"))
        if session is None:
            self.session = NetflowSession(chunk_rows)
        else:
            self.session = session.setdefault("netflow", NetflowSession(chunk_rows))
        self.account = account if account is not None else FileAccount(self.source_name)
        self._batches = self._run(source)

    def _run(self, source) -> Iterator[pa.RecordBatch]:
        for name, batch in self.session.read(source, self.source_name, self.account):
            if name != self.source_name:
                batch = batch.replace_schema_metadata({SOURCE_METADATA_KEY: name.encode()})
            yield batch
        if not self.deferred:
            self.session.finish(self.source_name)

    def __iter__(self):
        return self

    def __next__(self) -> pa.RecordBatch:
        return next(self._batches)


def read_netflow(path_or_stream, source_name: str | None = None, *, account=None, session: dict | None = None,
                 chunk_rows: int = CHUNK_ROWS) -> NetflowReader:
    """The flow batches of one NetFlow/IPFIX file (see `NetflowReader`)."""
    return NetflowReader(path_or_stream, source_name, account=account, session=session, chunk_rows=chunk_rows)


def finish_session(session: dict) -> None:
    """After the last file of a deferred run: reject the data sets that never got a template."""
    netflow = session.get("netflow")
    if netflow is not None:
        netflow.finish()


# ---- helpers ------------------------------------------------------------------------


def _open(source, source_name: str) -> tuple[BinaryIO, bool]:
    if isinstance(source, (str, os.PathLike)):
        try:
            return open(source, "rb"), True
        except OSError as exc:
            raise InputError(f"{source_name}: cannot open: {exc.strerror}") from exc
    return source, False


def _payloads(stream: BinaryIO, account: _FileCursor) -> Iterator[tuple[str, bytes]]:
    """(exporter, UDP payload) of each export packet in a pcap, pcapng or raw payload file."""
    head = stream.read(4)
    if head in PCAP_MAGICS:
        yield from _pcap(stream, head, account)
    elif head == PCAPNG_MAGIC:
        yield from _pcapng(stream, head, account)
    else:
        yield from _raw(stream, head, account)


def _raw(stream: BinaryIO, head: bytes, account: _FileCursor) -> Iterator[tuple[str, bytes]]:
    """Raw payload files: v5 packets and IPFIX messages are self-delimiting (read one at a
    time); anything else is one datagram, the rest of the file."""
    start = head
    while True:
        start += stream.read(4 - len(start))
        if not start:
            return
        version, second = struct.unpack(">HH", start) if len(start) == 4 else (None, 0)
        if version == 5 and 1 <= second <= V5_MAX_COUNT:
            size = 24 + 48 * second
        elif version == 10 and second >= 16:
            size = second
        else:
            packet = start + stream.read(MAX_DATAGRAM + 1 - len(start))
            if not any(packet):
                return  # zero padding after the last packet
            if len(packet) > MAX_DATAGRAM:
                account.reject("malformed packet", f"packet {account.packets + 1}: more than {MAX_DATAGRAM} bytes "
                               "without a v5/IPFIX length (one v9 packet per file)")
                return
            yield "", packet
            return
        yield "", start + stream.read(size - len(start))  # a short read is rejected as truncated
        start = b""


def _pcap(stream: BinaryIO, magic: bytes, account: _FileCursor) -> Iterator[tuple[str, bytes]]:
    order = PCAP_MAGICS[magic]
    header = stream.read(20)
    if len(header) < 20:
        account.reject("malformed capture", "pcap file header truncated")
        return
    linktype = struct.unpack_from(order + "I", header, 16)[0] & 0x0FFFFFFF
    record = struct.Struct(order + "IIII")
    number = 0
    while True:
        raw = stream.read(16)
        if not raw:
            return
        number += 1
        if len(raw) < 16:
            account.reject("malformed capture", f"pcap record {number}: header truncated")
            return
        _, _, captured, _ = record.unpack(raw)
        if captured > MAX_CAPTURE_RECORD:
            account.reject("malformed capture", f"pcap record {number}: length {captured} (corrupt file)")
            return
        frame = stream.read(captured)
        if len(frame) < captured:
            account.reject("malformed capture", f"pcap record {number}: truncated ({len(frame)} of {captured} bytes)")
            return
        yield from _udp_payload(frame, linktype, order, account, number)


def _pcapng(stream: BinaryIO, magic: bytes, account: _FileCursor) -> Iterator[tuple[str, bytes]]:
    order = "<"
    linktypes: list[int] = []
    number = 0
    first = True
    while True:
        block_head = magic if first else stream.read(4)
        first = False
        if not block_head:
            return
        rest = stream.read(8 if block_head == PCAPNG_MAGIC else 4)
        if len(block_head) + len(rest) < (12 if block_head == PCAPNG_MAGIC else 8):
            account.reject("malformed capture", "pcapng block header truncated")
            return
        if block_head == PCAPNG_MAGIC:  # section header: learn the byte order first
            order = "<" if rest[4:8] == b"\x4d\x3c\x2b\x1a" else ">" if rest[4:8] == b"\x1a\x2b\x3c\x4d" else ""
            if not order:
                account.reject("malformed capture", "pcapng section header: bad byte-order magic")
                return
            block_type, length = struct.unpack(order + "II", block_head + rest[:4])
            body_length = length - 16
            prefix = rest[4:8]
            linktypes = []
        else:
            block_type, length = struct.unpack(order + "II", block_head + rest)
            body_length = length - 12
            prefix = b""
        if length % 4 or body_length < 0 or length > MAX_CAPTURE_RECORD:
            account.reject("malformed capture", f"pcapng block of type {block_type}: length {length}")
            return
        body = stream.read(body_length + 4)  # body and the trailing length copy
        if len(body) < body_length + 4:
            account.reject("malformed capture", f"pcapng block of type {block_type}: truncated")
            return
        body = prefix + body[:body_length]
        if block_type == 1 and len(body) >= 2:  # interface description
            linktypes.append(struct.unpack_from(order + "H", body)[0])
        elif block_type in (3, 6):
            number += 1
            if block_type == 6:
                if len(body) < 20:
                    account.reject("malformed capture", f"pcapng packet {number}: block too short")
                    continue
                interface, _, _, captured, _ = struct.unpack_from(order + "IIIII", body)
                frame_start = 20
            else:
                interface, frame_start = 0, 4
                if len(body) < 4:
                    account.reject("malformed capture", f"pcapng packet {number}: block too short")
                    continue
                captured = min(struct.unpack_from(order + "I", body)[0], len(body) - 4)
            if interface >= len(linktypes) or frame_start + captured > len(body):
                account.reject("malformed capture", f"pcapng packet {number}: bad interface or length")
                continue
            yield from _udp_payload(body[frame_start : frame_start + captured], linktypes[interface], order,
                                    account, number)


def _udp_payload(frame: bytes, linktype: int, order: str, account: _FileCursor, number: int):
    """(exporter address, UDP payload) of one captured frame; other packets are skipped."""
    position = 0
    ethertype = None
    if linktype == 1:  # Ethernet, with any 802.1Q / 802.1ad tags
        position, ethertype = 14, struct.unpack_from(">H", frame, 12)[0] if len(frame) >= 14 else None
        while ethertype in (0x8100, 0x88A8) and len(frame) >= position + 4:
            ethertype = struct.unpack_from(">H", frame, position + 2)[0]
            position += 4
    elif linktype in (12, 14, 101, 228, 229):  # raw IP
        ethertype = 0
    elif linktype == 113:  # Linux cooked capture
        position, ethertype = 16, struct.unpack_from(">H", frame, 14)[0] if len(frame) >= 16 else None
    elif linktype == 276:  # Linux cooked capture v2
        position, ethertype = 20, struct.unpack_from(">H", frame, 0)[0] if len(frame) >= 20 else None
    elif linktype in (0, 108):  # BSD loopback: address family in host or network order
        position, ethertype = 4, 0
    else:
        account.skip("packets of an unsupported link type", records=False)
        return
    if ethertype is None:
        account.reject("malformed capture", f"packet {number}: frame of {len(frame)} bytes too short")
        return
    if ethertype not in (0, 0x0800, 0x86DD):
        account.skip("non-IP packets", records=False)
        return
    try:
        exporter, payload = _ip_udp(frame, position)
    except MalformedPacket as exc:
        account.reject("malformed capture", f"packet {number}: {exc}")
        return
    if payload is None:
        account.skip("non-UDP packets", records=False)
        return
    if payload[:2] not in (b"\x00\x05", b"\x00\x09", b"\x00\x0a"):  # other traffic in the capture
        account.skip("non-NetFlow UDP packets", records=False)
        return
    yield exporter, payload


def _ip_udp(frame: bytes, position: int) -> tuple[str, bytes | None]:
    if len(frame) < position + 1:
        raise MalformedPacket("no IP header")
    version = frame[position] >> 4
    if version == 4:
        if len(frame) < position + 20:
            raise MalformedPacket("IPv4 header truncated")
        header_length = (frame[position] & 0x0F) * 4
        total, fragment, protocol = struct.unpack_from(">H2xHxB", frame, position + 2)
        if header_length < 20 or total < header_length or len(frame) < position + total:
            raise MalformedPacket(f"IPv4 lengths (header {header_length}, total {total}) do not fit the frame")
        if protocol != 17:
            return "", None
        if fragment & 0x3FFF:
            raise MalformedPacket("fragmented IPv4 datagram (not reassembled)")
        exporter = socket.inet_ntop(socket.AF_INET, frame[position + 12 : position + 16])
        udp, end = position + header_length, position + total
    elif version == 6:
        if len(frame) < position + 40:
            raise MalformedPacket("IPv6 header truncated")
        payload_length, next_header = struct.unpack_from(">HB", frame, position + 4)
        end = position + 40 + payload_length
        if len(frame) < end:
            raise MalformedPacket(f"IPv6 payload length {payload_length} exceeds the frame")
        exporter = socket.inet_ntop(socket.AF_INET6, frame[position + 8 : position + 24])
        udp = position + 40
        while next_header in (0, 43, 60):  # hop-by-hop, routing, destination options
            if end < udp + 8:
                raise MalformedPacket("IPv6 extension header truncated")
            next_header, extension_length = frame[udp], frame[udp + 1]
            udp += 8 + extension_length * 8
        if next_header == 44:
            raise MalformedPacket("fragmented IPv6 datagram (not reassembled)")
        if next_header != 17:
            return "", None
    else:
        raise MalformedPacket(f"IP version {version}")
    if end < udp + 8:
        raise MalformedPacket("UDP header truncated")
    udp_length = struct.unpack_from(">H", frame, udp + 4)[0]
    if udp_length < 8 or udp + udp_length > end:
        raise MalformedPacket(f"UDP length {udp_length} does not fit the IP datagram")
    return exporter, frame[udp + 8 : udp + udp_length]


def _sets(payload: bytes, position: int, end: int, what: str) -> Iterator[tuple[int, bytes]]:
    """(set id, body) of the flowsets / sets of a v9 packet or IPFIX message."""
    while position < end:
        if end - position < 4:
            if any(payload[position:end]):
                raise MalformedPacket(f"{end - position} stray bytes after the last {what}")
            return
        set_id, length = struct.unpack_from(">HH", payload, position)
        if length == 0 and set_id == 0 and not any(payload[position:end]):
            return  # zero padding at the end of the packet
        if length < 4 or position + length > end:
            raise MalformedPacket(f"{what} {set_id} length {length} does not fit ({end - position} bytes left)")
        yield set_id, payload[position + 4 : position + length]
        position += length


def _variable_records(template: Template, body: bytes) -> tuple[dict, int]:
    """The wanted elements of each record of a template with variable-length fields, and the count."""
    wanted = {ie for ie, _, enterprise in template.fields if enterprise == 0 and ie in WANTED}
    columns: dict = {ie: [] for ie in wanted}
    position = 0
    minimum = sum(length if length != VARIABLE else 1 for _, length, _ in template.fields)
    count = 0
    while len(body) - position >= minimum:  # what is left over is padding
        count += 1
        seen = set()
        for ie, length, enterprise in template.fields:
            if length == VARIABLE:
                if position >= len(body):
                    raise MalformedPacket("variable-length field overruns the set")
                length = body[position]
                position += 1
                if length == 255:
                    if len(body) - position < 2:
                        raise MalformedPacket("variable-length field overruns the set")
                    length = struct.unpack_from(">H", body, position)[0]
                    position += 2
            if len(body) - position < length:
                raise MalformedPacket("record overruns the set")
            if ie in wanted and ie not in seen and enterprise == 0:
                seen.add(ie)
                value = body[position : position + length]
                columns[ie].append(value if ADDRESS_LENGTH.get(ie) == 16 else int.from_bytes(value, "big"))
            position += length
    values = {
        ie: (np.array(found, dtype="S16").view(np.uint8).reshape(-1, 16) if ADDRESS_LENGTH.get(ie) == 16
             else np.array(found, dtype=np.uint64))
        for ie, found in columns.items()
    }
    return values, count


def _uint(records: np.ndarray, offset: int, length: int) -> np.ndarray:
    """Big-endian unsigned integers of ``length`` (1..8) bytes at ``offset`` of each record."""
    value = np.zeros(len(records), np.uint64)
    for i in range(length):
        value = (value << np.uint64(8)) | records[:, offset + i].astype(np.uint64)
    return value


def _uptime_delta(uptime_ms: int, first_ms: np.ndarray, last_ms: np.ndarray | None) -> np.ndarray:
    """Milliseconds from a flow's first packet to the export (sysUptime values, 32-bit ms).

    A first packet later than the last one means the uptime wrapped between them, so the first
    belongs to the previous 2**32 ms epoch (the rule nfdump applies too).
    """
    return np.asarray(uptime_ms, np.int64) - first_ms.astype(np.int64) + _wrap(first_ms, last_ms)


def _wrap(first_ms: np.ndarray, last_ms: np.ndarray | None) -> np.ndarray | int:
    """2**32 where a flow's first uptime is later than its last (the uptime wrapped), else 0."""
    if last_ms is None:
        return 0
    return np.where(first_ms > last_ms, np.int64(1 << 32), np.int64(0))


def _as_bytes16(value: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(value, dtype=np.uint8).view("S16").reshape(-1)


def _v4_text(addresses: np.ndarray) -> pa.Array:
    octets = [pc.cast(pa.array((addresses >> shift) & 0xFF, pa.uint8()), pa.string()) for shift in (24, 16, 8, 0)]
    return pc.binary_join_element_wise(*octets, pa.scalar("."))


def _addresses(kind: np.ndarray, v4: np.ndarray, v6: np.ndarray) -> pa.Array:
    """Address text: dotted quads vectorised in Arrow, IPv6 rows (rarer) through ipaddress."""
    text = _v4_text(v4)
    is6 = kind == 6
    if not is6.any():
        return text
    v6_text = [str(ipaddress.IPv6Address(bytes(v6[i]).ljust(16, b"\0"))) for i in np.flatnonzero(is6)]
    return pc.replace_with_mask(text, pa.array(is6), pa.array(v6_text, pa.string()))


def _concat(parts: list, name: str, empty) -> np.ndarray:
    return np.concatenate([part[name] if part[name] is not None else np.zeros(len(part["kind"]), empty)
                           for part in parts])


def _build_batch(parts: list) -> pa.RecordBatch:
    kind = np.concatenate([part["kind"] for part in parts])
    proto, codes = np.unique(np.concatenate([part["proto"] for part in parts]), return_inverse=True)
    names = pa.array([PROTO_NAMES.get(p, str(p)) if p >= 0 else "" for p in proto.tolist()], pa.string())
    start = np.concatenate([part["start"] for part in parts])
    return pa.RecordBatch.from_arrays(
        [
            _addresses(kind, _concat(parts, "src4", np.uint32), _concat(parts, "src6", "S16")),
            _addresses(kind, _concat(parts, "dst4", np.uint32), _concat(parts, "dst6", "S16")),
            pa.array(np.concatenate([part["sport"] for part in parts]), pa.int32()),
            pa.array(np.concatenate([part["dport"] for part in parts]), pa.int32()),
            pc.take(names, pa.array(codes.reshape(-1).astype(np.int32))),
            pa.array(start, pa.timestamp("us", tz="UTC"), mask=start == UNKNOWN),
            pa.array(np.concatenate([part["row"] for part in parts]), pa.int64()),
        ],
        schema=BATCH_SCHEMA,
    )


__all__ = [
    "SOURCE_METADATA_KEY",
    "FileAccount",
    "NetflowReader",
    "NetflowSession",
    "finish_session",
    "read_netflow",
    "sniff",
]
