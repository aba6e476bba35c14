"""`unlearnable protect --faces`: faces found, noise only on them within the budget after rounding, the
no-face rule, the face surrogate's errors, scaled detection; and the face scraper's victim learns."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from unlearnable.cli.main import app
from unlearnable.faces import detect_faces
from unlearnable.noise.upsample import apply_noise

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
GLINT = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces-glint-sample" / "images"
FAST = ["--faces", "--max-rounds", "1", "--steps", "2", "--workers", "1"]
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def _rgb(name: str) -> np.ndarray:
    with Image.open(SAMPLES / name) as im:
        return np.asarray(im.convert("RGB")).copy()


@pytest.fixture
def album(tmp_path) -> Path:
    """me/: the astronaut (one face) on a larger canvas, and a coffee cup (no face); friend/: the camera man."""
    root = tmp_path / "photos"
    (root / "me").mkdir(parents=True)
    (root / "friend").mkdir()
    canvas = np.full((700, 900, 3), 90, np.uint8)
    canvas[100:612, 300:812] = _rgb("astronaut.png")
    Image.fromarray(canvas).save(root / "me" / "astronaut.png")
    Image.open(SAMPLES / "coffee.png").save(root / "me" / "coffee.png")
    Image.open(SAMPLES / "camera.png").save(root / "friend" / "camera.png")
    return root


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


def test_protect_faces_changes_only_the_faces_within_budget_and_skips_photos_without_one(album, tmp_path):
    import json

    out = tmp_path / "out"
    r = runner.invoke(app, ["protect", str(album), "-o", str(out), *FAST])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    by = {e["output"]: e for e in m["images"]}
    assert m["settings"]["faces"] is True and m["summary"]["faces"] == 2 and m["summary"]["no_face"] == 1
    # the photo without a face follows the default rule: listed, not written
    assert by["me/coffee.png"]["status"] == "skipped" and by["me/coffee.png"]["faces"] == []
    assert not (out / "me" / "coffee.png").exists()
    # the astronaut: one face, at the canvas offset, protected within the budget; nothing else changed
    e = by["me/astronaut.png"]
    assert e["status"] == "ok" and len(e["faces"]) == 1
    x1, y1, x2, y2 = e["faces"][0]["box"]
    assert 300 + 150 < x1 < x2 < 300 + 300 and 100 + 30 < y1 < y2 < 100 + 200
    assert e["faces"][0]["ssim"] > 0.9 and not e["faces"][0]["small"]
    diff = np.abs(_pixels(out / "me" / "astronaut.png") - _pixels(album / "me" / "astronaut.png")).max(2)
    assert 0 < diff.max() <= 8                                     # 8/255 after rounding (PNG: lossless)
    changed = np.argwhere(diff > 0)
    w, h = x2 - x1, y2 - y1                                        # the aligned crop spans about 2 face boxes
    assert changed[:, 1].min() > x1 - w and changed[:, 1].max() < x2 + w
    assert changed[:, 0].min() > y1 - h and changed[:, 0].max() < y2 + h
    assert diff[:, :300].max() == 0 and diff[650:].max() == 0      # the background far from the face is untouched
    assert by["friend/camera.png"]["status"] == "ok" and len(by["friend/camera.png"]["faces"]) == 1
    # a rerun resumes: nothing is rewritten, the skipped photo stays skipped
    before = (out / "me" / "astronaut.png").read_bytes()
    r = runner.invoke(app, ["protect", str(album), "-o", str(out), *FAST])
    assert r.exit_code == 0, r.output
    m2 = json.loads((out / "manifest.json").read_text())
    assert m2["summary"]["resumed"] == 2 and (out / "me" / "astronaut.png").read_bytes() == before


def test_no_face_whole_spreads_the_persons_pattern_over_the_photo(album, tmp_path):
    out = tmp_path / "out"
    r = runner.invoke(app, ["protect", str(album / "me"), "-o", str(out), *FAST, "--no-face", "whole"])
    assert r.exit_code == 0, r.output
    diff = np.abs(_pixels(out / "coffee.png") - _pixels(album / "me" / "coffee.png"))
    assert diff.max() <= 8 and (diff > 0).mean() > 0.5             # the whole photo carries noise


def test_face_options_are_checked_before_anything_is_written(album, tmp_path):
    out = tmp_path / "out"
    r = runner.invoke(app, ["protect", str(album), "-o", str(out), *FAST, "--face-weights", str(tmp_path / "vgg.pt")])
    assert r.exit_code == 2 and "--reference" in r.output
    r = runner.invoke(app, ["protect", str(album), "-o", str(out), *FAST, "--face-weights", str(tmp_path / "vgg.pt"),
                            "--reference", str(album)])
    assert r.exit_code == 2 and "face weights not found" in r.output and "vgg.pt" in r.output
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 100)
    r = runner.invoke(app, ["protect", str(album), "-o", str(out), *FAST, "--face-weights", str(tmp_path / "junk.pt"),
                            "--reference", str(album)])
    assert r.exit_code == 2 and "not a readable torch state dict" in r.output
    r = runner.invoke(app, ["protect", str(album), "-o", str(out), *FAST, "--mode", "samplewise"])
    assert r.exit_code == 2 and "--faces" in r.output
    r = runner.invoke(app, ["protect", str(album), "-o", str(out), *FAST, "--no-face", "blur"])
    assert r.exit_code == 2
    assert not out.exists()


def test_a_reference_of_other_faces_gets_a_fresh_head_on_the_shipped_backbone(album, tmp_path):
    import json

    from unlearnable.faces.surrogate import face_surrogate
    from unlearnable.train.surrogate import load_surrogate

    ref = tmp_path / "others"
    for person, name in (("ann", "chelsea.png"), ("bob", "coffee.png"), ("cat", "camera.png")):
        (ref / person).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(_rgb(name)[k * 20:k * 20 + 300, k * 20:k * 20 + 300]).resize((112, 112)).save(
                ref / person / f"{k}.png")
    model, meta = face_surrogate(None, ref, torch.device("cpu"))
    shipped, _ = load_surrogate()
    head = model.get_classifier()
    assert meta["classes"] == ["ann", "bob", "cat"] and head.out_features == 3 and meta["input_size"] == 32
    own, base = model.state_dict(), shipped.state_dict()
    backbone = [k for k in base if not k.startswith(model.classifier_attr + ".")]
    assert backbone and all(torch.equal(own[k], base[k]) for k in backbone)
    again, _ = face_surrogate(None, ref, torch.device("cpu"))
    assert torch.equal(again.get_classifier().weight, head.weight)          # the fresh head is seeded
    # protect --faces uses it for a folder of people (3 of them: the shipped 10-class head would not fit)
    out = tmp_path / "out"
    r = runner.invoke(app, ["protect", str(album / "me"), "-o", str(out), *FAST, "--reference", str(ref)])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    assert "fresh head over 3 reference people" in m["surrogate"]["built_from"] and m["summary"]["faces"] == 1


def test_each_photo_is_searched_for_faces_once_and_a_resumed_write_detects_again(album, tmp_path, monkeypatch):
    import unlearnable.protect.photos as photos_mod

    calls = []
    real = photos_mod.detect_faces
    monkeypatch.setattr(photos_mod, "detect_faces", lambda images, **kw: calls.append(len(images)) or real(images, **kw))
    out = tmp_path / "out"
    assert runner.invoke(app, ["protect", str(album), "-o", str(out), *FAST]).exit_code == 0
    assert sum(calls) == 3                      # three photos: found when read, reused when written
    (out / "me" / "astronaut.png").unlink()     # the rerun writes it again: its person's pattern is stored, so
    calls.clear()                               # nothing is read for a search and its faces are detected anew,
    r = runner.invoke(app, ["protect", str(album), "-o", str(out), *FAST])   # as are the faceless coffee's
    assert r.exit_code == 0, r.output
    assert sum(calls) == 2 and (out / "me" / "astronaut.png").exists()


def test_faces_search_40_rounds_of_20_steps_and_30_train_steps_by_default_photos_20_10_10(album, tmp_path,
                                                                                       monkeypatch):
    import unlearnable.protect.photos as photos_mod
    from unlearnable.protect.photos import PhotoProtectConfig

    seen = []

    def capture(inputs, out, cfg, on_event=None):
        seen.append((cfg.search.max_rounds, cfg.search.steps, cfg.search.train_steps))
        raise KeyboardInterrupt

    monkeypatch.setattr(photos_mod, "protect_photos", capture)
    for args in (["--faces"], [], ["--faces", "--max-rounds", "7"], ["--faces", "--steps", "5"], ["--steps", "30"]):
        runner.invoke(app, ["protect", str(album), "-o", str(tmp_path / "out"), *args])
    assert seen == [(40, 20, 30), (20, 10, 10), (7, 20, 30), (40, 5, 30), (20, 30, 10)]
    face, photo = PhotoProtectConfig(faces=True).search, PhotoProtectConfig().search
    assert (face.max_rounds, face.steps, face.train_steps) == (40, 20, 30)
    assert (photo.max_rounds, photo.steps, photo.train_steps) == (20, 10, 10)


def test_detection_on_a_downscaled_copy_finds_the_same_face_in_full_size_pixels():
    big = np.asarray(Image.fromarray(_rgb("astronaut.png")).resize((2048, 2048), Image.Resampling.BICUBIC))
    (full,) = detect_faces([big])
    (small,) = detect_faces([big], max_side=512)
    assert len(full) == len(small) == 1
    np.testing.assert_allclose(small[0].landmarks, full[0].landmarks, atol=12)   # 4x coarser: a few pixels
    assert 300 < small[0].size < 480                                # about 4 x 87 pixels


def test_full_size_noise_is_added_as_it_is_and_rounded_within_budget():
    pixels = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    delta = (torch.rand(3, 37, 53) * 2 - 1) * (8 / 255)
    out, worst = apply_noise(pixels, delta, eps=8 / 255)
    want = np.clip(np.round(pixels + delta.permute(1, 2, 0).numpy() * 255), 0, 255)
    assert np.array_equal(out, want.astype(np.uint8)) and worst <= 8


@pytest.mark.skipif(not GLINT.is_dir(), reason="needs ../shared/data/faces-glint-sample")
def test_the_face_scrapers_victim_learns_identities_when_nothing_is_protected():
    """The verification's recogniser must learn real identities from clean crops, or a low accuracy on
    protected people would prove nothing."""
    from unlearnable.data.datasets import load_imagefolder
    from unlearnable.verify.faces import RecogniserConfig, recognition, train_recogniser

    data = load_imagefolder(GLINT)
    keep = [data.classes.index(c) for c in ("Barack_Obama", "Keira_Knightley", "Simon_Cowell", "Will_Smith")]
    train_idx, test_idx = [], []
    for k in keep:
        idx = (data.labels == k).nonzero().flatten().tolist()
        train_idx += idx[:50]
        test_idx += idx[-15:]
    sub = data.subset(torch.tensor(train_idx))
    remap = torch.full((data.num_classes,), -1, dtype=torch.long)
    remap[keep] = torch.arange(len(keep))
    classes = [data.classes[k] for k in keep]
    from unlearnable.data.datasets import ImageTensors
    train_set = ImageTensors(sub.images, remap[sub.labels], classes)
    test = data.subset(torch.tensor(test_idx))
    test_set = ImageTensors(test.images, remap[test.labels], classes)
    cfg = RecogniserConfig(arch="smallcnn", size=32, epochs=30, batch_size=32, lr=0.01, device="cpu")
    acc = recognition(train_recogniser(train_set, cfg), test_set, cfg.size)
    assert np.mean(acc) > 0.6, acc                                  # chance: 0.25
