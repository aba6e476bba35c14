"""Reading photo files faithfully into numpy: upright pixels, alpha, and what is needed to save them back.

Why: the noise engine only sees pixels, and a protected copy must look like the original. So every
file is validated before it is decoded, decoded the way a viewer shows it, and every failure is one
:class:`~unlearnable.data.photos.photo.PhotoError` line for that file (the batch goes on):

- validation: empty file, not an image, unsupported format (GIF refused: 256 colours erase the noise),
  animated or multi-page images, and the *decompression-bomb guard*: width × height above
  ``max_pixels`` is refused from the header, before any pixel is decoded (Pillow's own limit raises
  at twice its ``MAX_IMAGE_PIXELS``; its warning below that is silenced: our limit decides);
- pixel modes: 8-bit L/RGB kept; LA/RGBA split into pixels and an alpha that is written back
  untouched; palette expanded to RGB(A) (not re-quantised, so the noise survives); bilevel to 8-bit
  grayscale; CMYK to sRGB through its embedded ICC profile (LittleCMS), else Pillow's plain formula;
  YCbCr/LAB/HSV to RGB; 16-bit grayscale kept as uint16, 32-bit integer grayscale stored as 16-bit
  when its values fit; 32-bit float refused;
- EXIF orientation (CIPA DC-008) applied to the pixels, as ``ImageOps.exif_transpose`` does; the
  metadata is adjusted to match in ``metadata``;
- previews (:func:`read_preview`): the whole photo squashed to a square, JPEGs decoded at reduced
  scale first (libjpeg DCT scaling), then downscaled with Lanczos antialiasing.

:func:`read_photo` and :func:`read_preview` take the file's bytes when the caller already read them
(``data=``, e.g. to hash and decode one read of the file); the file is then not opened again.

Deviation: Pillow decodes 16-bit colour (RGB, RGBA, LA, CMYK) as 8-bit; that is noted, not refused.
Pixels are uint8 in [0, 255] (uint16 in [0, 65535] for 16-bit grayscale), laid out (H, W, C).
"""
from __future__ import annotations

import io
import os
import re
import stat
import struct
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
from PIL import Image

from ..storage import describe
from . import metadata
from .photo import FORMATS, Photo, PhotoError


def read_photo(path: Path, max_pixels: int = 150_000_000, keep_gps: bool = False,
               data: bytes | None = None) -> Photo:
    """Decode ``path`` into an upright :class:`Photo` (see its docstring for shapes and dtypes).

    EXIF orientation is applied to the pixels and reset to 1 in ``info['exif']``; the GPS IFD (and XMP
    that mentions GPS) is removed unless ``keep_gps``. Images over ``max_pixels`` (width x height) are
    refused before decoding. ``data``: the file's bytes, already read (``path`` then only names the
    file in errors); else the file is opened, only for reading. Raises :class:`PhotoError`.
    """
    path = Path(path)
    return _guarded(path, lambda: _read_photo(path, max_pixels, keep_gps, data))


def _read_photo(path: Path, max_pixels: int, keep_gps: bool, data: bytes | None = None) -> Photo:
    with _Decoded(path, max_pixels, data=data) as dec:
        notes = dec.notes
        pixels, alpha, space, icc = _convert(dec, notes)
        info, orientation = metadata.for_output(dec.img, dec.format, icc, space, keep_gps, dec.lossless_webp, notes)
        fmt, mode = dec.format, dec.source_mode
    return Photo(_orient(pixels, orientation), None if alpha is None else _orient(alpha, orientation), fmt, mode, info, notes)


def read_preview(path: Path, size: int, max_pixels: int = 150_000_000, data: bytes | None = None) -> np.ndarray:
    """(size, size, 3) uint8 RGB upright preview of the whole photo, squashed to a square (aspect not
    kept), downscaled with antialiasing; JPEGs are decoded at reduced scale first. Grayscale becomes
    three equal channels, alpha is dropped, 16-bit is scaled to 8-bit. Same checks, ``data`` and
    :class:`PhotoError` as :func:`read_photo`."""
    if size < 1:
        raise ValueError(f"preview size must be >= 1, got {size}")
    path = Path(path)
    return _guarded(path, lambda: _read_preview(path, size, max_pixels, data))


def to_rgb8(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 1|3) uint8 or uint16 -> (H, W, 3) uint8: 16-bit rounded to the nearest 8-bit level,
    grayscale replicated to three channels (what a model that expects RGB sees)."""
    if pixels.dtype == np.uint16:
        pixels = ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return pixels


def _read_preview(path: Path, size: int, max_pixels: int, data: bytes | None = None) -> np.ndarray:
    with _Decoded(path, max_pixels, draft=(size, size), data=data) as dec:
        pixels, _, _, _ = _convert(dec, [])
        orientation = metadata.orientation_of(dec.img)
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
        raise PhotoError(f"cannot read photo: {type(e).__name__}: {describe(e)}", path) from None


class _Decoded:
    """Context manager: open ``path`` read-only (or ``data``, its bytes), validate it, decode it
    (``.img`` is loaded)."""

    def __init__(self, path: Path, max_pixels: int, draft: tuple[int, int] | None = None,
                 data: bytes | None = None) -> None:
        self.path, self.max_pixels, self.draft, self.data = path, max_pixels, draft, data
        self.notes: list[str] = []
        self.lossless_webp = False

    def __enter__(self) -> _Decoded:
        path = self.path
        if self.data is not None:
            if not self.data:
                raise PhotoError("empty file (0 bytes)", path)
            self._fp: BinaryIO = io.BytesIO(self.data)
        else:
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
            raise self._fail(f"truncated or corrupt image data: {describe(e)}") from None
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
            raise self._fail(f"truncated or corrupt image data: {describe(e)}") from None
        if ";16" in rawmode and img.mode in ("RGB", "RGBA", "LA", "CMYK"):
            self.notes.append("16 bits per channel reduced to 8 (Pillow decodes 16-bit colour as 8-bit)")

    def _validate(self, img: Image.Image) -> None:
        fmt = img.format or "unknown"
        if fmt == "GIF":
            raise self._fail("GIF is limited to 256 colours, which would erase the noise; convert it to PNG first")
        if fmt == "MPO":  # camera/phone JPEG with extra pictures (previews, depth maps): keep the main one
            self.format = "JPEG"
        elif fmt in FORMATS:
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
        raise PhotoError(f"cannot convert pixel mode {dec.img.mode}: {describe(e)}", dec.path) from None


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
    if icc and metadata.icc_space(icc) == "CMYK":
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
