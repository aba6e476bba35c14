"""Photo metadata carried from an original to its protected copy: EXIF, XMP, ICC profile, DPI and
per-format save hints.

Why: a protected photo should look and behave like the original (colours, resolution, camera
fields), but it must not leak what the user did not mean to publish, nor contradict its new pixels.
So the pixels are decoded upright and the metadata is adjusted to match (:func:`for_output`):

- EXIF (CIPA DC-008, Exif 2.3): Orientation (tag 0x0112) reset to 1, since ``decode`` applies it to
  the pixels; the GPS IFD (0x8825) removed unless ``keep_gps``; the thumbnail (IFD1, a small
  unprotected copy) not carried over. TIFF's "EXIF" is its own tag directory: only descriptive tags
  are kept (the rest describe the old pixel layout or embed other images, e.g. Photoshop layers);
- XMP (ISO 16684-1): ``tiff:Orientation`` reset to 1; the whole packet dropped when it mentions GPS
  and not ``keep_gps`` (a text search: deliberately coarse, it may drop a packet that only names GPS);
- ICC profile (ICC.1:2010): kept when it describes the output colour space (RGB or GRAY), else dropped
  with a note; after a colour-managed CMYK conversion ``decode`` supplies the sRGB profile instead;
- DPI swapped with the axes when the orientation transposed the image;
- save hints: JPEG progressive and comment, WebP lossless (from its VP8L chunk), TIFF compression
  (lossless ones kept, anything else becomes LZW), PNG text chunks, gamma, sRGB intent, chromaticity.

Every change is recorded in the photo's ``notes`` (for the manifest). Unreadable metadata is dropped
with a note, never fatal.
"""
from __future__ import annotations

import re
from typing import Any

from PIL import Image

# TIFF tags worth carrying over; the rest describe the old pixel layout (strips, tiles, sample format)
# or embed other images (Photoshop layers, thumbnails) that would keep an unprotected copy in the file.
_TIFF_KEEP_TAGS = {269, 270, 271, 272, 274, 285, 305, 306, 315, 316, 33432, 0x8769, 0x8825}
_TIFF_LOSSLESS = {"raw", "tiff_lzw", "tiff_adobe_deflate", "tiff_deflate", "packbits"}
_ORIENTATION, _GPS_IFD = 0x0112, 0x8825


def for_output(img: Image.Image, fmt: str, icc: bytes | None, space: str, keep_gps: bool, lossless_webp: bool,
               notes: list[str]) -> tuple[dict[str, Any], int]:
    """(metadata to save the protected copy with, EXIF orientation 1..8 the pixels must be turned by).
    ``img``: the opened source; ``fmt``: the format it is saved back as; ``icc``/``space``: the profile
    of the converted pixels and their colour space ('RGB' | 'GRAY'); notes are appended to ``notes``."""
    info: dict[str, Any] = {}
    icc = icc_for_output(icc, space, notes)
    if icc:
        info["icc_profile"] = icc
    exif, orientation = exif_for_output(img, fmt, keep_gps, notes)
    if exif:
        info["exif"] = exif
    xmp = xmp_for_output(img.info.get("xmp"), keep_gps, notes)
    if xmp:
        info["xmp"] = xmp
    dpi = _dpi(img.info.get("dpi"))
    if dpi:
        info["dpi"] = (dpi[1], dpi[0]) if orientation in (5, 6, 7, 8) else dpi
    info.update(_format_info(img, fmt, lossless_webp))
    return info, orientation


def orientation_of(img: Image.Image) -> int:
    """EXIF orientation 1..8 of an opened image (1 when absent, unreadable or out of range)."""
    return _orientation(_safe_exif(img))


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


def exif_for_output(img: Image.Image, fmt: str, keep_gps: bool, notes: list[str]) -> tuple[bytes | None, int]:
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


def xmp_for_output(xmp: Any, keep_gps: bool, notes: list[str]) -> bytes | None:
    """XMP packet with orientation reset to 1; dropped when it holds GPS and not ``keep_gps``."""
    if not xmp:
        return None
    data = xmp.encode("utf-8") if isinstance(xmp, str) else bytes(xmp)
    if not keep_gps and b"GPS" in data:
        notes.append("XMP metadata dropped (it contained GPS location)")
        return None
    data = re.sub(rb'tiff:Orientation="\d+"', b'tiff:Orientation="1"', data)
    return re.sub(rb"<tiff:Orientation>\d+</tiff:Orientation>", b"<tiff:Orientation>1</tiff:Orientation>", data)


def icc_space(icc: bytes) -> str:
    """Colour space signature of an ICC profile ('RGB', 'GRAY', 'CMYK', 'Lab', ...)."""
    return icc[16:20].decode("latin-1").strip() if len(icc) >= 20 else ""


def icc_for_output(icc: bytes | None, space: str, notes: list[str]) -> bytes | None:
    """The ICC profile if it describes the output colour space, else None (with a note)."""
    if not icc:
        return None
    found = icc_space(icc)
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


def _format_info(img: Image.Image, fmt: str, lossless_webp: bool) -> dict[str, Any]:
    """Per-format save hints: JPEG progressive/comment, WebP lossless, TIFF compression, PNG text/gamma."""
    info: dict[str, Any] = {}
    src = img.info
    if fmt == "JPEG":
        if src.get("progressive") or src.get("progression"):
            info["progressive"] = True
        if src.get("comment"):
            info["comment"] = src["comment"]
    elif fmt == "WEBP":
        info["lossless"] = lossless_webp
    elif fmt == "TIFF":
        comp = src.get("compression")
        info["compression"] = comp if comp in _TIFF_LOSSLESS else "tiff_lzw"
    elif fmt == "PNG":
        try:
            text = getattr(img, "text", {}) or {}
        except Exception:  # noqa: BLE001 - unreadable text chunks are simply not carried over
            text = {}
        keep = {k: str(v) for k, v in text.items() if not k.startswith("Raw profile type") and k != "XML:com.adobe.xmp"}
        if keep:
            info["png_text"] = keep
        for key in ("gamma", "srgb", "chromaticity"):
            if key in src:
                info[key] = src[key]
    return info
