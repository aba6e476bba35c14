"""A photo in memory (:class:`Photo`), its one-line error (:class:`PhotoError`) and the file formats
that count as photos.

Why: ``decode`` produces a :class:`Photo`, ``encode`` writes one back and ``files`` finds the files
that may hold one; the record and the format tables they share live here, so none of those modules
depends on another for them.

Formats: JPEG (MPO, the multi-picture JPEG of cameras and phones, is read as its main picture),
PNG, WebP, TIFF, BMP, and HEIC/HEIF when the optional ``pillow-heif`` is installed (iPhone photos).
Deviation: GIF is recognised but refused (256 colours would erase the noise; see
:data:`REFUSED_EXTENSIONS`).

Pixels are uint8 in [0, 255] (uint16 in [0, 65535] for 16-bit grayscale), laid out (H, W, C).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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
# Extensions of formats we recognise but refuse (GIF: 256 colours erase the noise). A folder walk with
# ``include_refused`` lists them as photos, so reading them fails with the reason, as for a named file.
REFUSED_EXTENSIONS: tuple[str, ...] = (".gif",)
# Formats we can write back as themselves; MPO (multi-picture JPEG from cameras/phones) is read as JPEG.
FORMATS = {"JPEG", "PNG", "WEBP", "TIFF", "BMP"} | ({"HEIF"} if HEIF_SUPPORTED else set())
# Formats whose written file must decode to exactly the pixels encoded (and lossless WebP).
LOSSLESS = {"PNG", "TIFF", "BMP"}
_MAX_MESSAGE = 300


class PhotoError(UnlearnableError):
    """One photo cannot be read or written. ``str(e)`` is one line about that file (without its path,
    which is in ``e.path`` when known); the batch goes on."""

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(one_line(message))
        self.path = path


@dataclass
class Photo:
    """A decoded photo. ``pixels``: (H, W, C) upright, C = 1 (grayscale) or 3 (RGB), uint8 in [0, 255]
    or uint16 in [0, 65535] (16-bit grayscale). ``alpha``: (H, W) of the same dtype, or None; it is
    written back untouched. ``format``: the PIL format it is saved back as (JPEG, PNG, WEBP, TIFF, BMP,
    HEIF). ``source_mode``: the PIL mode before conversion. ``info``: metadata for ``encode.write_photo``.
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


def one_line(message: str) -> str:
    """``message`` on one line (whitespace runs collapsed), cut to 300 characters."""
    text = " ".join(str(message).split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"
