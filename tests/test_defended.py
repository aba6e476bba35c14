"""The defended-verification matrix: every defense trains, cells resume, the HTML report is
self-contained (every image embedded, every table with the rows it should have), and the
verdict follows its stated rules on hand-computed cells."""
import base64
import io
import json
from html.parser import HTMLParser

import pytest
import torch
from PIL import Image

import unlearnable.verify.matrix as defended
from unlearnable.errors import UnlearnableError
from unlearnable.eval.patterns import PatternConfig
from unlearnable.eval.summary import summarize_matrix, summarize_run, verdict_text
from unlearnable.noise.minmin import MinMinConfig
from unlearnable.protect.dataset import protect_dataset
from unlearnable.train.defenses import DEFENSES, parse_defenses
from unlearnable.train.loop import EpochRecord, TrainConfig
from unlearnable.verify.matrix import MatrixConfig, run_cell, split_validation, verify_defenses


class Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.refs, self.tables, self.svgs = [], [], {}, 0
        self._table = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.ids = getattr(self, "ids", set()) | ({a["id"]} if "id" in a else set())
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag in ("link", "script", "iframe") or (tag == "a" and "href" in a):
            self.refs.append((tag, a))
        if tag == "svg":
            self.svgs += 1
        if tag == "table":
            self._table = a.get("id")
            self.tables[self._table] = []
        if tag == "tr" and self._table and any(k.startswith("data-") for k in a):
            self.tables[self._table].append(a)


@pytest.fixture(scope="module")
def protected(tmp_path_factory):
    from conftest import write_cifar10
    root = write_cifar10(tmp_path_factory.mktemp("data"))
    out = tmp_path_factory.mktemp("prot")
    protect_dataset("cifar10", out, MinMinConfig(mode="classwise", max_rounds=2, train_steps=2, batch_size=50),
                    "smallcnn", 100, root, "cpu")
    return out, root


def small_config(defenses, epochs=1):
    return MatrixConfig(archs=["smallcnn"], defenses=defenses, train=TrainConfig(epochs=epochs, batch_size=50),
                        at_steps=1, robust_images=20, robust_steps=2, patterns_for=["standard"],
                        pattern=PatternConfig(max_steps=4))


def test_every_defense_trains_and_the_report_is_self_contained(protected, tmp_path):
    prot, root = protected
    out = tmp_path / "verify"
    seen = []
    report = verify_defenses(prot, out, small_config(list(DEFENSES)), "cpu", root,
                             on_event=lambda kind, info: kind == "model" and seen.append((info["key"], info["reused"])))
    assert len(report["cells"]) == 2 * len(DEFENSES) and not any(r for _, r in seen)
    # 100 protected images, 10 per class: 1 per class held out for validation, the same for both runs
    assert report["train_images"] == 90 and report["val_images"] == 10
    for c in report["cells"]:
        assert 0 <= c["final_test_acc"] <= 1 and 0 <= c["robust_acc"] <= 1 and len(c["history"]) == 1
        assert c["train_images"] == 90 and c["val_images"] == 10 and c["chosen_by"] == "validation"
        assert c["history"][0]["val_acc"] is not None
        assert (out / "cells" / f"{c['arch']}--{c['defense']}--{c['train_data']}.json").exists()
    recipes = {c["defense"]: c["recipe"] for c in report["cells"]}
    assert (recipes["apl"]["lr"], recipes["apl"]["weight_decay"]) == (0.01, 1e-4)
    assert (recipes["awp"]["schedule"], recipes["awp"]["grad_clip"]) == ("multistep", None)
    assert (recipes["standard"]["lr"], recipes["standard"]["schedule"]) == (0.1, "cosine")
    assert report["matrix"]["recipes"]["apl"]["lr"] == 0.01
    assert report["matrix"]["robust"]["label"] == "PGD-2 (L∞ ε 8/255, step 2/255, random start) on 20 clean test images"
    assert {r["defense"] for r in report["summary"]} == set(DEFENSES)
    assert all(r["verdict"] in ("holds", "broken", "inconclusive", "no verdict") for r in report["summary"])
    std = [c for c in report["cells"] if c["defense"] == "standard"]
    assert all(set(c["patterns"]) == {"clean_canvas", "protected_canvas", "noise"} for c in std)
    assert json.loads((out / "report.json").read_text())["cells"] == report["cells"]

    page = Collector()
    text = (out / "report.html").read_text()
    page.feed(text)
    assert "verdict" in page.ids and report["verdict_text"].split(":")[0] in text
    assert report["matrix"]["robust"]["label"] in text and "accuracy (%)" in text and "chance" in text
    assert page.refs == []                                    # no scripts, stylesheets or links to fetch
    assert len(page.imgs) == 3 * 10 + 2 * 2 * 10              # before/after grid + 2 models × 2 canvases × 10 classes
    for src in page.imgs:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    assert [(r["data-arch"], r["data-defense"]) for r in page.tables["summary"]] == [
        ("smallcnn", d) for d in DEFENSES]
    assert len(page.tables["cells"]) == 2 * len(DEFENSES)
    assert [(r["data-cell"], r["data-canvas"]) for r in page.tables["patterns"]] == [
        (f"smallcnn--standard--{d}", k) for d in ("clean", "protected")
        for k in ("clean_canvas", "protected_canvas", "noise")]
    assert [r["data-defense"] for r in page.tables["defenses"]] == list(DEFENSES)
    assert page.svgs == len(DEFENSES) + 1                     # one learning-curve plot per defense + the bars


def test_finished_cells_are_reused_and_changed_settings_are_not(protected, tmp_path):
    prot, root = protected
    out = tmp_path / "verify"
    verify_defenses(prot, out, small_config(["standard", "mixup"]), "cpu", root)
    seen = []
    verify_defenses(prot, out, small_config(["standard", "mixup", "grayscale"]), "cpu", root,
                    on_event=lambda kind, info: kind == "model" and seen.append((info["key"], info["reused"])))
    assert seen == [("smallcnn--standard--clean", True), ("smallcnn--standard--protected", True),
                    ("smallcnn--mixup--clean", True), ("smallcnn--mixup--protected", True),
                    ("smallcnn--grayscale--clean", False), ("smallcnn--grayscale--protected", False)]
    seen.clear()
    verify_defenses(prot, out, small_config(["mixup"], epochs=2), "cpu", root,
                    on_event=lambda kind, info: kind == "model" and seen.append((info["key"], info["reused"])))
    assert [r for _, r in seen] == [False, False]


def test_parse_defenses():
    assert parse_defenses("AT, jpeg,at") == ["at", "jpeg"]
    assert parse_defenses("all") == list(DEFENSES)
    with pytest.raises(UnlearnableError, match="unknown defense"):
        parse_defenses("standard,fgsm")


def test_only_finished_reports_without_training(protected, tmp_path):
    prot, root = protected
    out = tmp_path / "verify"
    verify_defenses(prot, out, small_config(["standard"]), "cpu", root)
    seen = []
    rep = verify_defenses(prot, out, small_config(["standard", "mixup"]), "cpu", root, only_finished=True,
                          on_event=lambda kind, info: kind == "model" and seen.append((info["key"], info["reused"])))
    assert rep["cells_missing"] == ["smallcnn--mixup--clean", "smallcnn--mixup--protected"]
    assert [c["defense"] for c in rep["cells"]] == ["standard", "standard"]
    assert not (out / "cells" / "smallcnn--mixup--clean.json").exists()
    assert "2 planned model(s) are not trained yet" in rep["verdict_text"]


def test_robust_readout_uses_its_own_settings_not_the_training_attack(monkeypatch):
    from conftest import synthetic_images

    from unlearnable.data.datasets import ImageTensors

    x, y = synthetic_images(40, 10, seed=0)
    data = ImageTensors(torch.from_numpy(x), torch.from_numpy(y), [str(k) for k in range(10)], "toy")
    calls = []
    monkeypatch.setattr(defended, "robust_accuracy",
                        lambda model, images, labels, eps, alpha, steps, seed=0, loss_fn=None:
                        calls.append((eps, alpha, steps, len(images))) or 0.5)
    cfg = MatrixConfig(archs=["smallcnn"], train=TrainConfig(epochs=1, batch_size=20), at_eps=4 / 255,
                       at_alpha=3 / 255, at_steps=1, robust_eps=8 / 255, robust_alpha=2 / 255, robust_steps=7,
                       robust_images=30, patterns_for=["none"])
    rec, _, _ = run_cell("smallcnn", "at", "clean", data, data, cfg, torch.device("cpu"), "cifar10")
    assert calls == [(8 / 255, 2 / 255, 7, 30)]
    assert rec["robust_eval"]["label"] == "PGD-7 (L∞ ε 8/255, step 2/255, random start) on 30 clean test images"


def test_cas_cells_are_read_out_with_the_adaptive_objective(monkeypatch):
    """Plain-CE PGD is not an adaptive attack on CAS: its cells are attacked with CE + β·aux CE."""
    from conftest import synthetic_images

    from unlearnable.data.datasets import ImageTensors

    x, y = synthetic_images(40, 10, seed=0)
    data = ImageTensors(torch.from_numpy(x), torch.from_numpy(y), [str(k) for k in range(10)], "toy")
    objectives = {}

    def fake(model, images, labels, eps, alpha, steps, seed=0, loss_fn=None):
        objectives[len(objectives)] = None if loss_fn is None else loss_fn.__name__
        return 0.5

    monkeypatch.setattr(defended, "robust_accuracy", fake)
    cfg = MatrixConfig(archs=["smallcnn"], train=TrainConfig(epochs=1, batch_size=20), at_steps=1, robust_images=10,
                       patterns_for=["none"])
    cas, _, _ = run_cell("smallcnn", "cas", "clean", data, data, cfg, torch.device("cpu"), "cifar10")
    at, _, _ = run_cell("smallcnn", "at", "clean", data, data, cfg, torch.device("cpu"), "cifar10")
    assert objectives == {0: "ce+2*cas_aux", 1: None}
    assert cas["robust_eval"]["objective"] == "ce+2*cas_aux" and at["robust_eval"]["objective"] == "ce"


def test_jpeg_iss_squeezes_the_stored_images_once_before_the_crop(monkeypatch):
    """ISS's order: jpeg-iss trains a plain step on the stored images JPEG-10'd and rounded to 8 bits; jpeg
    keeps the stored images and compresses each augmented batch in its step instead."""
    from conftest import synthetic_images

    from unlearnable.data.datasets import ImageTensors
    from unlearnable.data.jpeg import jpeg
    from unlearnable.train.defenses import TransformStep, squeeze_images
    from unlearnable.train.loop import StandardStep

    x, y = synthetic_images(40, 10, seed=0)
    data = ImageTensors(torch.from_numpy(x), torch.from_numpy(y), [str(k) for k in range(10)], "toy")
    seen = {}

    def fake_train(model, train_set, test_set, tc, step=None, **kw):
        seen[len(seen)] = (train_set.images.clone(), step)
        return []

    monkeypatch.setattr(defended, "train", fake_train)
    monkeypatch.setattr(defended, "summarize_run", lambda *a: {})
    cfg = MatrixConfig(archs=["smallcnn"], train=TrainConfig(epochs=1, batch_size=20), robust_images=0,
                       patterns_for=["none"])
    for d in ("jpeg-iss", "jpeg"):
        run_cell("smallcnn", d, "clean", data, data, cfg, torch.device("cpu"), "cifar10")
    (iss, iss_step), (per_batch, batch_step) = seen[0], seen[1]
    expected = (jpeg(data.images.float() / 255, 10) * 255).round().clamp(0, 255).to(torch.uint8)
    assert torch.equal(iss, expected) and not torch.equal(iss, data.images)
    assert torch.equal(squeeze_images(data.images, lambda v: jpeg(v, 10), batch=7), expected)   # batching
    assert type(iss_step) is StandardStep
    assert torch.equal(per_batch, data.images) and isinstance(batch_step, TransformStep)


def test_split_validation_is_balanced_disjoint_and_seeded():
    labels = torch.tensor([0] * 20 + [1] * 10 + [2] * 3)
    tr, val = split_validation(labels, 0.1, seed=3)
    assert sorted(torch.cat([tr, val]).tolist()) == list(range(33))
    assert torch.bincount(labels[val]).tolist() == [2, 1, 1]        # round(2.0), round(1.0), at least one
    assert torch.equal(split_validation(labels, 0.1, seed=3)[1], val)
    assert not torch.equal(split_validation(labels, 0.1, seed=4)[1], val)
    assert len(split_validation(labels, 0.0, 0)[1]) == 0


def _run(defense, data, test, val=None):
    """A cell record from per-epoch clean test (and validation) accuracies, through summarize_run."""
    hist = [EpochRecord(i + 1, 0.1, 1.0, 0.9, 1.0, t, 1.0, None if val is None else 1.0,
                        None if val is None else val[i]) for i, t in enumerate(test)]
    rec = summarize_run("smallcnn", data, hist, 1.0)
    rec.update(defense=defense, robust_acc=None)
    return rec


def test_summarize_matrix_on_hand_computed_cells():
    cells = [
        # standard: validation picks epoch 2 (0.70) although test peaks at epoch 3 (0.65)
        _run("standard", "clean", [0.30, 0.60, 0.65, 0.62], [0.30, 0.70, 0.60, 0.65]),
        # protected standard: the oracle test peak (0.45, epoch 1) would say "broken" ((0.45-0.1)/0.5 = 0.7);
        # the trainer validates on protected images, picks epoch 4, and gets 0.15
        _run("standard", "protected", [0.45, 0.20, 0.30, 0.15], [0.90, 0.95, 0.97, 0.99]),
        _run("at", "clean", [0.30, 0.40], [0.50, 0.50]),       # tie: the first epoch of the best
        _run("at", "protected", [0.40, 0.22], [0.40, 0.60]),
        _run("awp", "clean", [0.25], [0.5]),
        _run("awp", "protected", [0.22], [0.5]),
        _run("apl", "clean", [0.18, 0.30], [0.4, 0.3]),         # chosen epoch 1: 0.18 < 0.1 + 0.1
        _run("apl", "protected", [0.30, 0.10], [0.4, 0.3]),
        _run("cutout", "clean", [0.50]),                        # no validation: the last epoch; no protected run
    ]
    assert (cells[0]["chosen_epoch"], cells[0]["chosen_test_acc"]) == (2, 0.60)
    assert (cells[0]["peak_epoch"], cells[0]["peak_test_acc"], cells[0]["final_test_acc"]) == (3, 0.65, 0.62)
    assert (cells[1]["chosen_epoch"], cells[1]["chosen_test_acc"], cells[1]["peak_test_acc"]) == (4, 0.15, 0.45)
    assert (cells[2]["chosen_epoch"], cells[2]["chosen_test_acc"]) == (1, 0.30)
    assert (cells[8]["chosen_epoch"], cells[8]["chosen_by"], cells[8]["chosen_test_acc"]) == (1, "final epoch", 0.50)
    rows = {r["defense"]: r for r in summarize_matrix(cells, num_classes=10)}
    assert list(rows) == ["standard", "at", "awp", "apl", "cutout"]
    approx = lambda v: pytest.approx(v, abs=1e-12)  # noqa: E731
    s = rows["standard"]   # (0.15 − 0.1) / (0.60 − 0.1) = 0.1 against both
    assert s["standard_clean_acc"] == 0.60 and s["chance"] == 0.1
    assert (s["recovered_vs_same"], s["recovered_vs_standard"], s["verdict"]) == (approx(0.1), approx(0.1), "holds")
    a = rows["at"]         # protected epoch 2: 0.22; vs same (0.22 − 0.1) / (0.3 − 0.1) = 0.6; vs standard 0.12 / 0.5
    assert (a["recovered_vs_same"], a["recovered_vs_standard"], a["verdict"]) == (approx(0.6), approx(0.24),
                                                                                  "inconclusive")
    w = rows["awp"]        # vs same 0.12 / 0.15 = 0.8, vs standard 0.12 / 0.5 = 0.24
    assert (w["recovered_vs_same"], w["recovered_vs_standard"], w["verdict"]) == (approx(0.8), approx(0.24),
                                                                                  "inconclusive")
    p = rows["apl"]
    assert (p["verdict"], p["recovered_vs_same"], p["recovered_vs_standard"]) == ("no verdict", None, None)
    assert "did not learn (18.0%" in p["reason"]
    assert rows["cutout"]["verdict"] is None and "missing" in rows["cutout"]["reason"]

    # a protected run at 0.40 recovers (0.4 − 0.1) / 0.5 = 0.6 of the standard clean model: broken
    cells[3] = _run("at", "protected", [0.20, 0.40], [0.40, 0.60])
    rows = {r["defense"]: r for r in summarize_matrix(cells, num_classes=10)}
    assert (rows["at"]["recovered_vs_same"], rows["at"]["recovered_vs_standard"], rows["at"]["verdict"]) == (
        approx(1.5), approx(0.6), "broken")
    text = verdict_text({"summary": list(rows.values()), "matrix": {"archs": ["smallcnn"], "chance_margin": 0.1},
                         "val_images": 500, "classes": list("abcdefghij")})
    assert text.startswith("Verdict: of the 4 training methods tried, the protection held against 1 and was broken "
                           "by 1: at.")
    assert "recognises 60% of new test images" in text and "and 15% when it learns from the protected" in text
    assert "Inconclusive for awp" in text and "No verdict for apl" in text and "Not finished: cutout." in text


def test_readme_and_results_state_the_robust_readout_that_runs():
    """The README's robust-accuracy label is the one the benchmark's settings write, and every
    results file's label is written from its own numbers (issue 10: a typed "step 2/255" while the
    readout ran with step 3/255)."""
    import importlib.util
    from pathlib import Path

    from unlearnable.verify.matrix import robust_label

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("bench_defenses", root / "benchmarks" / "defenses.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = bench.matrix_config(bench.CONFIGS["cpu"])
    assert cfg.robust_alpha != cfg.at_alpha                 # the CPU config trains with step 3/255
    assert robust_label(cfg) in (root / "README.md").read_text()
    for f in (root / "benchmarks" / "results").glob("defenses-*.json"):
        r = json.loads(f.read_text()).get("robust_eval")
        if isinstance(r, dict):
            assert r["label"] == robust_label(MatrixConfig(robust_images=r["images"], robust_eps=r["eps"],
                                                           robust_alpha=r["alpha"], robust_steps=r["steps"])), f


def test_clean_cells_before_the_protection_are_reused_by_the_matrix(protected, tmp_path):
    import numpy as np

    prot, root = protected
    out = tmp_path / "verify"
    cfg = small_config(["standard", "mixup"])            # patterns for standard: its clean cell needs the noise
    recs = defended.clean_cells("cifar10", np.load(prot / "indices.npy"), out, cfg, "cpu", root)
    assert [(r["defense"], r["train_images"], r["val_images"]) for r in recs] == [("mixup", 90, 10)]
    seen = []
    verify_defenses(prot, out, small_config(["standard", "mixup"]), "cpu", root,
                    on_event=lambda kind, info: kind == "model" and seen.append((info["key"], info["reused"])))
    assert seen == [("smallcnn--standard--clean", False), ("smallcnn--standard--protected", False),
                    ("smallcnn--mixup--clean", True), ("smallcnn--mixup--protected", False)]


def test_verify_squashes_clean_images_of_a_mixed_size_imagefolder_to_the_working_size(tmp_path):
    """A mixed-size ImageFolder is protected at a working size; verify must load the clean train
    and test images at that size too (it used to fail: the images do not share one size)."""
    from test_protect_dataset import make_tree

    from unlearnable.noise.minmin import MinMinConfig
    from unlearnable.protect.dataset import protect_dataset

    data = tmp_path / "mydata"
    make_tree(data / "train", sizes={"cat/a.png": (40, 24), "dog/w.png": (9, 30)})
    make_tree(data / "test", sizes={"cat/b.jpg": (20, 33)})
    prot = tmp_path / "prot"
    protect_dataset(str(data), prot, MinMinConfig(max_rounds=1, steps=1, train_steps=1, batch_size=8),
                    arch="smallcnn", device="cpu", work_size=12)
    cfg = MatrixConfig(archs=["smallcnn"], defenses=["standard"], train=TrainConfig(epochs=1, batch_size=8),
                       patterns_for=["none"], robust_images=0, val_share=0)
    report = verify_defenses(prot, tmp_path / "verify", cfg, "cpu")
    assert report["test_images"] == 8 and report["summary"][0]["protected"]["chosen_test_acc"] is not None


def test_graph_victims_are_cells_of_the_matrix(protected, tmp_path):
    """dgc-pixels / dgc-surrogate (a kNN graph classified by DGC, arXiv 2102.10739) run as victims:
    one clean and one protected cell each, through the standard entry only, with a verdict row."""
    prot, root = protected
    cfg = MatrixConfig(archs=["dgc-pixels", "dgc-surrogate"], defenses=["standard", "grayscale"],
                       train=TrainConfig(epochs=1, batch_size=50), robust_images=0,
                       pattern=PatternConfig(max_steps=2))   # patterns asked for: a graph victim has none
    seen = []
    report = verify_defenses(prot, tmp_path / "verify", cfg, "cpu", root,
                             on_event=lambda kind, info: kind == "model" and seen.append(info["key"]))
    assert seen == ["dgc-pixels--standard--clean", "dgc-pixels--standard--protected",
                    "dgc-surrogate--standard--clean", "dgc-surrogate--standard--protected"]
    for cell in report["cells"]:
        assert 0 <= cell["chosen_test_acc"] <= 1 and cell["graph"]["nodes"] == cell["train_images"] + report["test_images"]
        assert cell["recipe"]["extractor"] == ("pixels" if cell["arch"] == "dgc-pixels" else "smallcnn-cifar10")
    assert [r["arch"] for r in report["summary"]] == ["dgc-pixels", "dgc-surrogate"]
    assert all(r["verdict"] in ("holds", "broken", "inconclusive", "no verdict") for r in report["summary"])
    assert (tmp_path / "verify" / "report.html").exists()
