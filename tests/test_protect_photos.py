"""`unlearnable protect` on photo folders: outputs, budget, manifest, resume, bad inputs, exit codes."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from unlearnable.cli.main import app
from unlearnable.noise.minmin import MinMinConfig
from unlearnable.protect.photos import PhotoProtectConfig, protect_photos

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
FAST = ["--max-rounds", "1", "--steps", "2", "--workers", "1"]
runner = CliRunner()


def _fast_config(**kw) -> PhotoProtectConfig:
    return PhotoProtectConfig(search=MinMinConfig.for_photos(max_rounds=1, steps=2, train_steps=2), workers=1, **kw)


def _photo(path: Path, sample: str = "astronaut.png", size=(96, 72), fmt=None, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(SAMPLES / sample) as im:
        im.convert("RGB").resize(size).save(path, format=fmt, **save)
    return path


def _hashes(folder: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def album(tmp_path) -> Path:
    root = tmp_path / "my photos"
    _photo(root / "alice" / "été 1.jpg", "astronaut.png", quality=92)
    _photo(root / "alice" / "b.png", "coffee.png", (80, 80))
    _photo(root / "bob" / "c.webp", "chelsea.png", (90, 60), quality=90)
    _photo(root / "bob" / "d.tif", "rocket.jpg", (64, 64))
    _photo(root / "bob" / "e.bmp", "retina.jpg", (50, 70))
    (root / "bob" / "notes.txt").write_text("not a photo")
    return root


def test_protect_folder_outputs_manifest_and_budget(album, tmp_path):
    before = _hashes(album)
    out = tmp_path / "out"
    r = runner.invoke(app, ["protect", str(album), "-o", str(out), *FAST])
    assert r.exit_code == 0, r.output
    assert _hashes(album) == before  # originals untouched
    m = json.loads((out / "manifest.json").read_text())
    assert m["summary"]["ok"] == 5 and m["summary"]["failed"] == 0
    assert [s["path"].endswith("notes.txt") for s in m["skipped_files"]] == [True]
    assert m["surrogate"]["built_from"] == "smallcnn-cifar10" and m["settings"]["search"]["seed"] == 0
    assert m["surrogate"]["name"] == "smallcnn initialised afresh (seed 0)"   # the default start since 2026-11-30
    assert m["search"]["classes"] == ["alice", "bob"] and m["settings"]["search"]["mode"] == "classwise"
    for e in m["images"]:
        src, dst = Path(e["input"]), out / e["output"]
        assert dst.exists() and e["output"] == src.relative_to(album).as_posix()
        assert e["input_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
        assert e["output_sha256"] == hashlib.sha256(dst.read_bytes()).hexdigest()
        with Image.open(src) as a, Image.open(dst) as b:
            assert (a.format, a.size) == (b.format, b.size)
            if a.format in ("PNG", "TIFF", "BMP"):  # lossless: the change is exactly the bounded noise
                diff = np.abs(np.asarray(a.convert("RGB"), np.int16) - np.asarray(b.convert("RGB"), np.int16))
                assert 0 < diff.max() <= 8 and diff.max() == e["max_change_levels"]
        assert 25 < e["psnr"] < 60 and 0.5 < e["ssim"] <= 1
        assert e["eps_255"] == pytest.approx(8)
    assert not list(out.rglob("*.tmp"))
    assert "photos protected" in r.output


def test_rerun_resumes_and_redoes_damaged_outputs(album, tmp_path):
    out = tmp_path / "out"
    first = protect_photos([album], out, _fast_config())
    (out / "bob" / "d.tif").write_bytes(b"damaged")
    events = []
    second = protect_photos([album], out, _fast_config(), on_event=lambda k, i: events.append(k))
    assert second["summary"]["resumed"] == 4 and second["summary"]["protected_now"] == 1
    assert second["search"]["resumed"] is True and "round" not in events  # search state reused
    redone = {e["output"]: e for e in second["images"]}["bob/d.tif"]
    assert redone["output_sha256"] == {e["output"]: e for e in first["images"]}["bob/d.tif"]["output_sha256"]


def test_interrupted_run_resumes_where_it_stopped(album, tmp_path):
    out = tmp_path / "out"

    def stop_after_two(kind, info):
        if kind == "progress" and info["phase"] == "writing photos" and info["done"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        protect_photos([album], out, _fast_config(), on_event=stop_after_two)
    m = json.loads((out / "manifest.json").read_text())
    assert 2 <= m["summary"]["ok"] < 5  # the photos finished before (or while) it stopped are recorded
    again = protect_photos([album], out, _fast_config())
    assert again["summary"]["ok"] == 5 and again["summary"]["resumed"] == m["summary"]["ok"]


def test_bad_files_fail_one_line_each_and_batch_goes_on(tmp_path):
    src = tmp_path / "in"
    _photo(src / "good.jpg")
    (src / "empty.jpg").write_bytes(b"")
    (src / "text.png").write_text("hello")
    good = (src / "good.jpg").read_bytes()
    (src / "cut.jpg").write_bytes(good[: len(good) // 2])
    frames = [Image.new("RGB", (20, 20), c) for c in ("red", "blue")]
    frames[0].save(src / "anim.webp", save_all=True, append_images=frames[1:])
    Image.new("CMYK", (40, 30), (10, 200, 30, 0)).save(src / "cmyk.jpg")
    Image.new("RGB", (300, 300)).save(src / "huge.png")
    r = runner.invoke(app, ["protect", str(src), "-o", str(tmp_path / "out"), "--max-megapixels", "0.05", *FAST])
    assert r.exit_code == 1, r.output
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    status = {e["output"]: e["status"] for e in m["images"]}
    assert status == {"anim.webp": "error", "cmyk.jpg": "ok", "cut.jpg": "error", "empty.jpg": "error",
                      "good.jpg": "ok", "huge.png": "error", "text.png": "error"}
    failed_lines = [l for l in r.output.splitlines() if l.startswith("failed")]
    assert len(failed_lines) == 5
    assert not (tmp_path / "out" / "empty.jpg").exists()


def test_exif_rotated_photo_comes_out_upright(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    _photo(src / "rot.jpg", size=(80, 40), exif=exif.tobytes(), quality=95)
    r = runner.invoke(app, ["protect", str(src), "-o", str(tmp_path / "out"), *FAST])
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "out" / "rot.jpg") as im:
        assert im.size == (40, 80) and im.getexif().get(0x0112, 1) == 1


def test_usage_errors_exit_2_and_write_nothing(album, tmp_path):
    r = runner.invoke(app, ["protect", str(album), "-o", str(album / "protected"), *FAST])
    assert r.exit_code == 2 and "inside" in r.output
    assert not (album / "protected").exists()
    r = runner.invoke(app, ["protect", str(album), "-o", str(album), *FAST])
    assert r.exit_code == 2
    r = runner.invoke(app, ["protect", str(tmp_path / "nope"), "-o", str(tmp_path / "o"), *FAST])
    assert r.exit_code == 2 and "not found" in r.output
    r = runner.invoke(app, ["protect", str(album), "-o", str(tmp_path / "o"), "--eps", "0", *FAST])
    assert r.exit_code == 2


def test_label_free_collection_uses_clusters(tmp_path):
    src = tmp_path / "mixed"
    for i, s in enumerate(["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "camera.png", "retina.jpg"]):
        _photo(src / f"{i}.png", s, (48, 48))
    m = protect_photos([src], tmp_path / "out", _fast_config(label_free=True, clusters=2))
    assert m["summary"]["ok"] == 6
    assert m["search"]["classes"] == ["cluster-0", "cluster-1"] and sum(m["search"]["class_sizes"]) == 6
    # a photo added later joins the nearest stored cluster and gets its pattern: no new search
    _photo(src / "6.png", "coffee.png", (52, 44))  # another copy of 1.png, other pixels
    events = []
    again = protect_photos([src], tmp_path / "out", _fast_config(label_free=True, clusters=2),
                           on_event=lambda k, i: events.append(k))
    new = {e["output"]: e for e in again["images"]}["6.png"]
    twin = {e["output"]: e for e in m["images"]}["1.png"]  # the same scene, protected in the first run
    assert "round" not in events and again["summary"]["resumed"] == 6 and new["pattern"] == "class-reused"
    assert new["class"] == twin["class"] and new["pattern_sha256"] == twin["pattern_sha256"]


def test_gps_removed_by_default(tmp_path):
    src = tmp_path / "in"
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (48.0, 51.0, 30.0)
    _photo(src / "where.jpg", exif=exif.tobytes(), quality=95)
    protect_photos([src], tmp_path / "out", _fast_config())
    protect_photos([src], tmp_path / "kept", _fast_config(keep_gps=True))
    with Image.open(tmp_path / "out" / "where.jpg") as a, Image.open(tmp_path / "kept" / "where.jpg") as b:
        assert a.getexif().get(0x010F) == "CameraMaker" and not a.getexif().get_ifd(0x8825)
        assert b.getexif().get_ifd(0x8825)


def test_heic_photo_round_trips_when_pillow_heif_is_installed(tmp_path):
    pytest.importorskip("pillow_heif", reason="HEIC support is the optional extra unlearnable[heic]")
    src = tmp_path / "in"
    _photo(src / "phone.heic", size=(96, 64), quality=90)
    m = protect_photos([src], tmp_path / "out", _fast_config())
    e = m["images"][0]
    assert e["status"] == "ok" and e["format"] == "HEIF"
    with Image.open(tmp_path / "out" / "phone.heic") as im:
        assert im.format == "HEIF" and im.size == (96, 64)
