"""Byte input for the readers: files or stdin, gzip/bz2/xz/zstd undone transparently.

``open_bytes`` peeks at the decompressed start (``head``) for format detection and then
hands out the whole stream again, in blocks that end at a line break. A compressed stream
that ends early (truncated download, corrupt member) stops the blocks where the damage is,
records the damage on the file's account, and drops the incomplete last line as a
rejected "truncated" record, so a shorter scan is never silent.
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
from collections.abc import Iterator
from typing import BinaryIO

import zstandard

HEAD_BYTES = 1 << 16

_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bz2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)

# Errors the decompressors raise on truncated or corrupt data.
_DAMAGE = (EOFError, OSError, lzma.LZMAError, zstandard.ZstdError, ValueError)


class _CountingReader(io.RawIOBase):
    """Counts the (compressed) bytes read from the underlying file, for progress."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._raw.readinto(buffer) or 0
        self.count += n
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


class ByteSource:
    """A decompressed byte stream with its first bytes already read (``head``)."""

    def __init__(self, path: str | None, raw: BinaryIO, size: int | None):
        self.path = path
        self.size = size
        self.account = None  # set by open_source; receives damage reports
        self._counter = _CountingReader(raw)
        buffered = io.BufferedReader(self._counter, 1 << 20)
        magic = buffered.peek(8)[:8]
        self.compression = next((name for prefix, name in _MAGIC if magic.startswith(prefix)), None)
        self._stream = _decompressor(self.compression, buffered)
        self.head = b""
        self.truncated_tail = b""
        self._done = 0  # decompressed bytes handed out in whole blocks
        self.head, self._head_error = self._read(HEAD_BYTES)

    def _read(self, n: int) -> tuple[bytes, BaseException | None]:
        """Up to ``n`` bytes, and the damage that stopped the read early (if any)."""
        chunks = []
        error = None
        try:
            while n > 0:
                chunk = self._stream.read(n)
                if not chunk:
                    break
                chunks.append(chunk)
                n -= len(chunk)
        except _DAMAGE as exc:
            error = exc
        return b"".join(chunks), error

    def _report(self, exc: BaseException, done: int) -> None:
        message = f"{self.compression or 'input'} stream damaged after {done} decompressed bytes ({exc}); records up to the damage were read"
        if self.account is not None:
            self.account.damage(message)

    def chunks(self, size: int) -> Iterator[bytes]:
        """The decompressed bytes in pieces of about ``size`` (head first); stops at damage."""
        done = len(self.head)
        if self.head:
            yield self.head
        error = self._head_error
        while error is None:
            chunk, error = self._read(size)
            done += len(chunk)
            self._sync_progress()
            if chunk:
                yield chunk
            elif error is None:
                return
        self._report(error, done)

    def blocks(self, size: int) -> Iterator[bytearray]:
        """Blocks of whole lines (each ends with a line break, except maybe the last).

        Each block is a fresh bytearray filled by ``readinto`` (no copy of the bulk data);
        a line longer than ``size`` grows the block instead of being cut.
        """
        rest = self.head
        error = self._head_error
        while True:
            buf = bytearray(len(rest) + size)
            buf[: len(rest)] = rest
            filled = len(rest)
            if error is None:
                view = memoryview(buf)
                try:
                    while filled < len(buf):
                        n = self._stream.readinto(view[filled:])
                        if not n:
                            break
                        filled += n
                except _DAMAGE as exc:
                    error = exc
                finally:
                    view.release()
                self._sync_progress()
            at_end = error is not None or filled < len(buf)
            cut = buf.rfind(b"\n", 0, filled)
            if not at_end and cut < 0:
                rest = bytes(buf[:filled])  # one line longer than the block: read more
                continue
            if at_end:
                if error is not None:
                    self._report(error, self._done + filled)
                    # the line the damage cut through: the reader rejects it with its row number
                    self.truncated_tail = bytes(buf[cut + 1 : filled])
                    filled = cut + 1
                buf = buf[:filled]  # a copy: a failed readinto may still hold a view of the old one
                if buf:
                    yield buf
                return
            rest = bytes(buf[cut + 1 : filled])
            self._done += cut + 1
            del buf[cut + 1 :]
            yield buf

    def read_all(self) -> bytes:
        return b"".join(self.chunks(1 << 22))

    def raw_stream(self) -> io.RawIOBase:
        """The whole decompressed stream (head included) as a file object."""
        return _ChunkStream(self.chunks(1 << 20))

    def _sync_progress(self) -> None:
        if self.account is not None:
            self.account.bytes_done = self._counter.count

    def close(self) -> None:
        self._sync_progress()
        try:
            self._stream.close()
        except _DAMAGE:
            pass


class _RefillingReader(io.RawIOBase):
    """A raw reader over blocks that ``_refill`` produces (b"" at the end)."""

    def __init__(self):
        self._pending = b""
        self._offset = 0

    def readable(self) -> bool:
        return True

    def _refill(self) -> bytes:
        raise NotImplementedError

    def readinto(self, buffer) -> int:
        if not self._pending:
            self._pending = self._refill()
            if not self._pending:
                return 0
        n = min(len(buffer), len(self._pending) - self._offset)
        buffer[:n] = self._pending[self._offset : self._offset + n]
        self._offset += n
        if self._offset == len(self._pending):
            self._pending, self._offset = b"", 0
        return n


class _ChunkStream(_RefillingReader):
    def __init__(self, chunks: Iterator[bytes]):
        super().__init__()
        self._chunks = chunks

    def _refill(self) -> bytes:
        for chunk in self._chunks:
            if chunk:
                return bytes(chunk)
        return b""


def _decompressor(compression: str | None, stream: BinaryIO) -> BinaryIO:
    if compression == "gzip":
        return gzip.GzipFile(fileobj=stream, mode="rb")
    if compression == "bz2":
        return bz2.BZ2File(stream, mode="rb")
    if compression == "xz":
        return lzma.LZMAFile(stream, mode="rb")
    if compression == "zstd":
        return io.BufferedReader(_ZstdFrames(stream), 1 << 20)
    return stream


class _ZstdFrames(_RefillingReader):
    """zstd frames one after another; a stream that ends inside a frame raises EOFError
    (zstandard's stream reader ends quietly there, which would hide a truncated file)."""

    def __init__(self, raw: BinaryIO):
        super().__init__()
        self._raw = raw
        self._frame = zstandard.ZstdDecompressor().decompressobj()
        self._in_frame = False

    def _refill(self) -> bytes:
        while True:
            chunk = self._raw.read(1 << 20)
            if not chunk:
                if self._in_frame:
                    raise EOFError("zstd stream ended inside a frame")
                return b""
            parts = []
            while chunk:
                self._in_frame = True
                parts.append(self._frame.decompress(chunk))
                if not self._frame.eof:
                    break
                chunk = self._frame.unused_data
                self._frame = zstandard.ZstdDecompressor().decompressobj()
                self._in_frame = False
            data = b"".join(parts)
            if data:
                return data


def open_bytes(path: str | os.PathLike, stdin: BinaryIO) -> ByteSource:
    """Open a file (or "-" for ``stdin``) as a decompressed ByteSource."""
    if str(path) == "-":
        return ByteSource(None, stdin, None)
    path = os.fspath(path)
    raw = open(path, "rb")  # noqa: SIM115 - closed by ByteSource.close
    try:
        size = os.fstat(raw.fileno()).st_size
    except OSError:
        size = None
    return ByteSource(path, raw, size)
