"""Photo files on disk: find them, decode them into numpy, write them back faithfully.

Why: ``unlearnable protect photos/ -o OUT`` adds bounded noise to a person's own photo folder.
The noise engine only sees pixels; everything about files lives here, so that a bad photo costs
one line in the report and never the batch, and an original is never touched:

- :func:`discover` walks the inputs (symlink loops, hidden files, unicode names) and refuses
  output folders that could overwrite originals or be re-protected on a rerun, and inputs inside
  the output folder (:class:`UsageError`); unreadable folders are reported, never skipped silently;
- :func:`read_photo` validates before decoding (empty, not an image, decompression bomb, animated,
  GIF, exotic pixel modes) and returns upright pixels plus what is needed to save them back
  (ICC profile, EXIF with orientation reset to 1 and GPS removed, DPI, XMP, ...); every failure
  is a :class:`PhotoError` with a one-line message;
- :func:`write_photo` saves in the source's format and size, atomically (a uniquely named hidden
  temp file, flushed, fsynced, size-checked and decoded again before it is renamed), and never
  replaces a file the caller does not own; :func:`write_bytes_atomic` does the same for state files.
  Temp files are named ``.<name>.unlearnable-<8 hex>.tmp`` (:data:`TEMP_PATTERN`), so a rerun can
  remove the leftovers of a killed run without touching anything else.

Pixels are uint8 in [0, 255] (uint16 in [0, 65535] for 16-bit grayscale), laid out (H, W, C).
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import secrets
import stat
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image, PngImagePlugin

from ...errors import UnlearnableError

try:  # optional HEIC/HEIF support (iPhone photos)
    import pillow_heif  # type: ignore[import-not-found]

    pillow_heif.register_heif_opener()
    HEIF_SUPPORTED = True
except Exception:  # noqa: BLE001 - absent or broken: HEIC files are then simply not photos
    HEIF_SUPPORTED = False

PHOTO_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp") + (
    (".heic", ".heif") if HEIF_SUPPORTED else ()
)

# Formats we can write back as themselves; MPO (multi-picture JPEG from cameras/phones) is read as JPEG.
_FORMATS = {"JPEG", "PNG", "WEBP", "TIFF", "BMP"} | ({"HEIF"} if HEIF_SUPPORTED else set())
_TIFF_LOSSLESS = {"raw", "tiff_lzw", "tiff_adobe_deflate", "tiff_deflate", "packbits"}
# TIFF tags worth carrying over; the rest describe the old pixel layout (strips, tiles, sample format)
# or embed other images (Photoshop layers, thumbnails) that would keep an unprotected copy in the file.
_TIFF_KEEP_TAGS = {269, 270, 271, 272, 274, 285, 305, 306, 315, 316, 33432, 0x8769, 0x8825}
_ORIENTATION, _GPS_IFD, _XMP_TAG = 0x0112, 0x8825, 700
_MAX_MESSAGE = 300
# Extensions of formats we recognise but refuse (GIF: 256 colours erase the noise). A folder walk with
# ``include_refused`` lists them as photos, so reading them fails with the reason, as for a named file.
REFUSED_EXTENSIONS: tuple[str, ...] = (".gif",)
# Our temp files: ``.<first 40 characters of the target's name>.unlearnable-<8 hex digits>.tmp``.
TEMP_PATTERN = re.compile(r"\..{1,40}\.unlearnable-[0-9a-f]{8}\.tmp", re.DOTALL)


class PhotoError(UnlearnableError):
    """One photo cannot be read or written. ``str(e)`` is one line about that file (without its path,
    which is in ``e.path`` when known); the batch goes on."""

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(_one_line(message))
        self.path = path


class UsageError(UnlearnableError):
    """The whole run cannot start (bad output folder, missing input, nothing to do): exit code 2."""


@dataclass
class PhotoFile:
    """One photo found by :func:`discover`."""

    path: Path  # the input file as found (may be a symlink)
    rel: Path  # output path relative to OUT
    label: str  # class name: first-level subfolder, else the input folder's name


@dataclass
class Photo:
    """A decoded photo. ``pixels``: (H, W, C) upright, C = 1 (grayscale) or 3 (RGB), uint8 in [0, 255]
    or uint16 in [0, 65535] (16-bit grayscale). ``alpha``: (H, W) of the same dtype, or None; it is
    written back untouched. ``format``: the PIL format it is saved back as (JPEG, PNG, WEBP, TIFF, BMP,
    HEIF). ``source_mode``: the PIL mode before conversion. ``info``: metadata for :func:`write_photo`.
    ``notes``: human-readable conversions done (for the manifest)."""

    pixels: np.ndarray
    alpha: np.ndarray | None
    format: str
    source_mode: str
    info: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels, upright."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])


# ----------------------------------------------------------------------------------------------------
# discovery


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

    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True, onerror=onerror):
        keep = []
        for d in sorted(dirnames):
            full = Path(dirpath) / d
            if d.startswith("."):
                skipped.append((full, "hidden folder (not searched)"))
                continue
            try:
                st = os.stat(full)
            except FileNotFoundError:
                skipped.append((full, "broken symbolic link"))
                continue
            except OSError as e:
                problems.append((full, f"cannot read folder: {e.strerror or e}"))
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
                try:
                    st = os.stat(full)
                except FileNotFoundError:
                    skipped.append((full, "broken symbolic link"))
                    continue
                except OSError as e:
                    problems.append((full, f"cannot access: {e.strerror or e}"))
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


# ----------------------------------------------------------------------------------------------------
# reading


def read_photo(path: Path, max_pixels: int = 150_000_000, keep_gps: bool = False) -> Photo:
    """Decode ``path`` into an upright :class:`Photo` (see its docstring for shapes and dtypes).

    EXIF orientation is applied to the pixels and reset to 1 in ``info['exif']``; the GPS IFD (and XMP
    that mentions GPS) is removed unless ``keep_gps``. Images over ``max_pixels`` (width x height) are
    refused before decoding. The file is only opened for reading. Raises :class:`PhotoError`.
    """
    path = Path(path)
    return _guarded(path, lambda: _read_photo(path, max_pixels, keep_gps))


def _read_photo(path: Path, max_pixels: int, keep_gps: bool) -> Photo:
    with _Decoded(path, max_pixels) as dec:
        notes = dec.notes
        pixels, alpha, space, icc = _convert(dec, notes)
        info: dict[str, Any] = {}
        icc = _icc_for_output(icc, space, notes)
        if icc:
            info["icc_profile"] = icc
        exif, orientation = _exif_for_output(dec.img, dec.format, keep_gps, notes)
        if exif:
            info["exif"] = exif
        xmp = _xmp_for_output(dec.img.info.get("xmp"), keep_gps, notes)
        if xmp:
            info["xmp"] = xmp
        dpi = _dpi(dec.img.info.get("dpi"))
        if dpi:
            info["dpi"] = (dpi[1], dpi[0]) if orientation in (5, 6, 7, 8) else dpi
        info.update(_format_info(dec))
        fmt, mode = dec.format, dec.source_mode
    return Photo(_orient(pixels, orientation), None if alpha is None else _orient(alpha, orientation), fmt, mode, info, notes)


def read_preview(path: Path, size: int, max_pixels: int = 150_000_000) -> np.ndarray:
    """(size, size, 3) uint8 RGB upright preview of the whole photo, squashed to a square (aspect not
    kept), downscaled with antialiasing; JPEGs are decoded at reduced scale first. Grayscale becomes
    three equal channels, alpha is dropped, 16-bit is scaled to 8-bit. Same checks and
    :class:`PhotoError` as :func:`read_photo`."""
    if size < 1:
        raise ValueError(f"preview size must be >= 1, got {size}")
    path = Path(path)
    return _guarded(path, lambda: _read_preview(path, size, max_pixels))


def to_rgb8(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 1|3) uint8 or uint16 -> (H, W, 3) uint8: 16-bit rounded to the nearest 8-bit level,
    grayscale replicated to three channels (what a model that expects RGB sees)."""
    if pixels.dtype == np.uint16:
        pixels = ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return pixels


def _read_preview(path: Path, size: int, max_pixels: int) -> np.ndarray:
    with _Decoded(path, max_pixels, draft=(size, size)) as dec:
        pixels, _, _, _ = _convert(dec, [])
        orientation = _orientation(_safe_exif(dec.img))
    small = Image.fromarray(np.ascontiguousarray(to_rgb8(pixels))).resize(
        (size, size), Image.Resampling.LANCZOS, reducing_gap=3.0
    )
    return np.ascontiguousarray(_orient(np.asarray(small), orientation))


def _guarded(path: Path, read: Callable[[], Any]) -> Any:
    """Run ``read``; whatever goes wrong with this one file comes out as a :class:`PhotoError`."""
    try:
        with warnings.catch_warnings():
            # Pillow warns about damaged metadata it skips (noise on the user's terminal), and warns from
            # 89 MP up about decompression bombs; our own max_pixels check is the guard that decides.
            warnings.simplefilter("ignore")
            return read()
    except PhotoError:
        raise
    except MemoryError:
        raise PhotoError("not enough memory to read this photo", path) from None
    except Exception as e:  # noqa: BLE001 - a malformed file must never stop the batch
        raise PhotoError(f"cannot read photo: {type(e).__name__}: {_describe(e)}", path) from None


class _Decoded:
    """Context manager: open ``path`` read-only, validate it, decode it (``.img`` is loaded)."""

    def __init__(self, path: Path, max_pixels: int, draft: tuple[int, int] | None = None) -> None:
        self.path, self.max_pixels, self.draft = path, max_pixels, draft
        self.notes: list[str] = []
        self.lossless_webp = False

    def __enter__(self) -> "_Decoded":
        path = self.path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise PhotoError("file not found", path) from None
        except OSError as e:
            raise PhotoError(f"cannot access file: {e.strerror or e}", path) from None
        if stat.S_ISDIR(st.st_mode):
            raise PhotoError("is a folder, not a photo", path)
        if not stat.S_ISREG(st.st_mode):
            raise PhotoError("not a regular file", path)
        if st.st_size == 0:
            raise PhotoError("empty file (0 bytes)", path)
        try:
            self._fp = open(path, "rb")
        except OSError as e:
            raise PhotoError(f"cannot open file: {e.strerror or e}", path) from None
        try:
            self._open_and_load()
        except BaseException:
            self._fp.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.img.close()
        self._fp.close()

    def _fail(self, message: str) -> PhotoError:
        return PhotoError(message, self.path)

    def _open_and_load(self) -> None:
        try:
            img = Image.open(self._fp)
        except Image.UnidentifiedImageError:
            raise self._fail("not an image Pillow can read (cannot identify image file)") from None
        except Image.DecompressionBombError as e:
            raise self._fail(_bomb_message(str(e), self.max_pixels)) from None
        except Exception as e:  # noqa: BLE001 - any decoder failure is one bad file
            raise self._fail(f"truncated or corrupt image data: {_describe(e)}") from None
        self.img = img
        try:
            self._validate(img)
            self.source_mode = img.mode
            rawmode = _tile_rawmode(img)
            if self.format == "JPEG" and self.draft:
                img.draft(img.mode, self.draft)
            if img.format == "WEBP":
                self.lossless_webp = _webp_is_lossless(self._fp)
            img.load()
        except PhotoError:
            img.close()
            raise
        except MemoryError:
            img.close()
            raise self._fail(f"not enough memory to decode this {img.size[0]}×{img.size[1]} image") from None
        except Image.DecompressionBombError as e:
            img.close()
            raise self._fail(_bomb_message(str(e), self.max_pixels)) from None
        except Exception as e:  # noqa: BLE001
            img.close()
            raise self._fail(f"truncated or corrupt image data: {_describe(e)}") from None
        if ";16" in rawmode and img.mode in ("RGB", "RGBA", "LA", "CMYK"):
            self.notes.append("16 bits per channel reduced to 8 (Pillow decodes 16-bit colour as 8-bit)")

    def _validate(self, img: Image.Image) -> None:
        fmt = img.format or "unknown"
        if fmt == "GIF":
            raise self._fail("GIF is limited to 256 colours, which would erase the noise; convert it to PNG first")
        if fmt == "MPO":  # camera/phone JPEG with extra pictures (previews, depth maps): keep the main one
            self.format = "JPEG"
        elif fmt in _FORMATS:
            self.format = fmt
        else:
            raise self._fail(f"{fmt} images are not supported; convert to PNG or JPEG first")
        w, h = img.size
        if w * h > self.max_pixels:
            raise self._fail(
                f"{w}×{h} = {_mp(w * h)} megapixels exceeds the {_mp(self.max_pixels)}-megapixel limit "
                "(decompression-bomb guard)"
            )
        frames = getattr(img, "n_frames", 1)
        if frames > 1 and fmt == "MPO":
            self.notes.append(f"multi-picture JPEG: kept the main picture, dropped {frames - 1} extra (preview/depth)")
        elif frames > 1 and fmt == "TIFF":
            raise self._fail(
                f"multi-page TIFF with {frames} pages: not supported (protecting one page would drop the rest); "
                "split the pages first"
            )
        elif frames > 1:
            raise self._fail(
                f"animated image with {frames} frames: not supported (protecting one frame would drop the rest); "
                "export a still first"
            )


def _convert(dec: _Decoded, notes: list[str]) -> tuple[np.ndarray, np.ndarray | None, str, bytes | None]:
    """:func:`_to_arrays` on a decoded photo, with any failure turned into a :class:`PhotoError` for it."""
    try:
        return _to_arrays(dec.img, notes)
    except PhotoError as e:
        e.path = dec.path
        raise
    except MemoryError:
        raise PhotoError("not enough memory to convert this image", dec.path) from None
    except Exception as e:  # noqa: BLE001
        raise PhotoError(f"cannot convert pixel mode {dec.img.mode}: {_describe(e)}", dec.path) from None


def _to_arrays(img: Image.Image, notes: list[str]) -> tuple[np.ndarray, np.ndarray | None, str, bytes | None]:
    """(pixels (H, W, C), alpha (H, W) or None, colour space 'RGB' | 'GRAY', ICC profile or None)
    from a loaded image; the profile is the source's, or sRGB after a colour-managed CMYK conversion."""
    mode, icc = img.mode, img.info.get("icc_profile")
    if mode == "1":
        img = img.convert("L")
        notes.append("bilevel (1-bit) converted to 8-bit grayscale")
    elif mode in ("P", "PA"):
        has_alpha = mode == "PA" or img.info.get("transparency") is not None
        img = img.convert("RGBA" if has_alpha else "RGB")
        notes.append(f"palette expanded to {img.mode} (saved as {img.mode}, not re-quantised, so the noise survives)")
    elif mode == "CMYK":
        img, icc = _cmyk_to_rgb(img, notes)
    elif mode in ("YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
        notes.append(f"{mode} converted to RGB")
    elif mode in ("RGBX", "RGBa", "La"):
        img = img.convert({"RGBX": "RGB", "RGBa": "RGBA", "La": "LA"}[mode])
    elif mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(img).astype(np.uint16)[:, :, None], None, "GRAY", icc
    elif mode == "I":
        a = np.asarray(img)
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise PhotoError(f"32-bit integer image (mode I) with values {lo}..{hi} outside 0..65535: not supported")
        notes.append("32-bit integer grayscale stored as 16-bit (values fit in 0..65535)")
        return a.astype(np.uint16)[:, :, None], None, "GRAY", icc
    elif mode == "F":
        raise PhotoError("32-bit floating-point image (mode F): not supported; export as 8- or 16-bit first")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        raise PhotoError(f"pixel mode {mode} is not supported")
    a = np.asarray(img)
    if img.mode == "L":
        return a[:, :, None], None, "GRAY", icc
    if img.mode == "LA":
        return np.ascontiguousarray(a[:, :, :1]), np.ascontiguousarray(a[:, :, 1]), "GRAY", icc
    if img.mode == "RGBA":
        return np.ascontiguousarray(a[:, :, :3]), np.ascontiguousarray(a[:, :, 3]), "RGB", icc
    return np.ascontiguousarray(a), None, "RGB", icc


def _cmyk_to_rgb(img: Image.Image, notes: list[str]) -> tuple[Image.Image, bytes | None]:
    """CMYK -> RGB through the embedded CMYK ICC profile when there is one (to sRGB, whose profile is
    returned), else Pillow's plain formula (no profile returned: the source's described the CMYK data)."""
    icc = img.info.get("icc_profile")
    if icc and _icc_space(icc) == "CMYK":
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
            out = ImageCms.profileToProfile(img, src, srgb, outputMode="RGB")
            if out is not None:
                notes.append("CMYK converted to sRGB through its ICC profile (sRGB profile embedded)")
                return out, srgb.tobytes()
        except Exception:  # noqa: BLE001 - broken profile or no littlecms: fall back to the plain formula
            pass
    notes.append("CMYK converted to RGB" + ("; its ICC profile dropped (it described the CMYK data)" if icc else ""))
    return img.convert("RGB"), None


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation 1..8 to an (H, W[, C]) array (same result as ImageOps.exif_transpose)."""
    ops: dict[int, Callable[[np.ndarray], np.ndarray]] = {
        2: lambda x: x[:, ::-1],
        3: lambda x: x[::-1, ::-1],
        4: lambda x: x[::-1],
        5: lambda x: np.swapaxes(x, 0, 1),
        6: lambda x: np.rot90(x, -1),
        7: lambda x: np.swapaxes(x, 0, 1)[::-1, ::-1],
        8: lambda x: np.rot90(x, 1),
    }
    op = ops.get(orientation)
    return a if op is None else np.ascontiguousarray(op(a))


def _safe_exif(img: Image.Image) -> Image.Exif | None:
    try:
        return img.getexif()
    except Exception:  # noqa: BLE001 - unreadable EXIF is dropped, never fatal
        return None


def _orientation(exif: Image.Exif | None) -> int:
    try:
        value = int(exif.get(_ORIENTATION, 1)) if exif is not None else 1
    except (TypeError, ValueError):
        return 1
    return value if 1 <= value <= 8 else 1


def _exif_for_output(img: Image.Image, fmt: str, keep_gps: bool, notes: list[str]) -> tuple[bytes | None, int]:
    """(EXIF bytes to save or None, orientation applied). Orientation is set to 1, GPS removed unless
    ``keep_gps``; the thumbnail (IFD1, a small unprotected copy) is not carried over."""
    exif = _safe_exif(img)
    if exif is None:
        if "exif" in img.info:
            notes.append("EXIF unreadable; dropped")
        return None, 1
    orientation = _orientation(exif)
    if not len(exif):
        return None, orientation
    if fmt == "TIFF":  # TIFF's "EXIF" is its own tag directory: keep only descriptive tags
        for tag in list(exif):
            if tag not in _TIFF_KEEP_TAGS:
                del exif[tag]
    if _ORIENTATION in exif:
        exif[_ORIENTATION] = 1
    if not keep_gps and _GPS_IFD in exif:
        del exif[_GPS_IFD]
        ifds = getattr(exif, "_ifds", None)  # Pillow caches loaded sub-IFDs and would write them back
        if isinstance(ifds, dict):
            ifds.pop(_GPS_IFD, None)
        notes.append("GPS location removed from EXIF")
    if not len(exif):
        return None, orientation
    try:
        return exif.tobytes(), orientation
    except Exception:  # noqa: BLE001
        notes.append("EXIF could not be re-encoded; dropped")
        return None, orientation


def _xmp_for_output(xmp: Any, keep_gps: bool, notes: list[str]) -> bytes | None:
    """XMP packet with orientation reset to 1; dropped when it holds GPS and not ``keep_gps``."""
    if not xmp:
        return None
    data = xmp.encode("utf-8") if isinstance(xmp, str) else bytes(xmp)
    if not keep_gps and b"GPS" in data:
        notes.append("XMP metadata dropped (it contained GPS location)")
        return None
    data = re.sub(rb'tiff:Orientation="\d+"', b'tiff:Orientation="1"', data)
    return re.sub(rb"<tiff:Orientation>\d+</tiff:Orientation>", b"<tiff:Orientation>1</tiff:Orientation>", data)


def _icc_space(icc: bytes) -> str:
    """Colour space signature of an ICC profile ('RGB', 'GRAY', 'CMYK', 'Lab', ...)."""
    return icc[16:20].decode("latin-1").strip() if len(icc) >= 20 else ""


def _icc_for_output(icc: bytes | None, space: str, notes: list[str]) -> bytes | None:
    """The ICC profile if it describes the output colour space, else None (with a note)."""
    if not icc:
        return None
    found = _icc_space(icc)
    if found != space:
        notes.append(f"ICC profile dropped (it describes {found or 'an unknown space'}, pixels are now {space})")
        return None
    return icc


def _dpi(dpi: Any) -> tuple[float, float] | None:
    try:
        x, y = (float(v) for v in dpi)
    except (TypeError, ValueError):
        return None
    return (x, y) if x > 0 and y > 0 else None


def _format_info(dec: _Decoded) -> dict[str, Any]:
    """Per-format save hints: JPEG progressive/comment, WebP lossless, TIFF compression, PNG text/gamma."""
    info: dict[str, Any] = {}
    src = dec.img.info
    if dec.format == "JPEG":
        if src.get("progressive") or src.get("progression"):
            info["progressive"] = True
        if src.get("comment"):
            info["comment"] = src["comment"]
    elif dec.format == "WEBP":
        info["lossless"] = dec.lossless_webp
    elif dec.format == "TIFF":
        comp = src.get("compression")
        info["compression"] = comp if comp in _TIFF_LOSSLESS else "tiff_lzw"
    elif dec.format == "PNG":
        try:
            text = getattr(dec.img, "text", {}) or {}
        except Exception:  # noqa: BLE001 - unreadable text chunks are simply not carried over
            text = {}
        keep = {k: str(v) for k, v in text.items() if not k.startswith("Raw profile type") and k != "XML:com.adobe.xmp"}
        if keep:
            info["png_text"] = keep
        for key in ("gamma", "srgb", "chromaticity"):
            if key in src:
                info[key] = src[key]
    return info


def _tile_rawmode(img: Image.Image) -> str:
    try:
        args = img.tile[0].args if img.tile else None
    except Exception:  # noqa: BLE001
        return ""
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return args if isinstance(args, str) else ""


def _webp_is_lossless(fp: Any) -> bool:
    """True if the WebP bitstream is VP8L (lossless), read from the RIFF chunks; False if unsure."""
    try:
        pos = fp.tell()
        fp.seek(12)
        for _ in range(64):
            head = fp.read(8)
            if len(head) < 8:
                return False
            fourcc, size = head[:4], struct.unpack("<I", head[4:])[0]
            if fourcc in (b"VP8L", b"VP8 "):
                return fourcc == b"VP8L"
            fp.seek(size + (size & 1), os.SEEK_CUR)
        return False
    except Exception:  # noqa: BLE001
        return False
    finally:
        try:
            fp.seek(pos)
        except Exception:  # noqa: BLE001
            pass


def _bomb_message(pil_message: str, max_pixels: int) -> str:
    m = re.search(r"\((\d+) pixels\)", pil_message)
    if m and int(m.group(1)) > max_pixels:
        return f"{_mp(int(m.group(1)))} megapixels exceeds the {_mp(max_pixels)}-megapixel limit (decompression-bomb guard)"
    return f"image exceeds Pillow's decompression-bomb limit: {pil_message}"


def _mp(pixels: int) -> str:
    x = pixels / 1e6
    if x >= 100:
        return f"{x:.0f}"
    if x >= 1:
        return f"{x:.1f}".rstrip("0").rstrip(".")
    return f"{x:.3g}"


def _describe(e: BaseException) -> str:
    text = str(e).strip()
    return text if text else type(e).__name__


def _one_line(message: str) -> str:
    text = " ".join(str(message).split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


# ----------------------------------------------------------------------------------------------------
# writing


@dataclass
class Written:
    """What :func:`write_photo` left on disk, read back from the written bytes before the rename:
    ``sha256`` and ``size`` of the file, and its ``pixels`` (and ``alpha``) as a scraper decodes them
    (same layout as :class:`Photo`; for JPEG/lossy WebP/HEIF they differ from the pixels given)."""

    sha256: str
    size: int
    pixels: np.ndarray
    alpha: np.ndarray | None


class OutputError(UnlearnableError):
    """A file of the run's own (manifest, state) cannot be written: full disk, read-only folder."""


_LOSSLESS = {"PNG", "TIFF", "BMP"}


def write_photo(path: Path, photo: Photo, pixels: np.ndarray, quality: int = 95,
                may_replace: Callable[[Path], bool] | None = None,
                before_rename: Callable[[str], None] | None = None) -> Written:
    """Save ``pixels`` (same shape and dtype as ``photo.pixels``) with ``photo.alpha`` re-attached, in
    ``photo.format`` with its metadata, atomically, and return what was written (:class:`Written`).

    A uniquely named hidden temp file in the target folder (:data:`TEMP_PATTERN`) is written, flushed
    and fsynced; its size on disk must equal the bytes the encoder wrote, and it is read back and
    decoded: it must decode to the same shape (and, for lossless formats, to exactly ``pixels``), so a
    short write or a full disk never leaves a broken file under ``path``. Only then is it renamed onto
    ``path``; on any failure it is removed and an existing ``path`` is untouched.

    ``may_replace(path)``: called when ``path`` already exists (also a symlink); False refuses to replace
    it (a file the caller did not write). When given and ``path`` does not exist, the temp file is
    hard-linked to ``path`` (fails if something appeared there meanwhile) instead of renamed.
    ``before_rename(sha256)``: called just before the file appears under ``path`` (to record it).
    ``quality`` (1..100) applies to JPEG, lossy WebP and HEIF; JPEG at >= 90 keeps full-resolution
    chroma (4:4:4). Raises :class:`PhotoError`."""
    path = Path(path)
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    img = _to_image(photo, pixels, path)
    params = _save_params(photo, img, int(quality))
    fmt = photo.format
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PhotoError(f"cannot create folder {path.parent}: {e.strerror or e}", path) from None
    tmp: str | None = None
    try:
        fd, tmp = _create_temp(path)
        with os.fdopen(fd, "wb") as f:
            img.save(f, format=fmt, **params)
            f.flush()
            os.fsync(f.fileno())
            _check_size(f.tell(), os.fstat(f.fileno()).st_size)
        written = _read_back(Path(tmp), photo, pixels)
        _place(tmp, path, may_replace, lambda: before_rename(written.sha256) if before_rename else None)
        tmp = None
        _fsync_dir(path.parent)
        return written
    except PhotoError as e:
        e.path = path
        raise
    except Exception as e:  # noqa: BLE001 - encoder or disk failure: one bad file, the batch goes on
        why = e.strerror if isinstance(e, OSError) and e.strerror else _describe(e)
        raise PhotoError(f"cannot write {fmt}: {why}", path) from None
    finally:
        if tmp is not None:
            _remove_quietly(tmp)


def write_bytes_atomic(path: Path, data: bytes, may_replace: Callable[[Path], bool] | None = None) -> None:
    """Write ``data`` to ``path`` like :func:`write_photo` writes a photo (unique hidden temp file,
    fsync, size and content read back and compared, then renamed; the temp is removed on failure).
    Raises :class:`OutputError` with one line naming ``path``."""
    path = Path(path)
    tmp: str | None = None
    try:
        fd, tmp = _create_temp(path)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            _check_size(len(data), os.fstat(f.fileno()).st_size)
        if sha256_file(Path(tmp)) != hashlib.sha256(data).hexdigest():
            raise OSError("the bytes read back differ from the bytes written")
        _place(tmp, path, may_replace, lambda: None)
        tmp = None
        _fsync_dir(path.parent)
    except (OSError, PhotoError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else _describe(e)
        raise OutputError(f"cannot write {path}: {why}") from None
    finally:
        if tmp is not None:
            _remove_quietly(tmp)


def _check_size(expected: int, on_disk: int) -> None:
    if on_disk != expected:
        raise OSError(f"short write: {on_disk} of {expected} bytes reached the disk")


def _read_back(tmp: Path, photo: Photo, pixels: np.ndarray) -> Written:
    """Hash and decode the written temp file; refuse one that is incomplete or decodes wrongly."""
    digest, size = sha256_file(tmp), os.stat(tmp).st_size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            back = _read_photo(tmp, pixels.shape[0] * pixels.shape[1] + 1, True)
    except Exception as e:  # noqa: BLE001 - whatever the decoder says, the file is not usable
        raise PhotoError(f"the written {photo.format} file does not decode ({_describe(e)}); nothing was "
                         "replaced (disk full or failing?)") from None
    if back.pixels.shape != pixels.shape or back.pixels.dtype != pixels.dtype:
        raise PhotoError(f"the written file decodes to {back.pixels.dtype} {tuple(back.pixels.shape)}, "
                         f"not {pixels.dtype} {tuple(pixels.shape)}; nothing was replaced")
    lossless = photo.format in _LOSSLESS or (photo.format == "WEBP" and photo.info.get("lossless"))
    if lossless and (not np.array_equal(back.pixels, pixels) or (photo.alpha is not None and (
            back.alpha is None or not np.array_equal(back.alpha, photo.alpha)))):
        raise PhotoError(f"the written {photo.format} file decodes to other pixels than were encoded; "
                         "nothing was replaced")
    return Written(digest, size, back.pixels, back.alpha)


def _place(tmp: str, path: Path, may_replace: Callable[[Path], bool] | None,
           before: Callable[[], None]) -> None:
    """Move the finished temp file to ``path``, refusing to replace a file ``may_replace`` rejects."""
    if may_replace is not None:
        exists = os.path.lexists(path)
        if exists and not may_replace(path):
            raise PhotoError(f"{path} exists and was not written by unlearnable; it was left untouched")
        if not exists:
            before()
            try:
                os.link(tmp, path)  # no-clobber: fails if a file appeared at path meanwhile
            except FileExistsError:
                raise PhotoError(f"{path} appeared during the run (not written by unlearnable); "
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


def _to_image(photo: Photo, pixels: np.ndarray, path: Path) -> Image.Image:
    ref = photo.pixels
    if not isinstance(pixels, np.ndarray) or pixels.shape != ref.shape or pixels.dtype != ref.dtype:
        got = f"{pixels.dtype} {tuple(pixels.shape)}" if isinstance(pixels, np.ndarray) else type(pixels).__name__
        raise PhotoError(f"pixels must be {ref.dtype} {tuple(ref.shape)} like the photo read, got {got}", path)
    alpha = photo.alpha
    if alpha is not None and (alpha.shape != ref.shape[:2] or alpha.dtype != np.uint8):
        raise PhotoError(f"alpha must be uint8 {tuple(ref.shape[:2])}, got {alpha.dtype} {tuple(alpha.shape)}", path)
    if pixels.dtype == np.uint16:
        if pixels.shape[2] != 1 or alpha is not None or photo.format not in ("PNG", "TIFF"):
            raise PhotoError(f"16-bit pixels can only be written as grayscale PNG or TIFF, not {photo.format}", path)
        return Image.fromarray(np.ascontiguousarray(pixels[:, :, 0]))
    if pixels.dtype != np.uint8 or pixels.shape[2] not in (1, 3):
        raise PhotoError(f"pixels must be uint8 (H, W, 1 or 3), got {pixels.dtype} {tuple(pixels.shape)}", path)
    if alpha is not None:
        return Image.fromarray(np.ascontiguousarray(np.concatenate([pixels, alpha[:, :, None]], axis=2)))
    return Image.fromarray(np.ascontiguousarray(pixels if pixels.shape[2] == 3 else pixels[:, :, 0]))


def _save_params(photo: Photo, img: Image.Image, quality: int) -> dict[str, Any]:
    info, fmt = photo.info, photo.format
    icc, exif, dpi, xmp = info.get("icc_profile"), info.get("exif"), info.get("dpi"), info.get("xmp")
    p: dict[str, Any] = {}
    if icc and fmt != "BMP":
        p["icc_profile"] = icc
    if fmt == "JPEG":
        p.update(quality=quality, optimize=False)
        if quality >= 90:
            p["subsampling"] = 0  # 4:4:4: chroma noise survives
        if info.get("progressive"):
            p["progressive"] = True
        for key in ("exif", "dpi", "xmp", "comment"):
            if info.get(key):
                p[key] = info[key]
    elif fmt == "PNG":
        p.update(optimize=False, compress_level=6)
        if exif:
            p["exif"] = exif
        if dpi:
            p["dpi"] = dpi
        pnginfo = _png_chunks(info, xmp)
        if pnginfo is not None:
            p["pnginfo"] = pnginfo
    elif fmt == "WEBP":
        if info.get("lossless"):
            p.update(lossless=True, exact=True)
        else:
            p.update(quality=quality)
        for key in ("exif", "xmp"):
            if info.get(key):
                p[key] = info[key]
    elif fmt == "TIFF":
        p["compression"] = info.get("compression", "tiff_lzw")
        if dpi:
            p["dpi"] = dpi
        if exif or xmp:
            tags = Image.Exif()
            if exif:
                tags.load(exif)
            if xmp:
                tags[_XMP_TAG] = xmp
            p["exif"] = tags
    elif fmt == "BMP":
        if dpi:
            p["dpi"] = tuple(round(v) for v in dpi)
    elif fmt == "HEIF":
        p["quality"] = quality
        for key in ("exif", "xmp"):
            if info.get(key):
                p[key] = info[key]
    return p


def _png_chunks(info: dict, xmp: bytes | None) -> PngImagePlugin.PngInfo | None:
    chunks = PngImagePlugin.PngInfo()
    used = False
    for key, value in info.get("png_text", {}).items():
        chunks.add_text(key, value)
        used = True
    if xmp:
        chunks.add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8", "replace"))
        used = True
    if "srgb" in info and "icc_profile" not in info:
        chunks.add(b"sRGB", bytes([int(info["srgb"]) & 0xFF]))
        used = True
    if "gamma" in info:
        chunks.add(b"gAMA", struct.pack(">I", round(float(info["gamma"]) * 100000)))
        used = True
    if "chromaticity" in info and len(info["chromaticity"]) == 8:
        chunks.add(b"cHRM", struct.pack(">8I", *(round(float(v) * 100000) for v in info["chromaticity"])))
        used = True
    return chunks if used else None


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


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of the file's bytes, read in 1 MiB blocks. Raises :class:`PhotoError` if unreadable."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise PhotoError(f"cannot read file: {e.strerror or e}", Path(path)) from None
    return h.hexdigest()
