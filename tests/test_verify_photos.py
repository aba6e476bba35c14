"""Folder verification: held-out split, the two victims, the report; originals untouched."""
import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from unlearnable.cli.main import app
from unlearnable.errors import UnlearnableError
from unlearnable.photos.verify import split_holdout

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


def test_verify_photo_folder_cli(cifar_root, tmp_path):
    folder = tmp_path / "me"
    (folder / "me").mkdir(parents=True)
    sources = sorted(SAMPLES.glob("*.png")) + sorted(SAMPLES.glob("*.jpg"))
    for i in range(8):
        with Image.open(sources[i % len(sources)]) as im:
            im.convert("RGB").resize((60 + i, 50)).save(folder / "me" / f"p{i}.jpg", quality=90)
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.jpg")}
    out = tmp_path / "v"
    r = CliRunner().invoke(app, ["verify", str(folder), "-o", str(out), "--data-root", str(cifar_root),
                                 "--reference-per-class", "10", "--exclude-class", "cat", "--epochs", "1",
                                 "--arch", "smallcnn", "--batch-size", "32"])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "verify-photos.json").read_text())
    assert rep["held_out_clean"] == 2 and rep["protected_for_training"] == 6
    assert "cat" not in rep["reference_classes"] and len(rep["reference_classes"]) == 9
    assert [x["trained_on"] for x in rep["runs"]] == ["protected", "unprotected"]
    for run in rep["runs"]:
        assert 0 <= run["heldout_accuracy"] <= 1 and 0 <= run["reference_test_accuracy"] <= 1
    held = {Path(p).name for p in rep["held_out_files"]}
    protected = {p.name for p in (out / "protected").rglob("*.jpg")}
    assert len(protected) == 6 and not held & protected  # held-out photos are never protected
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.jpg")} == before
