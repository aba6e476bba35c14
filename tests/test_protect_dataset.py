"""`protect-dataset` on an ImageFolder gives the dataset back: same tree, names and formats, the
budget on lossless files, the real post-encoding change of JPEGs measured on the written file,
nothing of the user's overwritten, originals untouched, a rerun that resumes."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import unlearnable.protect.dataset as protect_mod
from unlearnable.cli.main import app
from unlearnable.data.datasets import load_dataset
from unlearnable.data.photos.photo import PhotoError
from unlearnable.data.protected import load_protected
from unlearnable.noise.minmin import MinMinConfig
from unlearnable.protect.dataset import WriteFailures, protect_dataset

FAST = MinMinConfig(max_rounds=2, steps=2, train_steps=2, batch_size=8)
CLI_FAST = ["--arch", "smallcnn", "--steps", "2", "--train-steps", "2", "--batch-size", "8", "--max-rounds", "2"]
# relative path -> PIL format; a nested folder inside a class, and every writable format
FILES = {"cat/a.png": "PNG", "cat/b.jpg": "JPEG", "cat/sub/c.png": "PNG", "cat/d.bmp": "BMP",
         "dog/x.jpeg": "JPEG", "dog/y.webp": "WEBP", "dog/z.tif": "TIFF", "dog/w.png": "PNG"}


def _image(seed: int, size: tuple[int, int], dog: bool) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.array([200, 60, 40] if dog else [40, 90, 200])
    a = np.clip(base + rng.integers(-50, 51, size=(size[1], size[0], 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(a)


def make_tree(root: Path, sizes: dict[str, tuple[int, int]] | None = None) -> Path:
    for i, (rel, fmt) in enumerate(FILES.items()):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img = _image(i, (sizes or {}).get(rel, (16, 16)), rel.startswith("dog"))
        img.save(path, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_imagefolder_comes_back_with_same_tree_names_and_formats(tmp_path):
    data = make_tree(tmp_path / "mydata")
    before = hashes(data)
    out = tmp_path / "out"
    m = protect_dataset(str(data), out, FAST, arch="smallcnn", device="cpu")
    assert hashes(data) == before                                     # originals never modified
    assert m["layout"] == "imagefolder" and m["resized"] is False and m["work_size"] == [16, 16]
    assert sorted(e["file"] for e in m["images"]) == sorted(FILES)    # same relative paths and names
    assert m["skipped_files"] == [{"file": "cat/notes.txt", "reason": m["skipped_files"][0]["reason"]}]
    delta = np.load(out / "perturbation.npy").astype(np.float32)
    files = [e["file"] for e in m["images"]]
    assert np.load(out / "indices.npy").tolist() == list(range(len(FILES))) and delta.shape == (8, 3, 16, 16)
    budget = 8
    for i, e in enumerate(m["images"]):
        written, original = out / "train" / e["file"], data / e["file"]
        with Image.open(written) as w, Image.open(original) as o:
            assert w.format == FILES[e["file"]] == e["format"]          # same format
            assert w.size == o.size
            got, ref = np.asarray(w.convert("RGB")).astype(int), np.asarray(o.convert("RGB")).astype(int)
        change = np.abs(got - ref).max()
        assert e["max_change_255"] == change                           # the figure is the written file's
        assert e["psnr"] == pytest.approx(10 * np.log10(255 ** 2 / ((got - ref) ** 2).mean()), abs=1e-3)
        assert e["label"] == (0 if e["file"].startswith("cat/") else 1) and e["index"] == i
        if e["lossless"]:
            # exactly x + round(255 δ) (clipped): the searched noise, no resampling, within budget
            expect = np.clip(ref + np.clip(np.round(delta[i].transpose(1, 2, 0) * 255), -budget, budget), 0, 255)
            assert np.array_equal(got, expect), e["file"]
            assert change <= budget
        else:
            assert e["format"] == "JPEG" and change > 0
    jpeg = [e for e in m["images"] if e["format"] == "JPEG"]
    assert m["written"]["lossy_files"] == len(jpeg) == 2
    assert m["written"]["lossy_max_change_255"] == max(e["max_change_255"] for e in jpeg)
    assert m["written"]["max_change_255"] == max(e["max_change_255"] for e in m["images"])
    # ...and JPEG at quality 95 keeps full-resolution chroma
    with Image.open(out / "train" / "cat/b.jpg") as j:
        assert j.layers == 3 and j.layer[0][1:3] == j.layer[1][1:3] == (1, 1)

    # verify's readers: the protected set comes back with the right labels and the written pixels,
    # and the clean set at the recorded indices lines up with it
    prot, manifest = load_protected(out)
    assert prot.meta["files"] == files and prot.labels.tolist() == [e["label"] for e in m["images"]]
    for i, f in enumerate(files):
        with Image.open(out / "train" / f) as w:
            assert np.array_equal(prot.images[i].permute(1, 2, 0).numpy(), np.asarray(w.convert("RGB")))
    clean = load_dataset(manifest["dataset"], "train").subset(torch.from_numpy(prot.meta["indices"]))
    assert torch.equal(clean.labels, prot.labels)
    assert (prot.images.int() - clean.images.int()).abs().float().mean() > 0.5

    # a finished output: the same command again does nothing
    assert protect_dataset(str(data), out, FAST, arch="smallcnn", device="cpu")["resumed"] == "already complete"


def test_mixed_sizes_are_searched_at_the_working_size_and_upsampled(tmp_path):
    data = make_tree(tmp_path / "mydata", sizes={"cat/a.png": (40, 24), "dog/w.png": (9, 30)})
    out = tmp_path / "out"
    m = protect_dataset(str(data), out, FAST, arch="smallcnn", device="cpu", work_size=12)
    assert m["resized"] is True and m["work_size"] == [12, 12] and m["image_shape"] == [3, 12, 12]
    assert np.load(out / "perturbation.npy").shape == (8, 3, 12, 12)
    by_file = {e["file"]: e for e in m["images"]}
    for rel in ("cat/a.png", "dog/w.png", "cat/sub/c.png"):
        with Image.open(out / "train" / rel) as w, Image.open(data / rel) as o:
            assert w.size == o.size                                     # each file keeps its own size
            change = np.abs(np.asarray(w).astype(int) - np.asarray(o).astype(int)).max()
        assert 0 < change <= 8 and by_file[rel]["max_change_255"] == change
    prot, _ = load_protected(out)
    assert prot.images.shape == (8, 3, 12, 12)


def test_files_the_tool_did_not_write_are_never_replaced(tmp_path):
    data = make_tree(tmp_path / "mydata")
    out = tmp_path / "out"
    mine = out / "train" / "dog" / "y.webp"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"the user's own file")
    r = CliRunner().invoke(app, ["protect-dataset", str(data), "-o", str(out), *CLI_FAST])
    text = " ".join(r.output.split())
    assert r.exit_code == 2, text
    assert "not written by unlearnable" in text and "train/dog/y.webp" in text
    assert mine.read_bytes() == b"the user's own file"
    assert not (out / "protected.json").exists() and not (out / "train" / "cat").exists()  # refused before any work

    # an output folder inside the dataset (or containing it) is a usage error
    r = CliRunner().invoke(app, ["protect-dataset", str(data), "-o", str(data / "protected"), *CLI_FAST])
    assert r.exit_code == 2 and "overlap" in " ".join(r.output.split())
    assert not (data / "protected").exists()


def test_failed_writes_exit_1_and_a_rerun_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    data = make_tree(tmp_path / "mydata")
    whole = tmp_path / "whole"
    protect_dataset(str(data), whole, FAST, arch="smallcnn", device="cpu")

    real = protect_mod.write_photo

    def flaky(path, *a, **k):  # the disk fills up for the dog images
        if "/dog/" in Path(path).as_posix():
            raise PhotoError("cannot write: [Errno 28] No space left on device", Path(path))
        return real(path, *a, **k)

    out = tmp_path / "out"
    monkeypatch.setattr(protect_mod, "write_photo", flaky)
    r = CliRunner().invoke(app, ["protect-dataset", str(data), "-o", str(out), *CLI_FAST])
    text = " ".join(r.output.split())
    assert r.exit_code == 1, text
    assert "No space left" in text and "rerun" in text
    assert not (out / "protected.json").exists()                       # incomplete: no manifest
    assert (out / "train" / "cat" / "a.png").exists() and not (out / "train" / "dog").exists()
    assert not [p for p in out.rglob("*.tmp")]                         # no temp file left behind

    monkeypatch.setattr(protect_mod, "write_photo", real)
    r = CliRunner().invoke(app, ["protect-dataset", str(data), "-o", str(out), *CLI_FAST])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "protected.json").read_text())
    assert m["resumed_images"] == 4                                   # the cat images were not redone
    assert sorted(e["file"] for e in m["images"] if e.get("resumed")) == sorted(f for f in FILES if f.startswith("cat"))
    assert hashes(out / "train") == hashes(whole / "train")           # same bytes as an uninterrupted run
    # the checkpoint goes once the search converged; a run stopped by its round cap keeps it to be extended
    assert (out / ".unlearnable" / "checkpoint.pt").exists() == (not m["converged"])


def test_images_of_an_interrupted_run_with_other_noise_are_rewritten_not_reused(tmp_path, monkeypatch):
    data = make_tree(tmp_path / "mydata")
    real = protect_mod.write_photo

    def flaky(path, *a, **k):
        if "/dog/" in Path(path).as_posix():
            raise PhotoError("cannot write: [Errno 28] No space left on device", Path(path))
        return real(path, *a, **k)

    out = tmp_path / "out"
    monkeypatch.setattr(protect_mod, "write_photo", flaky)
    with pytest.raises(WriteFailures):
        protect_dataset(str(data), out, FAST, arch="smallcnn", device="cpu")
    monkeypatch.setattr(protect_mod, "write_photo", real)
    (out / ".unlearnable" / "checkpoint.pt").unlink()        # the user starts the search over, another seed
    other = MinMinConfig(max_rounds=2, steps=2, train_steps=2, batch_size=8, seed=1)
    m = protect_dataset(str(data), out, other, arch="smallcnn", device="cpu")
    assert m["resumed_images"] == 0                             # the seed-0 cat images were not kept...
    fresh = tmp_path / "fresh"
    protect_dataset(str(data), fresh, other, arch="smallcnn", device="cpu")
    assert hashes(out / "train") == hashes(fresh / "train")     # ...every image carries the seed-1 noise


def test_a_capped_run_is_extended_by_a_higher_round_cap(tmp_path):
    """Issue 10, 4.8: rerunning with a higher --max-rounds goes on from the capped run's last round
    (not from round 1) and ends with the noise of an uninterrupted run of that many rounds."""
    data = make_tree(tmp_path / "data")
    one = MinMinConfig(max_rounds=1, steps=2, train_steps=2, batch_size=8, stop_accuracy=1.0)
    three = MinMinConfig(max_rounds=3, steps=2, train_steps=2, batch_size=8, stop_accuracy=1.0)
    out, whole = tmp_path / "out", tmp_path / "whole"
    first = protect_dataset(str(data), out, one, arch="smallcnn", device="cpu")
    assert first["rounds"] == 1 and not first["converged"]
    rounds_run = []
    extended = protect_dataset(str(data), out, three, arch="smallcnn", device="cpu",
                               on_event=lambda kind, info: kind == "round" and rounds_run.append(info["round"]))
    assert rounds_run == [2, 3]                       # round 1 was not redone
    assert extended["rounds"] == 3
    protect_dataset(str(data), whole, three, arch="smallcnn", device="cpu")
    assert np.array_equal(np.load(out / "perturbation.npy"), np.load(whole / "perturbation.npy"))
    assert hashes(out / "train") == hashes(whole / "train")


def test_json_reports_are_written_checked_and_never_left_half_written(tmp_path, monkeypatch):
    """verify's report.json and cell files go through the checked writer: a failing write raises one
    clean error, keeps the previous file whole and leaves no temp file."""
    import errno
    import os

    import unlearnable.data.storage as pio
    from unlearnable.data.protected import write_json_atomic
    from unlearnable.data.storage import OutputError

    path = tmp_path / "report.json"
    write_json_atomic({"v": 1}, path)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pio.os, "fsync", full)
    with pytest.raises(OutputError, match="report.json"):
        write_json_atomic({"v": 2}, path)
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
