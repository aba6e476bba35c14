"""The output folder of ``unlearnable protect``: what in it is ours, who may write it, what a killed run left.

Why: OUT may already hold files, a user's own among them. The rule is that no file this tool did
not write is ever replaced, and the tool must know which files it wrote even after a crash, a
full disk or a damaged manifest. So:

- a *journal*, ``OUT/.unlearnable/written.jsonl``, gets one JSON line ``{"path", "sha256"}`` (fsynced)
  just before each output appears under its final name. A file in OUT is *ours* when its path and
  current sha256 are in the journal, or in an earlier manifest of ours (outputs of versions that
  had no journal). A symbolic link or anything else there is never ours;
- a *lock*, ``OUT/.unlearnable/lock``, held with ``flock`` for the whole run (the kernel drops it
  when the process dies, even by ``kill -9``, so a stale lock cannot block a rerun); it holds the
  pid of the run for the message the second run prints. Without ``fcntl`` (Windows) the lock is an
  exclusive-create file whose recorded pid is checked for liveness;
- an *entry log*, ``OUT/.unlearnable/entries.jsonl`` (:class:`EntryLog`), gets each photo's manifest
  entry as soon as the photo is written, so that ``manifest.json`` is written once, at the end of a run
  (O(N) bytes for N photos instead of rewriting it as the run goes), and a run killed before that end
  is resumed from the earlier manifest plus this log; the log is removed once the manifest holds it;
- :func:`remove_leftovers` deletes temp files of a killed run: only names matching our own temp
  pattern (:data:`~unlearnable.data.storage.TEMP_PATTERN`, plus the fixed names older versions used),
  only in the folders this run writes to, only regular files;
- :func:`check_inside` refuses outputs that would leave OUT through a symbolic link.

Standards: ``flock(2)``; JSON Lines (one UTF-8 JSON object per line). Deviation: the entry log is not
fsynced line by line (the journal is): a line lost in a power cut only means that photo is written
again, and the journal still knows the file there as ours.
"""
from __future__ import annotations

import errno
import json
import os
import re
import socket
import stat
import threading
from pathlib import Path
from typing import Iterable

from ..storage import TEMP_PATTERN, OutputError, sha256_file
from .files import UsageError

STATE_DIR = ".unlearnable"
JOURNAL = "written.jsonl"
ENTRIES = "entries.jsonl"
LOCK = "lock"
# temp names of versions before the journal: ".<name[:40]>.<8 hex>.tmp" next to a photo, fixed names for state
_LEGACY_TEMP = re.compile(r"\.(.{1,40})\.[0-9a-f]{8}\.tmp", re.DOTALL)


class LockedError(UsageError):
    """Another run is writing to the same output folder (exit code 2: nothing was done)."""


def _writable_error(out: Path, e: OSError) -> OutputError:
    return OutputError(f"cannot write to the output folder {out}: {e.strerror or e}")


def state_dir(out: Path) -> Path:
    """``OUT/.unlearnable``, created if needed; refused if it is a symbolic link or not a folder."""
    d = Path(out) / STATE_DIR
    if os.path.islink(d) or (os.path.lexists(d) and not d.is_dir()):
        raise UsageError(f"{d} exists and is not a folder written by unlearnable; move it or choose another "
                         "output folder")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _writable_error(Path(out), e) from None
    return d


class OutputLock:
    """Exclusive lock on an output folder for one run (context manager). ``stale_pid``: the pid of a
    dead run whose lock was taken over (no-``fcntl`` platforms only), else None."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.path = state_dir(out) / LOCK
        self.fd: int | None = None
        self.stale_pid: int | None = None

    def __enter__(self) -> "OutputLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            self._acquire_by_pid()
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise _writable_error(self.out, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise LockedError(self._busy_message(_read_owner(self.path))) from None
            raise _writable_error(self.out, e) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, _owner_record())
        except OSError:
            pass  # the pid is only for the other run's message; the lock itself is held
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            os.close(self.fd)  # releases the flock; the empty file stays (unlinking it would race)
            self.fd = None
        elif getattr(self, "_owned", False):  # pragma: no cover - Windows
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def _busy_message(self, owner: dict) -> str:
        who = f" (pid {owner['pid']} on {owner.get('host', '?')})" if owner.get("pid") else ""
        return (f"another unlearnable run{who} is writing to {self.out}; wait for it to finish, or stop it "
                "and rerun the same command to resume")

    def _acquire_by_pid(self) -> None:  # pragma: no cover - exercised on Windows only
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = _read_owner(self.path)
                if owner.get("host") == socket.gethostname() and owner.get("pid") and not _alive(owner["pid"]):
                    self.stale_pid = owner["pid"]
                    os.unlink(self.path)
                    continue
                raise LockedError(self._busy_message(owner)) from None
            except OSError as e:
                raise _writable_error(self.out, e) from None
            os.write(fd, _owner_record())
            os.close(fd)
            self._owned = True
            return
        raise LockedError(self._busy_message(_read_owner(self.path)))


def _owner_record() -> bytes:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode()


def _read_owner(path: Path) -> dict:
    try:
        owner = json.loads(Path(path).read_text())
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


def _alive(pid: int) -> bool:  # pragma: no cover - used without fcntl only
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


class Journal:
    """The record of every file this tool wrote into OUT (see the module docstring)."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.path = Path(out) / STATE_DIR / JOURNAL
        self.exists = self.path.is_file()
        self.known: dict[str, set[str]] = {}
        self._hashes: dict[str, tuple[int, int, str]] = {}  # rel -> (size, mtime_ns, sha256) cache
        self._lock = threading.Lock()
        self._needs_newline = False
        self.reload()

    def reload(self) -> None:
        """Read the journal file (again) and add what it records."""
        try:
            text = self.path.read_bytes().decode("utf-8", "replace")
        except OSError:
            return
        for line in text.splitlines():
            try:
                rec = json.loads(line)
                self.known.setdefault(str(rec["path"]), set()).add(str(rec["sha256"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a crash: that file was not renamed into place yet
        self._needs_newline = bool(text) and not text.endswith("\n")

    def touch(self) -> None:
        """Create the journal (empty): it marks OUT as a folder this tool has worked in."""
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
        except OSError as e:
            raise _writable_error(self.out, e) from None
        self.exists = True

    def remember(self, rel: str, sha256: str) -> None:
        """Record ``rel`` (posix path relative to OUT) with the content hash it is about to have (fsynced)."""
        with self._lock:
            line = json.dumps({"path": rel, "sha256": sha256}, ensure_ascii=False) + "\n"
            if self._needs_newline:
                line = "\n" + line
            data = line.encode("utf-8")
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if os.write(fd, data) != len(data):
                    raise OSError(errno.ENOSPC, "short write to the journal of written files")
                os.fsync(fd)
            finally:
                os.close(fd)
            self._needs_newline = False
            self.exists = True
            self.known.setdefault(rel, set()).add(sha256)

    def add(self, rel: str, sha256: str) -> None:
        """Count ``rel`` with ``sha256`` as ours without writing (from an earlier manifest of ours)."""
        with self._lock:
            self.known.setdefault(rel, set()).add(sha256)

    def _rel(self, path: Path) -> str:
        return Path(os.path.relpath(path, self.out)).as_posix()

    def wrote_path(self, path: Path) -> bool:
        """True if this tool has written some file at ``path`` before (whatever is there now)."""
        return bool(self.known.get(self._rel(path)))

    def hash_of(self, path: Path) -> str | None:
        """sha256 of the regular file at ``path`` (cached by size and mtime), None if absent or unreadable."""
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        rel = self._rel(path)
        hit = self._hashes.get(rel)
        if hit and hit[:2] == (st.st_size, st.st_mtime_ns):
            return hit[2]
        try:
            digest = sha256_file(Path(path))
        except Exception:  # noqa: BLE001 - unreadable
            return None
        self._hashes[rel] = (st.st_size, st.st_mtime_ns, digest)
        return digest

    def owns(self, path: Path) -> bool:
        """May ``path`` (inside OUT) be replaced? True if nothing is there, or a regular file whose content
        this tool wrote there, or a file at a path this tool wrote that no longer decodes as an image
        (a damaged output: nothing of value is lost). False for anything else, symlinks included."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode):
            return False
        hashes = self.known.get(self._rel(path))
        if not hashes:
            return False
        return self.hash_of(path) in hashes or not _decodes(Path(path))


class EntryLog:
    """Append-only log of the manifest entries of finished files, ``OUT/.unlearnable/entries.jsonl``
    (see the module docstring). Its first line is ``{"settings": ...}``, the run's settings; each
    further line one entry, a JSON object with an ``"output"`` path (a later line for the same output
    wins). A log of other settings is started afresh by the first :meth:`append`."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / STATE_DIR / ENTRIES
        self._lock = threading.Lock()
        self._settings: object = None
        self._continues = False     # the file on disk is a log of self._settings: append to it
        self._needs_newline = False

    def read(self, settings: object) -> dict[str, dict]:
        """The entries logged under ``settings`` (JSON values), by output path; {} when there is no log,
        it is unreadable, or it is of other settings. Lines torn by a crash are skipped. Later
        :meth:`append` calls log under ``settings``."""
        self._settings, self._continues = settings, False
        try:
            text = self.path.read_bytes().decode("utf-8", "replace")
        except OSError:
            return {}
        lines = text.splitlines()
        try:
            head = json.loads(lines[0]) if lines else None
        except ValueError:
            head = None
        if not isinstance(head, dict) or head.get("settings") != settings:
            return {}
        entries: dict[str, dict] = {}
        for line in lines[1:]:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("output"), str):
                entries[entry["output"]] = entry
        self._continues = True
        self._needs_newline = not text.endswith("\n")
        return entries

    def append(self, entry: dict) -> None:
        """Log ``entry`` (a JSON object with an ``"output"`` path). Raises OSError (full disk)."""
        with self._lock:
            line = json.dumps(entry, ensure_ascii=False) + "\n"
            if self._continues:
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
                if self._needs_newline:
                    line = "\n" + line
            else:  # a new log: settings first
                flags = os.O_WRONLY | os.O_TRUNC | os.O_CREAT
                line = json.dumps({"settings": self._settings}, ensure_ascii=False) + "\n" + line
            data = line.encode("utf-8")
            fd = os.open(self.path, flags, 0o644)
            try:
                written = os.write(fd, data)
            finally:
                os.close(fd)
            if written != len(data):  # a torn line: the next one starts on a line of its own
                self._needs_newline = self._continues
                raise OSError(errno.ENOSPC, "short write to the log of finished files")
            self._continues, self._needs_newline = True, False

    def remove(self) -> None:
        """Drop the log (its entries are in a manifest now); best effort."""
        with self._lock:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            self._continues = False


def _decodes(path: Path) -> bool:
    """True if Pillow can fully decode the image file at ``path``."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
        return True
    except Exception:  # noqa: BLE001
        return False


def check_inside(out: Path, rels: Iterable[Path]) -> None:
    """Refuse (:class:`UsageError`) an output path whose folders below OUT include a symbolic link:
    writing through it would put files outside OUT, possibly over files the user keeps elsewhere."""
    out = Path(out)
    seen: set[Path] = set()
    for rel in rels:
        here = out
        for part in Path(rel).parts[:-1]:
            here = here / part
            if here in seen:
                continue
            seen.add(here)
            if os.path.islink(here):
                raise UsageError(f"{here} is a symbolic link (to {os.readlink(here)}); outputs must stay inside "
                                 f"the output folder {out}: remove the link or choose another output folder")


def remove_leftovers(out: Path, rels: Iterable[Path]) -> list[Path]:
    """Delete the temp files an interrupted run left in OUT, its state folder and the folders of
    ``rels``; only regular files named like our temp files. Returns the paths removed."""
    out = Path(out)
    folders = {out, out / STATE_DIR} | {out / Path(r).parent for r in rels}
    names_by_folder: dict[Path, set[str]] = {}
    for r in rels:
        names_by_folder.setdefault(out / Path(r).parent, set()).add(Path(r).name[:40])
    removed = []
    for folder in sorted(folders):
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            name = entry.name
            legacy = _LEGACY_TEMP.fullmatch(name)
            ours = (TEMP_PATTERN.fullmatch(name) is not None
                    or (legacy is not None and legacy.group(1) in names_by_folder.get(folder, ()))
                    or (name == "manifest.json.tmp" and folder == out)
                    or (name in ("search.pt.tmp", "checkpoint.pt.tmp") and folder == out / STATE_DIR))
            try:
                if ours and entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
            except OSError:
                continue
    return removed
