"""Atomic file writes and content hashes: the one way this package puts a file on disk.

Why: a crash, a ``kill -9`` or a full disk must never leave a half-written output, manifest, report
or checkpoint under its final name, and a rerun must tell the leftovers of its own killed runs from
the user's files. So every file the package writes goes through :func:`write_atomic` (bytes, or a
callable that streams into the file), or, for photos, through :func:`atomic_file`, which
``photos.encode.write_photo`` drives with its encoder and its own read-back check:

1. a new temp file is created next to the target (same folder, so the rename stays on one file
   system) with ``O_EXCL`` under a unique name ``.<first 40 characters of the name>.unlearnable-<8
   hex digits>.tmp`` (:data:`TEMP_PATTERN`): two writers never share one, and a rerun can remove
   the leftovers of a killed run without touching anything else (``photos.outdir.remove_leftovers``);
2. it is written, flushed and fsynced, and its size on disk must equal what was written (a short
   write the operating system did not report is caught here);
3. by default it is read back and checked: the bytes must have the SHA-256 of the data (photos: the
   file must decode, see ``photos.encode``);
4. it is renamed onto the target (``os.replace``), or, when the caller guards against replacing
   files it does not own and nothing is at the target, hard-linked there (``link`` fails if a file
   appeared meanwhile: no-clobber); the folder is then fsynced so that the rename is durable;
5. on any failure the temp file is removed and an existing target is untouched.

Standards: POSIX ``rename(2)`` (atomic replacement within a file system), ``link(2)``, ``fsync(2)``;
SHA-256 as in FIPS 180-4, written as 64 lower-case hex digits.

Deviations: ``verify=False`` skips step 3, for large files that are validated when loaded (the
noise engine's checkpoint: reading it back would double the cost of every round's save). Without
hard links (FAT, some network shares) the no-clobber placement falls back to a rename. Where folders
cannot be opened for fsync (Windows), that step is skipped.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import BinaryIO, Callable, TypeVar

from ..errors import UnlearnableError

# Our temp files: ``.<first 40 characters of the target's name>.unlearnable-<8 hex digits>.tmp``.
TEMP_PATTERN = re.compile(r"\..{1,40}\.unlearnable-[0-9a-f]{8}\.tmp", re.DOTALL)
# Files up to this size are read into memory once to be hashed and decoded from the same bytes.
KEEP_IN_MEMORY = 256 << 20
_BLOCK = 1 << 20

T = TypeVar("T")


class OutputError(UnlearnableError):
    """A file of the run's own (manifest, state, report) cannot be written: full disk, read-only folder."""


class NotOursError(UnlearnableError):
    """The target exists and the caller's ``may_replace`` refused it, or a file appeared there during
    the write: it was left untouched."""


def describe(e: BaseException) -> str:
    """``str(e)``, or the exception's type name when that is empty."""
    text = str(e).strip()
    return text if text else type(e).__name__


# ----------------------------------------------------------------------------------------------------
# hashes


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of the file's bytes, read in 1 MiB blocks. Raises OSError if unreadable."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def read_hashed(path: Path, keep_up_to: int = KEEP_IN_MEMORY) -> tuple[str, int, bytes | None]:
    """``(sha256, size, data)`` from one read of the file: ``data`` is its bytes when it is at most
    ``keep_up_to`` bytes long (so the caller can decode what it hashed), else None (hashed in 1 MiB
    blocks, never held in memory). Raises OSError if unreadable."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size <= keep_up_to:
            data = f.read()
            if len(data) <= keep_up_to:  # it may have grown since the fstat
                return sha256_bytes(data), len(data), data
            h, size = hashlib.sha256(data), len(data)
        else:
            h, size = hashlib.sha256(), 0
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size, None


def settings_sha256(settings: object) -> hashlib._Hash:
    """A SHA-256 over the canonical JSON of ``settings`` (keys sorted, values JSON cannot hold written
    with ``str``), to identify a run's settings; the caller may feed more into it before digesting."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())


# ----------------------------------------------------------------------------------------------------
# atomic writes


def write_atomic(path: Path, data: bytes | Callable[[BinaryIO], object], verify: bool = True,
                 may_replace: Callable[[Path], bool] | None = None) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring). ``data``: the bytes, or a
    callable that writes the content into the open temp file (e.g. ``lambda f: torch.save(obj, f)``,
    so a large object is never held twice in memory). ``verify``: read the file back and compare its
    SHA-256 with the data's (bytes only; a callable must be given ``verify=False``). ``may_replace``:
    see :func:`atomic_file`. Raises :class:`OutputError` with one line naming ``path``."""
    path = Path(path)
    if callable(data):
        if verify:
            raise ValueError("write_atomic can only verify bytes: give verify=False with a callable")
        fill, check = data, None
    else:
        def fill(f: BinaryIO) -> None:
            f.write(data)

        check = (lambda tmp: _compare(tmp, data)) if verify else None
    try:
        atomic_file(path, fill, check, may_replace)
    except (OSError, NotOursError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else describe(e)
        raise OutputError(f"cannot write {path}: {why}") from None


def atomic_file(path: Path, fill: Callable[[BinaryIO], object], check: Callable[[Path], T] | None = None,
                may_replace: Callable[[Path], bool] | None = None,
                before_rename: Callable[[T | None], None] | None = None) -> T | None:
    """The atomic write underneath :func:`write_atomic` and ``photos.encode.write_photo``: ``fill(f)``
    writes the content into a new unique temp file next to ``path``, which is then flushed, fsynced and
    size-checked; ``check(temp path)`` (when given) reads it back and raises if it is unusable, and its
    result is returned; ``before_rename(result)`` runs just before the file appears under ``path``.

    ``may_replace(path)``: called when ``path`` already exists (also a symlink); False refuses to
    replace it (:class:`NotOursError`). When given and ``path`` does not exist, the temp file is
    hard-linked to ``path`` (fails if something appeared there meanwhile) instead of renamed.
    On any failure the temp file is removed and ``path`` is untouched; errors propagate as raised
    (OSError from the disk, :class:`NotOursError`, whatever ``fill`` or ``check`` raise)."""
    path = Path(path)
    tmp: str | None = None
    try:
        fd, tmp = _create_temp(path)
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
            _check_size(f.tell(), os.fstat(f.fileno()).st_size)
        result = check(Path(tmp)) if check is not None else None
        _place(tmp, path, may_replace, lambda: before_rename(result) if before_rename else None)
        tmp = None
        _fsync_dir(path.parent)
        return result
    finally:
        if tmp is not None:
            _remove_quietly(tmp)


def _compare(tmp: Path, data: bytes) -> None:
    if sha256_file(tmp) != sha256_bytes(data):
        raise OSError("the bytes read back differ from the bytes written")


def _check_size(expected: int, on_disk: int) -> None:
    if on_disk != expected:
        raise OSError(f"short write: {on_disk} of {expected} bytes reached the disk")


def _create_temp(path: Path) -> tuple[int, str]:
    """Open a new hidden temp file next to ``path`` (:data:`TEMP_PATTERN`), honouring the umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = str(path.parent / f".{path.name[:40]}.unlearnable-{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise OSError(f"could not create a temporary file in {path.parent}")


def _place(tmp: str, path: Path, may_replace: Callable[[Path], bool] | None,
           before: Callable[[], None]) -> None:
    """Move the finished temp file to ``path``, refusing to replace a file ``may_replace`` rejects."""
    if may_replace is not None:
        exists = os.path.lexists(path)
        if exists and not may_replace(path):
            raise NotOursError(f"{path} exists and was not written by unlearnable; it was left untouched")
        if not exists:
            before()
            try:
                os.link(tmp, path)  # no-clobber: fails if a file appeared at path meanwhile
            except FileExistsError:
                raise NotOursError(f"{path} appeared during the run (not written by unlearnable); "
                                   "it was left untouched") from None
            except OSError:  # no hard links here (FAT, some network shares): rename instead
                os.replace(tmp, path)
                return
            _remove_quietly(tmp)
            return
    before()
    os.replace(tmp, path)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (POSIX); best effort elsewhere."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
