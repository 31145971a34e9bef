"""Parallel dumps (``pg_dump -Fd -j N``) streamed out file by file, and staged restores (``pg_restore -j N``).

pg_dump's directory format writes one file per table from N worker processes, into a directory it
creates; it cannot write to a pipe. The agent gives it a staging directory and moves each file into
the repository as soon as pg_dump has closed it, compressing it on the way (a file is closed when no
process of pg_dump's session holds it open any more, read from ``/proc``). The staging directory
therefore holds the tables being written at that moment, not the database; when uploads fall behind,
pg_dump is paused (SIGSTOP to its session) until staging is below ``STAGING_LIMIT`` again, so a slow
store costs time, never a full-size copy. Each file becomes one object (``dump-<file>``) with its own
SHA-256 in the manifest.

A parallel restore needs a seekable archive: every object is decompressed into a staging directory
while its stored bytes are hashed, and ``pg_restore -j N`` runs only once every object matched the
manifest, so a damaged object is found before anything is restored.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import structlog

from opsagent.backup import codec
from opsagent.backup.errors import BackupError
from opsagent.backup.manifest import Manifest, ObjectInfo
from opsagent.backup.pgproc import (
    CompressionPlan,
    Hashed,
    ProcHook,
    Progress,
    RestoreResult,
    kill,
    pg_restore_command,
    stream_codec,
    tail,
)
from opsagent.backup.repository import CHUNK, Repository

log = structlog.get_logger("opsagent.backup")

PREFIX = "dump-"  # object name of a directory-format file: flat, so every store and replication keep it as is
POLL_SECONDS = 0.25  # how often finished files are looked for (pg_dump's exit ends a wait at once)
STAGING_LIMIT = 512 * 1024 * 1024  # staged bytes above which pg_dump waits for the uploads


def _open_names(session: int, folder: Path) -> set[str]:
    """Names of files in ``folder`` that a process of pg_dump's session (process group) holds open."""
    prefix = f"{folder}/"
    names: set[str] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read()
            if int(stat[stat.rindex(b")") + 2:].split()[2]) != session:  # fields after "(comm)": state ppid pgrp
                continue
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                target = os.readlink(fd.path)
                if target.startswith(prefix):
                    names.add(target[len(prefix):])
        except (OSError, ValueError, IndexError):
            continue  # the process ended while it was read: it holds nothing open any more
    return names


def _staged_bytes(folder: Path) -> int:
    total = 0
    for entry in os.scandir(folder):
        try:
            total += entry.stat().st_size
        except FileNotFoundError:
            continue
    return total


class _Uploader:
    """Moves finished files from staging into the repository, compressed, and remembers their objects."""

    def __init__(self, repo: Repository, backup_id: str, chosen: CompressionPlan, progress: Progress | None) -> None:
        self.repo = repo
        self.backup_id = backup_id
        self.chosen = chosen
        self.progress = progress
        self.objects: list[ObjectInfo] = []
        self.done: set[str] = set()
        self.read = 0

    def upload(self, path: Path) -> None:
        name = PREFIX + path.name
        writer = self.repo.writer(self.backup_id, name)
        try:
            squeeze = codec.compressor(self.chosen.codec, self.chosen.level)
            with open(path, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    if out := squeeze.compress(chunk):
                        writer.write(out)
                    self.read += len(chunk)
                    if self.progress:
                        self.progress(self.read)
            if rest := squeeze.flush():
                writer.write(rest)
            info = writer.commit()
        except BaseException:
            writer.abort()
            raise
        self.objects.append(replace(info, name=name))
        self.done.add(path.name)
        path.unlink()


def dump_directory(base: list[str], env: dict[str, str], jobs: int, repo: Repository, backup_id: str,
                   chosen: CompressionPlan, *, progress: Progress | None, on_proc: ProcHook | None,
                   target: str) -> tuple[ObjectInfo, ...]:
    """Run ``pg_dump -Fd -j jobs`` into a staging directory and stream each finished file into ``repo``."""
    uploader = _Uploader(repo, backup_id, chosen, progress)
    peak = 0
    with tempfile.TemporaryDirectory(prefix="opsagent-dump-") as staging, tempfile.TemporaryFile() as errfile:
        folder = Path(staging) / "dump"
        args = [base[0], "--format=directory", f"--jobs={jobs}", *base[1:], f"--file={folder}"]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=errfile, env=env, start_new_session=True)
        if on_proc:
            on_proc(proc)
        paused = False
        try:
            while True:
                code = proc.poll()
                present = set(os.listdir(folder)) if folder.is_dir() else set()
                busy = _open_names(proc.pid, folder) if code is None else set()  # listed before: closed if not open
                if code not in (None, 0):
                    raise BackupError(f"pg_dump of {target} failed (exit {code}): {tail(errfile)}")
                staged = _staged_bytes(folder) if folder.is_dir() else 0
                peak = max(peak, staged)
                if code is None and not paused and staged > STAGING_LIMIT:
                    os.killpg(proc.pid, signal.SIGSTOP)  # uploads are behind: pg_dump waits, staging stays small
                    paused = True
                for name in sorted(present - busy - uploader.done):
                    uploader.upload(folder / name)
                    if paused and _staged_bytes(folder) <= STAGING_LIMIT:
                        os.killpg(proc.pid, signal.SIGCONT)
                        paused = False
                if paused:  # everything closed is uploaded and staging is still full: the open files are large
                    os.killpg(proc.pid, signal.SIGCONT)
                    paused = False
                if code == 0:
                    break
                try:
                    proc.wait(POLL_SECONDS)
                except subprocess.TimeoutExpired:
                    pass
        except BaseException:
            kill(proc)
            raise
        finally:
            if on_proc:
                on_proc(None)
    if not any(o.name == PREFIX + "toc.dat" for o in uploader.objects):
        raise BackupError(f"pg_dump of {target} exited without writing toc.dat; the dump is incomplete")
    log.info("backup_directory_dumped", target=target, backup_id=backup_id, files=len(uploader.objects),
             jobs=jobs, staging_peak_bytes=peak)
    return tuple(uploader.objects)


def _stage(chunks: Iterator[bytes], method: str, path: Path,
           progress: Progress | None) -> tuple[str, int, str | None]:
    """Decompress one stored object into ``path``; its stored bytes' SHA-256 and size, and a decode error."""
    stored = Hashed(chunks, progress)
    error = None
    with open(path, "wb") as fh:
        try:
            for out in codec.decompress(method, stored):
                fh.write(out)
        except codec.CorruptStream as exc:
            error = str(exc)
            stored.drain()  # the whole stored object's hash says whether the store damaged it
    return stored.digest.hexdigest(), stored.size, error


def _stage_all(repo: Repository, backup_id: str, places: list[tuple[ObjectInfo, Path]], method: str,
               progress: Progress | None, *, workers: int) -> list[tuple[str, int, str | None]]:
    """Stage every object, ``workers`` at a time (decompressing and hashing release the GIL): in manifest order.

    Measured on a 1.15 GB database: staging its six objects one after another took 2.0 s before
    ``pg_restore -j 2`` (6.8 s) could start.
    """
    lock = threading.Lock()
    parts = [0] * len(places)

    def part(i: int) -> Progress | None:
        if progress is None:
            return None

        def report(done: int) -> None:
            with lock:
                parts[i] = done
                total = sum(parts)
            progress(total)
        return report

    def stage_one(i: int) -> tuple[str, int, str | None]:
        obj, path = places[i]  # opened by the worker: a directory dump has a file per table, not all open at once
        return _stage(repo.read(backup_id, obj.name), method, path, part(i))

    workers = max(1, min(workers, len(places)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="restore-stage") as pool:
        return list(pool.map(stage_one, range(len(places))))


def restore_staged(repo: Repository, manifest: Manifest, dsn: str, *, jobs: int, dbname: str | None,
                   tool_override: str | None, progress: Progress | None, on_proc: ProcHook | None) -> RestoreResult:
    """Stage every object (checked against the manifest), then ``pg_restore -j jobs`` from the staged copy."""
    method = stream_codec(manifest)
    with tempfile.TemporaryDirectory(prefix="opsagent-restore-") as staging:
        if manifest.dump_format == "directory":
            archive = Path(staging) / "dump"
            archive.mkdir()
            places = [(obj, archive / obj.name.removeprefix(PREFIX)) for obj in manifest.objects]
        else:
            archive = Path(staging) / "data.dump"
            places = [(manifest.objects[0], archive)]
        staged = _stage_all(repo, manifest.id, places, method, progress, workers=jobs)
        first: tuple[str, int] | None = None
        for (obj, _path), (sha256, size, error) in zip(places, staged, strict=True):
            first = first or (sha256, size)
            if sha256 != obj.sha256 or size != obj.size:
                problem = (f"object {obj.name} has SHA-256 {sha256[:16]}… ({size} bytes), the manifest recorded "
                           f"{obj.sha256[:16]}… ({obj.size} bytes)")
                return RestoreResult(sha256="", size=first[1], pg_restore_error=problem)
            if error:
                return RestoreResult(sha256=first[0], size=first[1], pg_restore_error=f"object {obj.name}: {error}")
        assert first is not None
        with pg_restore_command(dsn, dbname, tool_override, [f"--jobs={jobs}", str(archive)]) as (args, env), \
                tempfile.TemporaryFile() as errfile:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errfile,
                                    env=env, start_new_session=True)
            if on_proc:
                on_proc(proc)
            try:
                code = proc.wait()
            except BaseException:
                kill(proc)
                raise
            finally:
                if on_proc:
                    on_proc(None)
            error = None if code == 0 else f"pg_restore failed (exit {code}): {tail(errfile)}"
    return RestoreResult(sha256=first[0], size=first[1], pg_restore_error=error)
