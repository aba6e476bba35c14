"""Writing a protected photo back in its source's format, size and metadata, atomically and checked.

Why: the protected copy replaces the original wherever the user publishes it, so it must be the same
kind of file (format, size, colour profile, EXIF, DPI) and the encoder must not erase the noise. Per
format (Pillow encoders):

- JPEG (ITU-T T.81 / JFIF): ``quality`` (95 by default), no optimisation pass; at quality >= 90 the
  chroma is kept at full resolution (4:4:4, ``subsampling=0``) so the colour noise survives; below
  90 Pillow's default 4:2:0. Progressive stays progressive; EXIF, DPI, XMP, comment kept;
- PNG (ISO/IEC 15948): ``compress_level=6``, no optimisation; text chunks, XMP (iTXt), sRGB intent
  (when no ICC profile), gAMA and cHRM carried over; 16-bit grayscale stays 16-bit;
- WebP: lossless sources stay lossless (``exact=True`` keeps the RGB under transparent pixels),
  lossy ones are written at ``quality``;
- TIFF (TIFF 6.0): the source's lossless compression (LZW for anything else), descriptive tags only;
- BMP: DPI rounded to integers (the format stores pixels per metre); no ICC profile;
- HEIF (ISO/IEC 23008-12, with ``pillow-heif``): ``quality``, EXIF and XMP.

The write goes through :func:`unlearnable.data.storage.atomic_file` (unique temp file in the target
folder, fsync, size check, rename or no-clobber link, temp removed on failure). Before the rename the
temp file is read back once, hashed and decoded: it must decode to the same shape and dtype (and, for
lossless formats, to exactly the pixels encoded), so a short write or a full disk never leaves a
broken file under the final name. That decode is returned (:class:`Written`): it is what a scraper
gets, so callers measure the change of the written file, not of the pixels they handed in.

Deviation: the alpha channel is written back unchanged (the noise is added to the colour only).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, PngImagePlugin

from ..storage import NotOursError, atomic_file, describe, read_hashed
from .decode import read_photo
from .photo import LOSSLESS, Photo, PhotoError

_XMP_TAG = 700


@dataclass
class Written:
    """What :func:`write_photo` left on disk, read back from the written bytes before the rename:
    ``sha256`` and ``size`` of the file, and its ``pixels`` (and ``alpha``) as a scraper decodes them
    (same layout as :class:`Photo`; for JPEG/lossy WebP/HEIF they differ from the pixels given)."""

    sha256: str
    size: int
    pixels: np.ndarray
    alpha: np.ndarray | None


def write_photo(path: Path, photo: Photo, pixels: np.ndarray, quality: int = 95,
                may_replace: Callable[[Path], bool] | None = None,
                before_rename: Callable[[str], None] | None = None) -> Written:
    """Save ``pixels`` (same shape and dtype as ``photo.pixels``) with ``photo.alpha`` re-attached, in
    ``photo.format`` with its metadata, atomically, and return what was written (:class:`Written`).

    A uniquely named hidden temp file in the target folder is written, flushed and fsynced; its size on
    disk must equal the bytes the encoder wrote, and it is read back and decoded: it must decode to the
    same shape (and, for lossless formats, to exactly ``pixels``), so a short write or a full disk never
    leaves a broken file under ``path``. Only then is it renamed onto ``path``; on any failure it is
    removed and an existing ``path`` is untouched.

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
    try:
        return atomic_file(path, lambda f: img.save(f, format=fmt, **params),
                           lambda tmp: _read_back(tmp, photo, pixels), may_replace,
                           lambda written: before_rename(written.sha256) if before_rename else None)
    except PhotoError as e:
        e.path = path
        raise
    except NotOursError as e:
        raise PhotoError(str(e), path) from None
    except Exception as e:  # noqa: BLE001 - encoder or disk failure: one bad file, the batch goes on
        why = e.strerror if isinstance(e, OSError) and e.strerror else describe(e)
        raise PhotoError(f"cannot write {fmt}: {why}", path) from None


def _read_back(tmp: Path, photo: Photo, pixels: np.ndarray) -> Written:
    """Hash and decode the written temp file, from one read of it when it fits in memory; refuse one
    that is incomplete or decodes wrongly."""
    digest, size, data = read_hashed(tmp)
    try:
        back = read_photo(tmp, pixels.shape[0] * pixels.shape[1] + 1, True, data)
    except Exception as e:  # noqa: BLE001 - whatever the decoder says, the file is not usable
        raise PhotoError(f"the written {photo.format} file does not decode ({describe(e)}); nothing was "
                         "replaced (disk full or failing?)") from None
    del data
    if back.pixels.shape != pixels.shape or back.pixels.dtype != pixels.dtype:
        raise PhotoError(f"the written file decodes to {back.pixels.dtype} {tuple(back.pixels.shape)}, "
                         f"not {pixels.dtype} {tuple(pixels.shape)}; nothing was replaced")
    lossless = photo.format in LOSSLESS or (photo.format == "WEBP" and photo.info.get("lossless"))
    if lossless and (not np.array_equal(back.pixels, pixels) or (photo.alpha is not None and (
            back.alpha is None or not np.array_equal(back.alpha, photo.alpha)))):
        raise PhotoError(f"the written {photo.format} file decodes to other pixels than were encoded; "
                         "nothing was replaced")
    return Written(digest, size, back.pixels, back.alpha)


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
