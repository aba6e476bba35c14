"""Folder verification: held-out split, the two victims, the report; originals untouched."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from unlearnable.cli.main import app
from unlearnable.data.photos.decode import read_photo
from unlearnable.errors import UnlearnableError
from unlearnable.eval.blotch import flat_mask
from unlearnable.eval.scielab import scielab
from unlearnable.eval.summary import photo_verdict
from unlearnable.verify.photos import reencoded, split_holdout

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def test_split_holdout_per_class():
    labels = ["a"] * 8 + ["b"] * 4 + ["c"]
    keep, held = split_holdout(labels, 0.25, seed=0)
    assert sorted(keep + held) == list(range(13)) and not set(keep) & set(held)
    assert [labels[i] for i in held].count("a") == 2 and [labels[i] for i in held].count("b") == 1
    assert "c" not in [labels[i] for i in held]  # a lone photo is never held out
    assert split_holdout(labels, 0.25, seed=0) == (keep, held)
    with pytest.raises(UnlearnableError):
        split_holdout(labels, 1.5, 0)


def test_the_reference_is_reencoded_as_the_scraper_reencodes_the_photos():
    """A victim must not tell the folder's photos from the reference by JPEG artifacts alone."""
    import numpy as np
    import torch

    from unlearnable.data.datasets import ImageTensors
    from unlearnable.noise.views import scraper_pipeline

    with Image.open(SAMPLES / "chelsea.png") as im:
        rgb = np.asarray(im.convert("RGB").resize((32, 32)))
    data = ImageTensors(torch.from_numpy(np.stack([rgb, rgb[::-1].copy()])).permute(0, 3, 1, 2).contiguous(),
                        torch.tensor([0, 1]), ["a", "b"], "ref", {"kept": True})
    out = reencoded(data, 75)
    assert out.meta == {"kept": True} and torch.equal(out.labels, data.labels)
    for x, y in zip(data.images, out.images):
        assert np.array_equal(y.permute(1, 2, 0).numpy(), scraper_pipeline(x.permute(1, 2, 0).numpy(), 32, 75))
    assert not torch.equal(out.images, data.images)
    assert reencoded(data, None) is data


def test_verify_photo_folder_cli(cifar_root, tmp_path, monkeypatch):
    import unlearnable.verify.photos as verify_mod

    reencoded_sets = []   # what verify-photos re-encodes: the reference's train and test images at q75
    real = verify_mod.reencoded
    monkeypatch.setattr(verify_mod, "reencoded",
                        lambda data, quality: reencoded_sets.append((len(data), quality)) or real(data, quality))
    folder = tmp_path / "me"
    (folder / "me").mkdir(parents=True)
    sources = sorted(SAMPLES.glob("*.png")) + sorted(SAMPLES.glob("*.jpg"))
    for i in range(8):
        with Image.open(sources[i % len(sources)]) as im:
            im.convert("RGB").resize((60 + i, 50)).save(folder / "me" / f"p{i}.jpg", quality=90)
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.jpg")}
    out = tmp_path / "v"
    r = CliRunner().invoke(app, ["verify-photos", str(folder), "-o", str(out), "--data-root", str(cifar_root),
                                 "--reference-per-class", "10", "--exclude-class", "cat", "--epochs", "1",
                                 "--arch", "smallcnn", "--batch-size", "32"])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "verify-photos.json").read_text())
    assert rep["held_out_clean"] == 2 and rep["protected_for_training"] == 6
    assert rep["scraper"]["reference_reencoded"] is True and rep["scraper"]["jpeg_quality"] == 75
    assert reencoded_sets[0] == (rep["reference_train_images"], 75) and len(reencoded_sets) == 2
    assert reencoded_sets[1][0] > 0 and reencoded_sets[1][1] == 75
    assert "cat" not in rep["reference_classes"] and len(rep["reference_classes"]) == 9
    assert [x["trained_on"] for x in rep["runs"]] == ["protected", "unprotected"]
    for run in rep["runs"]:
        assert 0 <= run["heldout_accuracy"] <= 1 and 0 <= run["reference_test_accuracy"] <= 1
    held = {Path(p).name for p in rep["held_out_files"]}
    protected = {p.name for p in (out / "protected").rglob("*.jpg")}
    assert len(protected) == 6 and not held & protected  # held-out photos are never protected
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.jpg")} == before
    for run in rep["runs"]:       # the held-out curve ends at the reported figure
        assert len(run["heldout_curve"]) == 1 and run["heldout_curve"][-1] == run["heldout_accuracy"]
    assert rep["verdict"] in ("holds", "broken", "no verdict")
    seen = rep["protection"]["visibility"]       # S-CIELAB of each written training photo against its original
    assert sorted(seen["per_photo"]) == sorted(f"me/{n}" for n in protected)
    assert seen["photos_scored"] == "6 of 6 training photos"          # all, under the default cap of 20
    for name, share in seen["per_photo"].items():
        a, b = read_photo(folder / name).pixels, read_photo(out / "protected" / name).pixels
        assert share == round(scielab(a, b, mask=flat_mask(a))["colour_over_jnd"], 4)
    assert max(seen["per_photo"].values()) > 0
    assert seen["flat_visible_colour_share_mean"] == round(float(np.mean(list(seen["per_photo"].values()))), 4)
    page = (out / "report.html").read_text()
    assert "id='verdict'" in page and "held-out accuracy (%)" in page and "chance" in page
    assert f"<span id='visible'>{100 * seen['flat_visible_colour_share_mean']:.1f}%</span>" in page
    assert page.count("data:image/png;base64,") == 3 * 6      # original, protected, difference of 6 photos
    assert "<script" not in page and "http" not in page.replace("http://www.w3.org/2000/svg", "")


def test_missing_reference_fails_before_anything_is_written(tmp_path):
    folder = tmp_path / "me"
    (folder / "me").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (40, 30), (10 * i, 80, 120)).save(folder / "me" / f"p{i}.jpg")
    out = tmp_path / "v"
    r = CliRunner().invoke(app, ["verify-photos", str(folder), "-o", str(out), "--data-root", str(tmp_path / "empty"),
                                 "--epochs", "1"])
    assert r.exit_code == 2, r.output
    assert "not found" in r.output and "Traceback" not in r.output
    assert not out.exists() or not any(out.iterdir())          # nothing protected, nothing staged


def test_photo_verdict_by_hand():
    runs = lambda p, u: [{"trained_on": "protected", "heldout_accuracy": p},   # noqa: E731
                         {"trained_on": "unprotected", "heldout_accuracy": u}]
    v = photo_verdict(runs(0.2, 0.6), chance=0.1)         # (0.2 − 0.1) / (0.6 − 0.1) = 0.2
    assert v["verdict"] == "holds" and v["recovered"] == pytest.approx(0.2, abs=1e-12)
    v = photo_verdict(runs(0.4, 0.6), chance=0.1)         # 0.3 / 0.5 = 0.6
    assert v["verdict"] == "broken" and v["recovered"] == pytest.approx(0.6, abs=1e-12)
    v = photo_verdict(runs(0.05, 0.15), chance=0.1)       # the unprotected victim is within 10 points of chance
    assert v["verdict"] == "no verdict" and v["recovered"] is None


def test_verify_photos_trains_both_victims_through_the_defense(cifar_root, tmp_path, monkeypatch):
    """--defense grayworld: every image both victims train on (reference and photos) is white-balanced
    once, before the loop's crop and flip; an unknown defense fails before anything is written."""
    import unlearnable.verify.photos as verify_mod

    seen = []
    real = verify_mod.train
    monkeypatch.setattr(verify_mod, "train", lambda model, data, *a, **k: seen.append(data.images) or
                        real(model, data, *a, **k))
    folder = tmp_path / "me"
    (folder / "me").mkdir(parents=True)
    for i in range(4):   # photos with a strong cast of their own: gray-world must take it out
        Image.new("RGB", (40, 30), (200, 60 + 10 * i, 90)).save(folder / "me" / f"p{i}.jpg")
    args = ["verify-photos", str(folder), "--data-root", str(cifar_root), "--reference-per-class", "4",
            "--epochs", "1", "--arch", "smallcnn", "--batch-size", "16"]
    r = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "bad"), "--defense", "sepia"])
    assert r.exit_code == 2 and "unknown defense" in r.output, r.output
    assert not (tmp_path / "bad").exists() and not seen
    r = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "v"), "--defense", "grayworld", "--visibility-photos", "2"])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "v" / "verify-photos.json").read_text())
    assert rep["defense"] == "grayworld"
    page = (tmp_path / "v" / "report.html").read_text()
    assert "trained through the defense grayworld (gray-world" in page
    # only the first two of the three training photos are scored for visibility, and the page says so
    assert rep["protection"]["visibility"]["photos_scored"] == "2 of 3 training photos"
    assert sorted(rep["protection"]["visibility"]["per_photo"]) == ["me/p0.jpg", "me/p1.jpg"]
    assert "mean over 2 of 3 training photos" in page
    assert len(seen) == 2
    for images in seen:        # channel means equal per image, up to the 8-bit rounding (and clamping)
        m = images.float().mean((2, 3))
        assert (m - m.mean(1, keepdim=True)).abs().max() < 1.0
