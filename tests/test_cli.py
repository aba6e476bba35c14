import json
from pathlib import Path

import numpy as np
import torch
from typer.testing import CliRunner

from unlearnable.cli.main import app
from unlearnable.data.datasets import load_dataset
from unlearnable.data.protected import load_protected

runner = CliRunner()
FAST = ["--arch", "smallcnn", "--subset", "100", "--steps", "2", "--train-steps", "2",
        "--batch-size", "50", "--max-rounds", "2"]


def test_protect_dataset_then_verify(cifar_root, tmp_path):
    out = tmp_path / "prot"
    r = runner.invoke(app, ["protect-dataset", "cifar10", "-o", str(out), "--data-root", str(cifar_root), *FAST])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "protected.json").read_text())
    assert manifest["num_images"] == 100 and manifest["rounds"] == 2 and manifest["linf_levels"] <= 8
    assert not (out / "checkpoint.pt").exists()
    prot, _ = load_protected(out)
    clean = load_dataset("cifar10", "train", cifar_root).subset(torch.from_numpy(np.load(out / "indices.npy")))
    assert torch.equal(prot.labels, clean.labels)
    diff = (prot.images.int() - clean.images.int()).abs()
    assert diff.max() <= 8 and diff.float().mean() > 0.5  # the noise is there and within budget
    delta = np.load(out / "perturbation.npy")
    assert delta.shape == (100, 3, 32, 32) and np.abs(delta).max() <= 8 / 255 + 1e-3

    # rerunning a finished job with the same arguments does nothing and succeeds
    r = runner.invoke(app, ["protect-dataset", "cifar10", "-o", str(out), "--data-root", str(cifar_root), *FAST])
    assert r.exit_code == 0, r.output

    r = runner.invoke(app, ["verify", str(out), "--arch", "smallcnn", "--epochs", "1", "--batch-size", "50",
                            "--defenses", "standard,grayscale", "--patterns", "none", "--robust-images", "20"])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "verify" / "report.json").read_text())
    assert [(x["arch"], x["defense"], x["train_data"]) for x in report["cells"]] == [
        ("smallcnn", "standard", "clean"), ("smallcnn", "standard", "protected"),
        ("smallcnn", "grayscale", "clean"), ("smallcnn", "grayscale", "protected")]
    for run in report["cells"]:
        assert 0 <= run["final_test_acc"] <= run["peak_test_acc"] <= 1
        assert len(run["history"]) == 1 and 0 <= run["robust_acc"] <= 1
    assert (out / "verify" / "report.html").exists()
    assert "report" in r.output and "epoch" in r.output

    r = runner.invoke(app, ["verify", str(out), "--defenses", "standard,nonsense", "--epochs", "1"])
    assert r.exit_code == 2 and "unknown defense" in r.output


def test_classwise_cli(cifar_root, tmp_path):
    out = tmp_path / "cw"
    r = runner.invoke(app, ["protect-dataset", "cifar10", "--mode", "classwise", "-o", str(out),
                            "--data-root", str(cifar_root), *FAST])
    assert r.exit_code == 0, r.output
    assert np.load(out / "perturbation.npy").shape == (10, 3, 32, 32)


def test_wrong_dataset_name(tmp_path):
    r = runner.invoke(app, ["protect-dataset", "cifar11", "-o", str(tmp_path / "o")])
    assert r.exit_code != 0
    assert "unknown dataset" in r.output and "cifar10" in r.output
    assert not (tmp_path / "o").exists()


def test_missing_data_root(tmp_path):
    r = runner.invoke(app, ["protect-dataset", "cifar10", "-o", str(tmp_path / "o"),
                            "--data-root", str(tmp_path / "empty")])
    assert r.exit_code != 0
    assert "not found" in r.output and "empty" in r.output


def test_nonpositive_epsilon(cifar_root, tmp_path):
    for eps in ("0", "-8"):
        r = runner.invoke(app, ["protect-dataset", "cifar10", "-o", str(tmp_path / "o"),
                                "--data-root", str(cifar_root), "--eps", eps])
        assert r.exit_code != 0
        assert "epsilon must be > 0" in r.output


def test_verify_on_a_path_that_is_not_protected(tmp_path):
    r = runner.invoke(app, ["verify", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "protected.json" in r.output.replace("\n", "")


def test_verify_names_verify_photos_for_a_photo_folder(tmp_path):
    (tmp_path / "me").mkdir()
    (tmp_path / "me" / "a.jpg").write_bytes(b"x")
    r = runner.invoke(app, ["verify", str(tmp_path)])
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "not a protect-dataset output" in text and "verify-photos" in text
    assert not (tmp_path / "verify").exists()                       # nothing written
    (tmp_path / ".unlearnable").mkdir()
    (tmp_path / ".unlearnable" / "checkpoint.pt").write_bytes(b"x")      # an interrupted protect-dataset
    r = runner.invoke(app, ["verify", str(tmp_path)])
    assert r.exit_code == 2 and "unfinished" in " ".join(r.output.split())
    r = runner.invoke(app, ["verify-photos", str(tmp_path)])
    assert r.exit_code == 2 and "--out" in " ".join(r.output.split())


def test_global_options_and_clean_errors(tmp_path):
    from unlearnable import __version__
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and __version__ in r.output
    (tmp_path / "in").mkdir()
    photo = sorted(Path(__file__).parent.parent.joinpath("samples").glob("*.jpg"))[0]
    (tmp_path / "in" / photo.name).write_bytes(photo.read_bytes())
    r = runner.invoke(app, ["protect", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--device", "mps"])
    assert r.exit_code == 2 and "MPS is not available" in " ".join(r.output.split())
    assert "Traceback" not in r.output
    help_text = runner.invoke(app, ["protect", "--help"]).output
    assert "--keep-gps / --drop-gps" in help_text and "<bool>" not in help_text     # flags, not values
    for verb in ("protect", "protect-dataset"):                     # one name per idea
        text = runner.invoke(app, [verb, "--help"]).output
        assert "--max-rounds" in text and "--steps" in text and "--rounds " not in text


def test_train_a_defense_on_noisy_clean_data(cifar_root, tmp_path):
    r = runner.invoke(app, ["train", "cifar10", "--defense", "tcr", "--arch", "smallcnn", "--epochs", "2",
                            "--batch-size", "50", "--label-noise", "0.4", "--robust-images", "20",
                            "--data-root", str(cifar_root), "-o", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "m.json").read_text())
    assert rec["defense"] == "tcr" and rec["label_noise"] == 0.4 and len(rec["history"]) == 2
    assert 0 <= rec["robust_acc"] <= 1 and (tmp_path / "m.pt").exists()
    r = runner.invoke(app, ["train", "cifar10", "--defense", "awp2", "--data-root", str(cifar_root)])
    assert r.exit_code == 2 and "unknown defense" in r.output
