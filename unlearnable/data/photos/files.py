"""Finding photo files and where their outputs go, with the guards that keep originals safe.

Why: ``unlearnable protect photos/ -o OUT`` walks a person's own photo folder. The walk must survive
what real folders hold (symbolic link loops, hidden files, unicode names, unreadable subfolders:
reported, never skipped silently), and the output layout must never put a file over an original or
inside an input folder (where a rerun would protect it again). :func:`discover` returns each photo
with its output path under OUT and its class label, or refuses the whole run with a
:class:`UsageError` before anything is written. Which files are ours to replace inside OUT is
``outdir``'s business (journal of written files).

Standards: paths are compared by (device, inode) after resolving symbolic links, so ``..``, links
and case-insensitive file systems cannot defeat the guards (POSIX ``stat(2)``). Deviation: a photo
named explicitly is always taken, whatever its extension; a folder walk takes only
:data:`~unlearnable.data.photos.photo.PHOTO_EXTENSIONS` (and, on request, the refused GIF).
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from ...errors import UnlearnableError
from .photo import PHOTO_EXTENSIONS, REFUSED_EXTENSIONS


class UsageError(UnlearnableError):
    """The whole run cannot start (bad output folder, missing input, nothing to do): exit code 2."""


@dataclass
class PhotoFile:
    """One photo found by :func:`discover`."""

    path: Path  # the input file as found (may be a symlink)
    rel: Path  # output path relative to OUT
    label: str  # class name: first-level subfolder, else the input folder's name


def discover(inputs: Sequence[Path], out: Path, problems: list[tuple[Path, str]] | None = None,
             include_refused: bool = False) -> tuple[list[PhotoFile], list[tuple[Path, str]]]:
    """Find the photos under ``inputs`` (files and/or folders) and where each goes under ``out``.

    Returns ``(photos sorted by rel, skipped)``; ``skipped`` lists ``(path, reason)`` for entries under
    input folders that are not photos (other extensions, hidden files and folders, broken links,
    folders reached twice through symlinks): informational, not errors. A file named explicitly is
    always included (``rel`` = its name, ``label`` = its folder's name). ``problems``, when given, receives
    ``(path, reason)`` for folders and files that exist but cannot be read (they are then not in
    ``skipped``: the caller reports them as failures). ``include_refused`` lists files with a refused
    extension (:data:`REFUSED_EXTENSIONS`, GIF) as photos, so that reading them fails with the reason.
    With exactly one input folder,
    ``rel`` is relative to it; with several inputs, folders contribute ``<folder name>/<relative path>``.
    ``label`` is the first-level subfolder (``photos/alice/2019/x.jpg`` -> ``alice``), or the input
    folder's own name for files directly in it.

    Raises :class:`UsageError` for a missing input, an ``out`` that is (or is inside) an input folder
    or is an existing file, an input inside ``out``, an output path that would land on an original,
    two photos with the same output path, or no photos at all.
    """
    if not inputs:
        raise UsageError("no input files or folders given")
    out = Path(out)
    entries: list[tuple[Path, os.stat_result]] = []
    seen_args: set[str] = set()
    for raw in inputs:
        p = Path(raw)
        if os.path.abspath(p) in seen_args:  # the same argument twice: harmless, count it once
            continue
        seen_args.add(os.path.abspath(p))
        try:
            st = os.stat(p)
        except FileNotFoundError:
            why = " (broken symbolic link)" if os.path.islink(p) else ""
            raise UsageError(f"input not found: {p}{why}") from None
        except OSError as e:
            raise UsageError(f"cannot access input {p}: {e.strerror or e}") from None
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            raise UsageError(f"input is neither a file nor a folder: {p}")
        entries.append((p, st))

    _check_out_folder(out, entries)

    single_folder = len(entries) == 1 and stat.S_ISDIR(entries[0][1].st_mode)
    photos: list[PhotoFile] = []
    skipped: list[tuple[Path, str]] = []
    for p, st in entries:
        if stat.S_ISREG(st.st_mode):
            photos.append(PhotoFile(p, Path(p.name), Path(os.path.abspath(p)).parent.name))
            continue
        name = Path(os.path.abspath(p)).name
        for full in _walk(p, skipped, skipped if problems is None else problems, include_refused):
            inner = Path(os.path.relpath(full, p))
            label = inner.parts[0] if len(inner.parts) > 1 else name
            photos.append(PhotoFile(full, inner if single_folder else Path(name) / inner, label))

    by_rel: dict[Path, Path] = {}
    for ph in photos:
        if ph.rel in by_rel:
            raise UsageError(f"two photos would be written to the same output {ph.rel}: {by_rel[ph.rel]} and {ph.path}")
        by_rel[ph.rel] = ph.path
    if not photos:
        names = ", ".join(str(p) for p, _ in entries)
        extra = f" ({len(skipped)} other entries skipped)" if skipped else ""
        raise UsageError(f"no photos found in {names}{extra}; photo extensions: {' '.join(PHOTO_EXTENSIONS)}")
    _check_destinations(out, photos, [(p, st) for p, st in entries if stat.S_ISDIR(st.st_mode)])

    photos.sort(key=lambda ph: ph.rel)
    skipped.sort(key=lambda s: str(s[0]))
    return photos, skipped


def _walk(folder: Path, skipped: list[tuple[Path, str]], problems: list[tuple[Path, str]],
          include_refused: bool = False) -> Iterator[Path]:
    """Photo files under ``folder``, following symlinks but entering each real folder once; entries
    that exist but cannot be read go to ``problems``, the rest that is not a photo to ``skipped``."""
    root = os.stat(folder)
    visited = {(root.st_dev, root.st_ino)}
    wanted = PHOTO_EXTENSIONS + (REFUSED_EXTENSIONS if include_refused else ())

    def onerror(e: OSError) -> None:
        problems.append((Path(e.filename or folder), f"cannot read folder: {e.strerror or e}"))

    def stat_or_note(full: Path, what: str) -> os.stat_result | None:
        """``os.stat`` (following links), or None with the reason noted: a broken link is skipped,
        anything else that cannot be read is a problem."""
        try:
            return os.stat(full)
        except FileNotFoundError:
            skipped.append((full, "broken symbolic link"))
        except OSError as e:
            problems.append((full, f"cannot {what}: {e.strerror or e}"))
        return None

    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True, onerror=onerror):
        keep = []
        for d in sorted(dirnames):
            full = Path(dirpath) / d
            if d.startswith("."):
                skipped.append((full, "hidden folder (not searched)"))
                continue
            st = stat_or_note(full, "read folder")
            if st is None:
                continue
            if (st.st_dev, st.st_ino) in visited:
                skipped.append((full, "folder already searched (symbolic link loop or second link)"))
                continue
            visited.add((st.st_dev, st.st_ino))
            keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            full = Path(dirpath) / name
            suffix = Path(name).suffix.lower()
            if name.startswith("."):
                skipped.append((full, "hidden file"))
            elif suffix not in wanted:
                skipped.append((full, f"not a photo extension ({suffix or 'none'})"))
            else:
                st = stat_or_note(full, "access")
                if st is None:
                    continue
                if stat.S_ISREG(st.st_mode):
                    yield full
                else:
                    skipped.append((full, "not a regular file"))


def _ancestor_ids(path: str) -> list[tuple[int, int, str]]:
    """(st_dev, st_ino, path) of ``path`` (symlinks resolved) and each existing ancestor, nearest first."""
    ids = []
    p = Path(os.path.realpath(path))
    for q in (p, *p.parents):
        try:
            st = os.stat(q)
        except OSError:
            continue
        ids.append((st.st_dev, st.st_ino, str(q)))
    return ids


def _check_out_folder(out: Path, entries: list[tuple[Path, os.stat_result]]) -> None:
    """Refuse an ``out`` that is an input file, an existing file, or an input folder or inside one, and
    an input that is inside ``out``. Compared by (device, inode), so symlinks, ``..`` and
    case-insensitive file systems cannot fool it."""
    try:
        out_st = os.stat(out)
    except OSError:
        out_st = None
    if out_st is not None and not stat.S_ISDIR(out_st.st_mode):
        for p, st in entries:
            if (st.st_dev, st.st_ino) == (out_st.st_dev, out_st.st_ino):
                raise UsageError(f"the output folder {out} is the input file {p}; choose a new folder for the results")
        raise UsageError(f"the output {out} exists and is not a folder")
    chain = _ancestor_ids(str(out))
    for p, st in entries:
        if not stat.S_ISDIR(st.st_mode):
            continue
        for i, (dev, ino, _) in enumerate(chain):
            if (dev, ino) == (st.st_dev, st.st_ino):
                where = "is the input folder" if i == 0 and out_st is not None else "is inside the input folder"
                raise UsageError(
                    f"the output folder {out} {where} {p}; choose a folder outside the photos "
                    "(outputs there could overwrite originals and would be protected again on a rerun)"
                )
    if out_st is None:
        return
    for p, st in entries:  # an input inside OUT: outputs would land next to (or on) the user's own files
        if any((dev, ino) == (out_st.st_dev, out_st.st_ino) for dev, ino, _ in _ancestor_ids(str(p))[1:]):
            kind = "folder" if stat.S_ISDIR(st.st_mode) else "file"
            raise UsageError(
                f"the input {kind} {p} is inside the output folder {out}; choose an output folder that holds "
                "no inputs (outputs there could overwrite your own files)"
            )


def _check_destinations(out: Path, photos: list[PhotoFile], folders: list[tuple[Path, os.stat_result]]) -> None:
    """Refuse if some OUT/rel would land on an input photo or inside an input folder (e.g. OUT is a parent
    of an input folder, or OUT holds a symlink into the inputs)."""
    originals = {os.path.realpath(ph.path) for ph in photos}
    folder_ids = {(st.st_dev, st.st_ino): p for p, st in folders}
    verdict: dict[str, Path | None] = {}
    out_abs = os.path.abspath(out)
    for ph in photos:
        dest = os.path.join(out_abs, str(ph.rel))
        if os.path.realpath(dest) in originals:
            raise UsageError(f"output {dest} would overwrite the original {ph.path}; choose another output folder")
        parent = os.path.dirname(dest)
        if parent not in verdict:
            verdict[parent] = next((folder_ids[(d, i)] for d, i, _ in _ancestor_ids(parent) if (d, i) in folder_ids), None)
        if verdict[parent] is not None:
            raise UsageError(
                f"output {dest} would be written inside the input folder {verdict[parent]}; choose another output folder"
            )
