"""Streaming compression of backup objects, one interface for every method the user can choose.

pg_dump's built-in gzip (level 6) is where a dump's CPU goes: the agent asks pg_dump for an
uncompressed archive (``-Z0``) and compresses the stream itself, by default with zstd on several
threads (python-zstandard), which is several times cheaper for the same size. ``backup.compression``
picks the method; the manifest records it and restore, verify and drills read it back from there.

Every method writes its own integrity check into the stream (zstd and lz4 content checksums, gzip's
CRC32), and the decompressor insists on a complete stream: a truncated or damaged object is a
``CorruptStream`` naming the method, never a silently short archive handed to pg_restore.
Decompression is fed in small slices so a highly compressible object cannot balloon memory.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from opsagent.backup.errors import BackupError
from opsagent.checks.host import cgroup_cpu_limit
from opsagent.config.models import COMPRESSION_LEVELS

METHODS = ("zstd", "gzip", "lz4", "none")
DEFAULT = "zstd"
# Levels when backup.compression_level is not set: zstd 3 and lz4 0 are the libraries' defaults;
# gzip 6 is pg_dump's own, so a gzip backup costs what it did before.
DEFAULT_LEVEL = {"zstd": 3, "gzip": 6, "lz4": 0, "none": 0}
LEVELS = COMPRESSION_LEVELS  # the accepted ranges live with the config key that names them
SUFFIX = {"zstd": ".zst", "gzip": ".gz", "lz4": ".lz4", "none": ""}
# zstd's multi-threaded job size. Its default (4x the window, 8 MiB at level 3) held ~24 MiB of input and
# output in the compressor before the first byte came out (measured on 126 MB of table text: first output
# after 24 MiB of input, against 3 MiB with 1 MiB jobs, for the same size within 0.3 %).
ZSTD_JOB = 1024 * 1024
_SLICE = 64 * 1024  # decompressor input per call: bounds the output of one call on very compressible data


class CorruptStream(BackupError):
    """A stored object does not decompress: damaged or truncated, with the method that was expected."""

    def __init__(self, method: str, detail: str) -> None:
        super().__init__(f"the {method} stream is damaged or truncated ({detail})")
        self.method = method


class Compressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...
    def flush_block(self) -> bytes:
        """Everything compressed so far, the stream staying open (for a pause in the input)."""
        ...
    def flush(self) -> bytes:
        """The end of the stream."""
        ...


def level_for(method: str, level: int | None) -> int:
    """The level a backup uses: the configured one, else the method's default."""
    return DEFAULT_LEVEL[method] if level is None else level


CGROUP_ROOT = Path("/sys/fs/cgroup")


def cpus() -> float:
    """CPUs this process may use: the CPUs it may run on, capped by a cgroup v2 CPU quota (a Fargate task
    of 0.25 vCPU sees two CPUs but gets a quarter of one)."""
    try:
        allowed = float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        allowed = float(os.cpu_count() or 1)
    quota = cgroup_cpu_limit(CGROUP_ROOT)
    return min(allowed, quota) if quota else allowed


def threads() -> int:
    """zstd worker threads: one per usable CPU, at most 4; 0 (compress inline) with less than two CPUs.

    Below two CPUs worker threads only take turns with pg_dump; with more they let compression run
    beside pg_dump instead of slowing it.
    """
    usable = cpus()
    return 0 if usable < 2 else min(int(usable), 4)


class _Identity:
    def compress(self, data: bytes) -> bytes:
        return data

    def flush_block(self) -> bytes:
        return b""

    def flush(self) -> bytes:
        return b""


class _Zstd:
    def __init__(self, level: int) -> None:
        import zstandard

        params = zstandard.ZstdCompressionParameters.from_level(level, threads=threads(), job_size=ZSTD_JOB,
                                                                 write_checksum=1)
        self._obj = zstandard.ZstdCompressor(compression_params=params).compressobj()
        self._block = zstandard.COMPRESSOBJ_FLUSH_BLOCK

    def compress(self, data: bytes) -> bytes:
        return bytes(self._obj.compress(data))

    def flush_block(self) -> bytes:
        return bytes(self._obj.flush(self._block))

    def flush(self) -> bytes:
        return bytes(self._obj.flush())


class _Gzip:
    def __init__(self, level: int) -> None:
        self._obj = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: a gzip member, with its CRC32

    def compress(self, data: bytes) -> bytes:
        return self._obj.compress(data)

    def flush_block(self) -> bytes:
        return self._obj.flush(zlib.Z_SYNC_FLUSH)

    def flush(self) -> bytes:
        return self._obj.flush()


class _Lz4:
    def __init__(self, level: int) -> None:
        import lz4.frame

        # auto_flush: every call's input comes out whole (the input arrives in 1 MiB chunks, 16 lz4 blocks)
        self._obj = lz4.frame.LZ4FrameCompressor(compression_level=level, content_checksum=True, auto_flush=True)
        self._started = False

    def _begin(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return bytes(self._obj.begin())

    def compress(self, data: bytes) -> bytes:
        return self._begin() + bytes(self._obj.compress(data))

    def flush_block(self) -> bytes:
        return self._begin()

    def flush(self) -> bytes:
        return self._begin() + bytes(self._obj.flush())


def compressor(method: str, level: int | None = None) -> Compressor:
    """A streaming compressor by name: ``compress`` each chunk in order, then ``flush`` once."""
    lvl = level_for(method, level)
    if method == "zstd":
        return _Zstd(lvl)
    if method == "gzip":
        return _Gzip(lvl)
    if method == "lz4":
        return _Lz4(lvl)
    if method == "none":
        return _Identity()
    raise ValueError(f"unknown compression {method!r}; expected one of {', '.join(METHODS)}")


def _decoder(method: str) -> Any:
    if method == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj()
    if method == "gzip":
        return zlib.decompressobj(31)
    if method == "lz4":
        import lz4.frame

        return lz4.frame.LZ4FrameDecompressor()
    raise ValueError(f"unknown compression {method!r}; expected one of {', '.join(METHODS)}")


def _library_errors(method: str) -> tuple[type[BaseException], ...]:
    if method == "zstd":
        import zstandard

        return (zstandard.ZstdError,)
    if method == "lz4":
        return (RuntimeError,)  # lz4.frame reports a damaged frame as RuntimeError
    return (zlib.error,)


def decompress(method: str, chunks: Iterable[bytes]) -> Iterator[bytes]:
    """A streaming decompressor by name: the original bytes of ``chunks``; raises ``CorruptStream`` at the
    first damaged byte, at trailing bytes after the stream's end, or when the stream stops short."""
    if method == "none":
        yield from chunks
        return
    decoder = _decoder(method)
    errors = _library_errors(method)
    ended = False
    for chunk in chunks:
        view = memoryview(chunk)
        for start in range(0, len(view), _SLICE):
            piece = view[start:start + _SLICE]
            if ended:
                raise CorruptStream(method, "bytes follow the end of the stream")
            try:
                out = decoder.decompress(bytes(piece))
            except errors as exc:
                raise CorruptStream(method, str(exc) or type(exc).__name__) from exc
            if out:
                yield bytes(out)
            ended = bool(decoder.eof)
            if ended and decoder.unused_data:
                raise CorruptStream(method, "bytes follow the end of the stream")
    if not ended:
        raise CorruptStream(method, "the stream ends before its last frame")
