"""unlearnable.data.photos (files, decode, metadata, encode) and unlearnable.data.storage: discovery,
faithful read/write, one-line errors for bad photo files, atomic writes and hashes."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFile, ImageOps, JpegImagePlugin

from unlearnable.data import storage
from unlearnable.data.photos.decode import read_photo, read_preview
from unlearnable.data.photos.encode import write_photo
from unlearnable.data.photos.files import UsageError, discover
from unlearnable.data.photos.photo import PHOTO_EXTENSIONS, Photo, PhotoError
from unlearnable.data.storage import sha256_file
from unlearnable.errors import UnlearnableError

EXT = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}


def noisy(h: int = 48, w: int = 64, c: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (h, w, c) if c > 1 else (h, w)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def smooth(h: int = 48, w: int = 64) -> np.ndarray:
    """A gradient: survives JPEG/WebP well enough to compare pixel values."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (w + h - 2)], axis=2).astype(np.uint8)


def save(img: Image.Image, path: Path, fmt: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, **kw)
    return path


def reopen(path: Path) -> Image.Image:
    img = Image.open(path)
    img.load()
    return img


def gps_exif(orientation: int | None = None) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "Canon"  # Make
    if orientation is not None:
        exif[0x0112] = orientation
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (48.0, 51.0, 29.0)
    gps[3], gps[4] = "E", (2.0, 17.0, 40.0)
    return exif


SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


# ---------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "BMP"])
def test_round_trip_keeps_format_size_and_lossless_pixels(tmp_path: Path, fmt: str) -> None:
    pixels = smooth() if fmt in ("JPEG", "WEBP") else noisy()
    src = save(Image.fromarray(pixels), tmp_path / "in" / f"photo{EXT[fmt]}", fmt)
    photo = read_photo(src)
    assert photo.format == fmt and photo.size == (64, 48)
    assert photo.pixels.shape == (48, 64, 3) and photo.pixels.dtype == np.uint8 and photo.alpha is None
    dst = tmp_path / "out" / "deep" / f"photo{EXT[fmt]}"
    write_photo(dst, photo, photo.pixels)
    back = reopen(dst)
    assert back.format == fmt and back.size == (64, 48)
    if fmt in ("JPEG", "WEBP"):
        assert np.abs(np.asarray(back.convert("RGB"), dtype=int) - pixels).mean() < 4
    else:
        assert np.array_equal(np.asarray(back.convert("RGB")), pixels)


def test_lossless_webp_stays_lossless(tmp_path: Path) -> None:
    pixels = noisy()
    src = save(Image.fromarray(pixels), tmp_path / "a.webp", "WEBP", lossless=True)
    photo = read_photo(src)
    assert photo.info["lossless"] is True
    write_photo(tmp_path / "out" / "a.webp", photo, photo.pixels)
    assert np.array_equal(np.asarray(reopen(tmp_path / "out" / "a.webp").convert("RGB")), pixels)


def test_jpeg_high_quality_keeps_full_chroma(tmp_path: Path) -> None:
    photo = read_photo(save(Image.fromarray(smooth()), tmp_path / "a.jpg"))
    write_photo(tmp_path / "hi.jpg", photo, photo.pixels, quality=95)
    write_photo(tmp_path / "lo.jpg", photo, photo.pixels, quality=75)
    assert JpegImagePlugin.get_sampling(reopen(tmp_path / "hi.jpg")) == 0  # 4:4:4
    assert JpegImagePlugin.get_sampling(reopen(tmp_path / "lo.jpg")) != 0


def test_reading_never_changes_the_original(tmp_path: Path) -> None:
    src = save(Image.fromarray(smooth()), tmp_path / "a.jpg", exif=gps_exif(orientation=6).tobytes())
    before, mtime = sha256_file(src), src.stat().st_mtime_ns
    photo = read_photo(src)
    read_preview(src, 16)
    write_photo(tmp_path / "out" / "a.jpg", photo, photo.pixels)
    assert sha256_file(src) == before and src.stat().st_mtime_ns == mtime


# ---------------------------------------------------------------------------------------------- metadata


def test_exif_rotated_jpeg_comes_back_upright(tmp_path: Path) -> None:
    src = save(Image.fromarray(smooth()), tmp_path / "r.jpg", exif=gps_exif(orientation=6).tobytes())
    photo = read_photo(src)
    assert photo.size == (48, 64) and photo.pixels.shape == (64, 48, 3)
    assert np.array_equal(photo.pixels, np.asarray(ImageOps.exif_transpose(reopen(src))))
    dst = tmp_path / "out" / "r.jpg"
    write_photo(dst, photo, photo.pixels)
    back = reopen(dst)
    assert back.size == (48, 64) and back.getexif()[0x0112] == 1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_exif_transpose(tmp_path: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    src = save(Image.fromarray(noisy(6, 9)), tmp_path / "o.png", exif=exif.tobytes())
    photo = read_photo(src)
    assert np.array_equal(photo.pixels, np.asarray(ImageOps.exif_transpose(reopen(src))))
    assert read_photo(src).info["exif"]  # orientation tag kept, set to 1
    write_photo(tmp_path / "out.png", photo, photo.pixels)
    assert reopen(tmp_path / "out.png").getexif()[0x0112] == 1


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_gps_removed_by_default_and_kept_on_request(tmp_path: Path, fmt: str) -> None:
    src = save(Image.fromarray(smooth()), tmp_path / f"g{EXT[fmt]}", fmt, exif=gps_exif().tobytes())
    assert reopen(src).getexif().get_ifd(0x8825)  # the fixture really has GPS

    photo = read_photo(src)
    assert any("GPS" in n for n in photo.notes)
    write_photo(tmp_path / "out" / src.name, photo, photo.pixels)
    exif = reopen(tmp_path / "out" / src.name).getexif()
    assert 0x8825 not in exif and not exif.get_ifd(0x8825)
    assert exif[0x010F] == "Canon"  # everything else kept

    kept = read_photo(src, keep_gps=True)
    write_photo(tmp_path / "kept" / src.name, kept, kept.pixels)
    gps = reopen(tmp_path / "kept" / src.name).getexif().get_ifd(0x8825)
    assert gps[1] == "N" and tuple(float(v) for v in gps[2]) == (48.0, 51.0, 29.0)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_icc_profile_preserved(tmp_path: Path, fmt: str) -> None:
    src = save(Image.fromarray(smooth()), tmp_path / f"c{EXT[fmt]}", fmt, icc_profile=SRGB_ICC)
    photo = read_photo(src)
    assert photo.info["icc_profile"] == SRGB_ICC
    write_photo(tmp_path / "out" / src.name, photo, photo.pixels)
    assert reopen(tmp_path / "out" / src.name).info.get("icc_profile") == SRGB_ICC


def test_dpi_preserved(tmp_path: Path) -> None:
    src = save(Image.fromarray(noisy()), tmp_path / "d.png", dpi=(300, 300))
    photo = read_photo(src)
    write_photo(tmp_path / "out.png", photo, photo.pixels)
    assert tuple(round(v) for v in reopen(tmp_path / "out.png").info["dpi"]) == (300, 300)


# ---------------------------------------------------------------------------------------------- pixel modes


def test_cmyk_jpeg_read_as_rgb_and_its_profile_dropped(tmp_path: Path) -> None:
    src = save(Image.new("CMYK", (64, 48), (0, 255, 255, 0)), tmp_path / "k.jpg", icc_profile=SRGB_ICC)
    photo = read_photo(src)
    assert photo.source_mode == "CMYK" and photo.pixels.shape == (48, 64, 3)
    assert photo.pixels[..., 0].mean() > 200 and photo.pixels[..., 1:].mean() < 60  # red
    assert "icc_profile" not in photo.info  # an RGB profile on CMYK data is meaningless after conversion
    assert any("CMYK" in n for n in photo.notes)
    write_photo(tmp_path / "out.jpg", photo, photo.pixels)
    assert reopen(tmp_path / "out.jpg").mode == "RGB"


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_grayscale_round_trips_as_uint16(tmp_path: Path, fmt: str) -> None:
    values = np.random.default_rng(1).integers(0, 65536, size=(48, 64), dtype=np.uint16)
    src = save(Image.fromarray(values), tmp_path / f"g16{EXT[fmt]}", fmt)
    photo = read_photo(src)
    assert photo.pixels.dtype == np.uint16 and photo.pixels.shape == (48, 64, 1)
    assert np.array_equal(photo.pixels[..., 0], values)
    write_photo(tmp_path / "out" / src.name, photo, photo.pixels)
    assert np.array_equal(np.asarray(reopen(tmp_path / "out" / src.name)).astype(np.uint16), values)


def test_palette_png_becomes_rgb_with_a_note(tmp_path: Path) -> None:
    pal = Image.fromarray(noisy()).quantize(16)
    src = save(pal, tmp_path / "p.png")
    photo = read_photo(src)
    assert photo.source_mode == "P" and photo.pixels.shape == (48, 64, 3)
    assert np.array_equal(photo.pixels, np.asarray(pal.convert("RGB")))
    assert any("palette" in n for n in photo.notes)
    write_photo(tmp_path / "out.png", photo, photo.pixels)
    assert reopen(tmp_path / "out.png").mode == "RGB"


def test_rgba_alpha_preserved_exactly(tmp_path: Path) -> None:
    rgba = noisy(c=4, seed=3)
    src = save(Image.fromarray(rgba), tmp_path / "a.png")
    photo = read_photo(src)
    assert photo.pixels.shape == (48, 64, 3) and np.array_equal(photo.alpha, rgba[..., 3])
    noised = np.clip(photo.pixels.astype(int) + 3, 0, 255).astype(np.uint8)
    write_photo(tmp_path / "out.png", photo, noised)
    back = np.asarray(reopen(tmp_path / "out.png"))
    assert np.array_equal(back[..., 3], rgba[..., 3]) and np.array_equal(back[..., :3], noised)


def test_la_and_bilevel_become_grayscale(tmp_path: Path) -> None:
    la = save(Image.fromarray(noisy(c=2)), tmp_path / "la.png")
    photo = read_photo(la)
    assert photo.pixels.shape == (48, 64, 1) and photo.alpha is not None
    bw = save(Image.fromarray(noisy(c=1)).convert("1"), tmp_path / "bw.png")
    photo = read_photo(bw)
    assert photo.pixels.shape == (48, 64, 1) and set(np.unique(photo.pixels)) <= {0, 255}
    write_photo(tmp_path / "out.png", photo, photo.pixels)
    assert reopen(tmp_path / "out.png").mode == "L"


def test_unsupported_pixel_modes_name_the_mode(tmp_path: Path) -> None:
    f = save(Image.fromarray(np.random.default_rng(0).random((8, 8), dtype=np.float32)), tmp_path / "f.tif")
    with pytest.raises(PhotoError, match="mode F"):
        read_photo(f)
    big = save(Image.fromarray(np.full((8, 8), 70000, dtype=np.int32)), tmp_path / "i.tif")
    with pytest.raises(PhotoError, match="mode I"):
        read_photo(big)
    ok = save(Image.fromarray(np.full((8, 8), 60000, dtype=np.int32)), tmp_path / "i16.tif")
    assert read_photo(ok).pixels.dtype == np.uint16


# ---------------------------------------------------------------------------------------------- bad files


def _animated(path: Path, fmt: str) -> Path:
    frames = [Image.new("RGB", (16, 16), (40 * i, 0, 0)) for i in range(3)]
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:])
    return path


@pytest.mark.parametrize("name,fmt,match", [
    ("anim.gif", "GIF", "GIF"),
    ("anim.webp", "WEBP", "animated image with 3 frames"),
    ("anim.png", "PNG", "animated image with 3 frames"),
    ("pages.tif", "TIFF", "multi-page TIFF with 3 pages"),
])
def test_animated_and_gif_refused(tmp_path: Path, name: str, fmt: str, match: str) -> None:
    with pytest.raises(PhotoError, match=match):
        read_photo(_animated(tmp_path / name, fmt))


def test_multi_picture_jpeg_keeps_the_main_picture(tmp_path: Path) -> None:
    main, extra = Image.fromarray(smooth()), Image.fromarray(smooth()[::-1].copy())
    main.save(tmp_path / "phone.jpg", format="MPO", save_all=True, append_images=[extra])
    photo = read_photo(tmp_path / "phone.jpg")
    assert photo.format == "JPEG" and any("multi-picture" in n for n in photo.notes)
    assert np.abs(photo.pixels.astype(int) - smooth()).mean() < 4
    write_photo(tmp_path / "out.jpg", photo, photo.pixels)
    assert reopen(tmp_path / "out.jpg").format == "JPEG"


def test_still_gif_refused(tmp_path: Path) -> None:
    with pytest.raises(PhotoError, match="256 colours"):
        read_photo(save(Image.new("RGB", (8, 8)), tmp_path / "s.gif"))


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    rng = np.random.default_rng(0)
    jpeg = tmp_path / "ok.jpg"
    Image.fromarray(noisy(240, 320)).save(jpeg)
    png = tmp_path / "ok.png"
    Image.fromarray(noisy()).save(png)
    jb, pb = jpeg.read_bytes(), png.read_bytes()
    files = {
        "empty": ("empty.jpg", b"", "empty file"),
        "text": ("notes.jpg", b"shopping list: milk, eggs\n", "cannot identify"),
        "truncated": ("half.jpg", jb[: len(jb) // 2], "truncated"),
        "random_after_header": ("rand.png", pb[:33] + rng.bytes(400), None),
        "corrupt_idat": ("idat.png", pb[:60] + rng.bytes(len(pb) - 72) + pb[-12:], "truncated or corrupt"),
    }
    out = {}
    for key, (name, data, match) in files.items():
        (tmp_path / name).write_bytes(data)
        out[key] = (tmp_path / name, match)
    return out


@pytest.mark.parametrize("case", ["empty", "text", "truncated", "random_after_header", "corrupt_idat"])
def test_bad_files_give_one_line_photo_errors(tmp_path: Path, case: str) -> None:
    path, match = _bad_files(tmp_path)[case]
    for read in (read_photo, lambda p: read_preview(p, 8)):
        with pytest.raises(PhotoError, match=match) as info:
            read(path)
        assert "\n" not in str(info.value) and str(info.value) and info.value.path == path
        assert isinstance(info.value, UnlearnableError)


def test_missing_file_folder_and_unsupported_format(tmp_path: Path) -> None:
    with pytest.raises(PhotoError, match="not found"):
        read_photo(tmp_path / "nope.jpg")
    with pytest.raises(PhotoError, match="folder"):
        read_photo(tmp_path)
    with pytest.raises(PhotoError, match="PPM"):
        read_photo(save(Image.new("RGB", (8, 8)), tmp_path / "x.ppm"))


def test_decompression_bomb_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = save(Image.fromarray(noisy(200, 200)), tmp_path / "bomb.png")
    loads = []
    original_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(1) or original_load(self))
    with pytest.raises(PhotoError, match=r"200×200 = 0.04 megapixels exceeds the 0.001-megapixel limit"):
        read_photo(src, max_pixels=1000)
    with pytest.raises(PhotoError, match="decompression-bomb"):
        read_preview(src, 8, max_pixels=1000)
    assert loads == []


def test_pillow_bomb_error_becomes_photo_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = save(Image.fromarray(noisy(40, 40)), tmp_path / "b.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # Pillow raises above 2x this
    with pytest.raises(PhotoError, match="decompression-bomb"):
        read_photo(src)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # only Pillow's warning: our own limit decides
    assert read_photo(src).size == (40, 40)


# ---------------------------------------------------------------------------------------------- preview


def test_preview_is_square_upright_rgb(tmp_path: Path) -> None:
    half = np.zeros((480, 640, 3), np.uint8)
    half[:, 320:] = 255  # left black, right white; orientation 6 puts the left side on top
    exif = Image.Exif()
    exif[0x0112] = 6
    src = save(Image.fromarray(half), tmp_path / "p.jpg", exif=exif.tobytes())
    pv = read_preview(src, 32)
    assert pv.shape == (32, 32, 3) and pv.dtype == np.uint8
    assert pv[:12].mean() < 30 and pv[20:].mean() > 225
    gray = read_preview(save(Image.fromarray(noisy(c=1)), tmp_path / "g.png"), 8)
    assert gray.shape == (8, 8, 3) and np.array_equal(gray[..., 0], gray[..., 2])


# ---------------------------------------------------------------------------------------------- writing


def _tmp_leftovers(folder: Path) -> list[str]:
    return [n for n in os.listdir(folder) if n.endswith(".tmp")]


def test_write_is_atomic_and_failures_leave_target_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photo = read_photo(save(Image.fromarray(noisy()), tmp_path / "in.png"))
    out = tmp_path / "out"
    dst = out / "a.png"
    write_photo(dst, photo, photo.pixels)
    assert sorted(os.listdir(out)) == ["a.png"]
    before = sha256_file(dst)

    with pytest.raises(PhotoError, match="pixels must be"):
        write_photo(dst, photo, photo.pixels[:10])
    with pytest.raises(PhotoError, match="pixels must be"):
        write_photo(dst, photo, photo.pixels.astype(np.float32))

    def explode(self, fp, *args, **kwargs):
        fp.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", explode)
    with pytest.raises(PhotoError, match="disk full"):
        write_photo(dst, photo, photo.pixels)
    assert sha256_file(dst) == before and sorted(os.listdir(out)) == ["a.png"]


def test_write_onto_a_folder_fails_cleanly(tmp_path: Path) -> None:
    photo = read_photo(save(Image.fromarray(noisy()), tmp_path / "in.png"))
    (tmp_path / "out" / "a.png").mkdir(parents=True)
    with pytest.raises(PhotoError):
        write_photo(tmp_path / "out" / "a.png", photo, photo.pixels)
    assert _tmp_leftovers(tmp_path / "out") == []


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    data = np.random.default_rng(0).bytes(3 << 20)
    (tmp_path / "blob").write_bytes(data)
    assert sha256_file(tmp_path / "blob") == hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------- discovery


def _tiny(path: Path) -> Path:
    return save(Image.new("RGB", (4, 4)), path, EXT_BY_SUFFIX.get(path.suffix.lower(), "PNG"))


EXT_BY_SUFFIX = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".tif": "TIFF", ".bmp": "BMP"}


def test_discover_unicode_names_labels_and_skips(tmp_path: Path) -> None:
    root = tmp_path / "fötos 📷"
    for rel in ["été 1.jpg", "alice/2019/x.JPG", "alice/y.png", "bob/z.webp", "bob/.hidden.jpg", ".cache/c.jpg"]:
        _tiny(root / rel)
    (root / "notes.txt").write_text("hi")
    (root / ".DS_Store").write_bytes(b"\0")
    photos, skipped = discover([root], tmp_path / "out")
    assert [str(p.rel) for p in photos] == ["alice/2019/x.JPG", "alice/y.png", "bob/z.webp", "été 1.jpg"]
    assert [p.label for p in photos] == ["alice", "alice", "bob", "fötos 📷"]
    assert all(p.path.is_file() and p.path.is_relative_to(root) for p in photos)
    reasons = {p.name: why for p, why in skipped}
    assert set(reasons) == {"notes.txt", ".DS_Store", ".hidden.jpg", ".cache"}
    assert "extension" in reasons["notes.txt"] and "hidden" in reasons[".cache"]
    photo = read_photo(photos[-1].path)  # unicode path reads and writes
    write_photo(tmp_path / "out" / photos[-1].rel, photo, photo.pixels)
    assert (tmp_path / "out" / "été 1.jpg").is_file()


def test_discover_flat_folder_label(tmp_path: Path) -> None:
    for n in ["a.jpg", "b.png"]:
        _tiny(tmp_path / "holiday" / n)
    photos, skipped = discover([tmp_path / "holiday"], tmp_path / "out")
    assert [(str(p.rel), p.label) for p in photos] == [("a.jpg", "holiday"), ("b.png", "holiday")]
    assert skipped == []


def test_discover_several_inputs_and_explicit_files(tmp_path: Path) -> None:
    _tiny(tmp_path / "cats" / "a.jpg")
    _tiny(tmp_path / "dogs" / "rex" / "a.jpg")
    note = tmp_path / "loose" / "scan.txt"
    note.parent.mkdir()
    note.write_bytes(b"not really a photo")
    photos, _ = discover([tmp_path / "cats", tmp_path / "dogs", note], tmp_path / "out")
    assert [(str(p.rel), p.label) for p in photos] == [
        ("cats/a.jpg", "cats"), ("dogs/rex/a.jpg", "rex"), ("scan.txt", "loose")]
    with pytest.raises(PhotoError):  # an explicit non-photo is attempted, and fails as one photo
        read_photo(photos[-1].path)


def test_discover_duplicate_outputs_refused(tmp_path: Path) -> None:
    a, b = _tiny(tmp_path / "x" / "a.jpg"), _tiny(tmp_path / "y" / "a.jpg")
    with pytest.raises(UsageError, match="same output") as info:
        discover([a, b], tmp_path / "out")
    assert str(a) in str(info.value) and str(b) in str(info.value)


def test_discover_refuses_out_inside_or_equal_to_input(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    _tiny(photos / "alice" / "a.jpg")
    for out in [photos, photos / "protected", photos / "alice" / "new", tmp_path / "photos" / ".." / "photos"]:
        with pytest.raises(UsageError, match="output folder"):
            discover([photos], out)
    link = tmp_path / "link"
    link.symlink_to(photos)
    with pytest.raises(UsageError, match="output folder"):
        discover([photos], link / "out")


def test_discover_refuses_out_equal_to_input_file_and_missing_inputs(tmp_path: Path) -> None:
    a = _tiny(tmp_path / "a.jpg")
    with pytest.raises(UsageError, match="input file"):
        discover([a], a)
    with pytest.raises(UsageError, match="not found"):
        discover([a, tmp_path / "missing"], tmp_path / "out")
    with pytest.raises(UsageError, match="no photos"):
        (tmp_path / "empty").mkdir()
        discover([tmp_path / "empty"], tmp_path / "out")


def test_discover_refuses_outputs_landing_on_originals(tmp_path: Path) -> None:
    _tiny(tmp_path / "photos" / "a.jpg")
    _tiny(tmp_path / "other" / "b.jpg")
    with pytest.raises(UsageError, match="input folder|original"):
        discover([tmp_path / "photos", tmp_path / "other"], tmp_path)  # OUT/photos/a.jpg is an original


def test_discover_symlink_loop_terminates_and_finds_each_photo_once(tmp_path: Path) -> None:
    d = tmp_path / "dir"
    _tiny(d / "a.jpg")
    _tiny(d / "sub" / "b.jpg")
    (d / "loop").symlink_to(d)
    (d / "sub" / "up").symlink_to(d)
    photos, skipped = discover([d], tmp_path / "out")
    assert [str(p.rel) for p in photos] == ["a.jpg", "sub/b.jpg"]
    assert {p.name for p, _ in skipped} == {"loop", "up"}


def test_photo_extensions_are_lower_case() -> None:
    assert all(e == e.lower() and e.startswith(".") for e in PHOTO_EXTENSIONS)
    assert {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"} <= set(PHOTO_EXTENSIONS)
    assert isinstance(Photo(np.zeros((2, 3, 1), np.uint8), None, "PNG", "L").size, tuple)


# ---------------------------------------------------------------------------------------------- checked writes


def test_write_returns_what_a_scraper_decodes_from_the_written_file(tmp_path: Path) -> None:
    for fmt, exact in (("PNG", True), ("JPEG", False)):
        photo = read_photo(save(Image.fromarray(smooth()), tmp_path / f"in{EXT[fmt]}", fmt, quality=95))
        pixels = np.clip(photo.pixels.astype(np.int16) + 3, 0, 255).astype(np.uint8)
        dst = tmp_path / "out" / f"a{EXT[fmt]}"
        written = write_photo(dst, photo, pixels)
        assert written.sha256 == sha256_file(dst) and written.size == dst.stat().st_size
        assert np.array_equal(written.pixels, read_photo(dst).pixels)
        assert np.array_equal(written.pixels, pixels) == exact  # JPEG: the encoder changes pixels too


def test_silent_short_write_never_reaches_the_final_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photo = read_photo(save(Image.fromarray(noisy()), tmp_path / "in.jpg", "JPEG"))
    out = tmp_path / "out"
    out.mkdir()
    real = Image.Image.save

    def half(self, fp, *args, **kwargs):  # the encoder reports success, half of the bytes are lost
        buf = __import__("io").BytesIO()
        real(self, buf, *args, **kwargs)
        fp.write(buf.getvalue()[: len(buf.getvalue()) // 2])

    monkeypatch.setattr(Image.Image, "save", half)
    with pytest.raises(PhotoError, match="does not decode"):
        write_photo(out / "a.jpg", photo, photo.pixels)
    assert os.listdir(out) == []


def test_write_refuses_to_replace_what_the_caller_does_not_own(tmp_path: Path) -> None:
    photo = read_photo(save(Image.fromarray(noisy()), tmp_path / "in.png"))
    out = tmp_path / "out"
    mine = save(Image.fromarray(noisy(seed=1)), out / "a.png")
    before = sha256_file(mine)
    with pytest.raises(PhotoError, match="not written by unlearnable"):
        write_photo(mine, photo, photo.pixels, may_replace=lambda p: False)
    assert sha256_file(mine) == before and os.listdir(out) == ["a.png"]
    recorded = []
    write_photo(out / "b.png", photo, photo.pixels, may_replace=lambda p: False, before_rename=recorded.append)
    assert recorded == [sha256_file(out / "b.png")] and sorted(os.listdir(out)) == ["a.png", "b.png"]
    write_photo(mine, photo, photo.pixels, may_replace=lambda p: True)  # owned: replaced
    assert sha256_file(mine) == sha256_file(out / "b.png")


def test_temp_names_are_unique_and_match_the_cleanup_pattern(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = set()
    for _ in range(20):
        fd, tmp = storage._create_temp(tmp_path / "manifest.json")
        os.close(fd)
        names.add(Path(tmp).name)
        assert storage.TEMP_PATTERN.fullmatch(Path(tmp).name)
    assert len(names) == 20
    assert not storage.TEMP_PATTERN.fullmatch("notes.tmp") and not storage.TEMP_PATTERN.fullmatch(".a.jpg.1234abcd.tmp")

    def no_space(fd):  # delayed allocation / network file systems report a full disk at fsync
        raise OSError(28, "No space left on device")

    before = set(os.listdir(tmp_path))
    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(storage.OutputError, match="No space left"):
        storage.write_atomic(tmp_path / "state.json", b"{}" * 100)
    assert set(os.listdir(tmp_path)) == before  # the temp file was removed


def test_discover_refuses_inputs_inside_the_output_folder(tmp_path: Path) -> None:
    p = tmp_path / "P"
    _tiny(p / "IMG_0001.jpg")
    _tiny(p / "me" / "IMG_0001.jpg")
    with pytest.raises(UsageError, match="input folder .* is inside the output folder"):
        discover([p / "me"], p)
    with pytest.raises(UsageError, match="input file .* is inside the output folder"):
        discover([p / "me" / "IMG_0001.jpg"], p)


def test_discover_reports_unreadable_folders_and_lists_gifs_on_request(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "photos"
    _tiny(root / "a.jpg")
    _tiny(root / "locked" / "b.jpg")
    Image.new("RGB", (4, 4)).save(root / "c.gif")
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(root / "locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    problems: list = []
    photos, skipped = discover([root], tmp_path / "out", problems, include_refused=True)
    assert [str(p.rel) for p in photos] == ["a.jpg", "c.gif"] and skipped == []
    assert problems == [(root / "locked", "cannot read folder: Permission denied")]
    with pytest.raises(PhotoError, match="GIF"):
        read_photo(photos[1].path)
    photos, skipped = discover([root], tmp_path / "out")  # default: as before (verify relies on it)
    assert [str(p.rel) for p in photos] == ["a.jpg"] and len(skipped) == 2


# ---------------------------------------------------------------------------------------------- one read


def _formats_zoo(folder: Path) -> list[Path]:
    """One file per decoding path: EXIF-rotated JPEG with GPS, 16-bit PNG, RGBA PNG, palette PNG,
    lossless and lossy WebP, TIFF, BMP, CMYK JPEG with no profile."""
    rgba = np.concatenate([noisy(), noisy(c=1)[:, :, None]], axis=2)
    return [
        save(Image.fromarray(smooth()), folder / "rot.jpg", exif=gps_exif(6).tobytes(), quality=90),
        save(Image.fromarray(noisy(c=1).astype(np.uint16) * 257), folder / "g16.png"),
        save(Image.fromarray(rgba, "RGBA"), folder / "rgba.png", icc_profile=SRGB_ICC),
        save(Image.fromarray(noisy()).convert("P"), folder / "pal.png"),
        save(Image.fromarray(noisy()), folder / "ll.webp", lossless=True),
        save(Image.fromarray(smooth()), folder / "lossy.webp", quality=80),
        save(Image.fromarray(noisy()), folder / "t.tif", compression="tiff_deflate"),
        save(Image.fromarray(noisy()), folder / "b.bmp"),
        save(Image.new("CMYK", (40, 30), (10, 200, 30, 0)), folder / "cmyk.jpg"),
    ]


def test_decoding_bytes_in_memory_matches_decoding_the_file(tmp_path: Path) -> None:
    for path in _formats_zoo(tmp_path):
        data = path.read_bytes()
        a, b = read_photo(path), read_photo(path, data=data)
        assert np.array_equal(a.pixels, b.pixels) and a.pixels.dtype == b.pixels.dtype, path.name
        assert (a.alpha is None) == (b.alpha is None) and (a.alpha is None or np.array_equal(a.alpha, b.alpha))
        assert (a.format, a.source_mode, a.info, a.notes) == (b.format, b.source_mode, b.info, b.notes), path.name
        assert np.array_equal(read_preview(path, 16), read_preview(path, 16, data=data)), path.name
    assert read_photo(tmp_path / "rot.jpg", data=(tmp_path / "rot.jpg").read_bytes()).size == (48, 64)  # upright
    with pytest.raises(PhotoError, match="empty file") as info:
        read_photo(tmp_path / "gone.jpg", data=b"")
    assert info.value.path == tmp_path / "gone.jpg"


def test_read_hashed_keeps_the_bytes_only_up_to_the_limit(tmp_path: Path) -> None:
    data = np.random.default_rng(1).bytes((3 << 20) + 5)
    (tmp_path / "blob").write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    assert storage.read_hashed(tmp_path / "blob") == (want, len(data), data)
    assert storage.read_hashed(tmp_path / "blob", keep_up_to=1 << 20) == (want, len(data), None)
    assert storage.sha256_bytes(data) == want == sha256_file(tmp_path / "blob")
    with pytest.raises(OSError):
        storage.read_hashed(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------- storage


def test_write_atomic_reads_back_and_refuses_bytes_the_disk_changed(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.json"
    storage.write_atomic(path, b'{"v": 1}')
    real_fsync = os.fsync

    def flipping_fsync(fd):  # a disk that silently stores other bytes than it was given
        os.pwrite(fd, b"X", 0)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", flipping_fsync)
    with pytest.raises(storage.OutputError, match="read back differ"):
        storage.write_atomic(path, b'{"v": 2}')
    assert path.read_bytes() == b'{"v": 1}' and os.listdir(tmp_path) == ["state.json"]
    storage.write_atomic(path, b'{"v": 3}', verify=False)  # not read back: the damage goes unseen
    assert path.read_bytes() == b'X"v": 3}'


def test_write_atomic_streams_a_callable_through_a_unique_temp_file(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pt"
    made = []
    real = storage._create_temp
    monkeypatch.setattr(storage, "_create_temp", lambda p: made.append(real(p)) or made[-1])
    storage.write_atomic(path, lambda f: f.write(b"round 1"), verify=False)
    storage.write_atomic(path, lambda f: f.write(b"round 2"), verify=False)
    names = [Path(tmp).name for _, tmp in made]
    assert len(set(names)) == 2 and all(storage.TEMP_PATTERN.fullmatch(n) for n in names)
    assert path.read_bytes() == b"round 2"

    def dies(f):
        f.write(b"half a checkpo")
        raise OSError(28, "No space left on device")

    with pytest.raises(storage.OutputError, match="No space left"):
        storage.write_atomic(path, dies, verify=False)
    assert path.read_bytes() == b"round 2" and os.listdir(tmp_path) == ["checkpoint.pt"]
    with pytest.raises(ValueError, match="verify=False"):
        storage.write_atomic(path, lambda f: f.write(b"x"))


def test_engine_checkpoint_save_leaves_the_previous_one_on_a_full_disk(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from unlearnable.noise.minmin import _atomic_save

    path = tmp_path / "checkpoint.pt"
    _atomic_save({"round": torch.tensor(1)}, path)
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(storage.OutputError, match="checkpoint.pt: No space left"):
        _atomic_save({"round": torch.tensor(2)}, path)
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temp file left, fixed-name or not
    assert int(torch.load(path, weights_only=True)["round"]) == 1


def test_settings_sha256_ignores_key_order_only() -> None:
    a = storage.settings_sha256({"eps": 8, "mode": "classwise", "nested": {"x": 1, "y": [1, 2]}}).hexdigest()
    b = storage.settings_sha256({"nested": {"y": [1, 2], "x": 1}, "mode": "classwise", "eps": 8}).hexdigest()
    c = storage.settings_sha256({"eps": 8, "mode": "samplewise", "nested": {"x": 1, "y": [1, 2]}}).hexdigest()
    assert a == b != c and len(a) == 64
    assert storage.settings_sha256({"path": Path("/x")}).hexdigest() == storage.settings_sha256({"path": "/x"}).hexdigest()
