"""The defended-verification matrix: every defense trains, cells resume, and the HTML report is
self-contained (every image embedded, every table with the rows it should have)."""
import base64
import io
import json
from html.parser import HTMLParser

import pytest
from PIL import Image

from unlearnable.defended import MatrixConfig, verify_defenses
from unlearnable.noise.error_minimizing import MinMinConfig
from unlearnable.patterns import PatternConfig
from unlearnable.protect import protect_dataset
from unlearnable.train.defenses import DEFENSES, parse_defenses
from unlearnable.train.loop import TrainConfig
from unlearnable.errors import UnlearnableError


class Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.refs, self.tables, self.svgs = [], [], {}, 0
        self._table = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
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
                             on_cell=lambda key, i, n, reused: seen.append((key, reused)))
    assert len(report["cells"]) == 2 * len(DEFENSES) and not any(r for _, r in seen)
    for c in report["cells"]:
        assert 0 <= c["final_test_acc"] <= 1 and 0 <= c["robust_acc"] <= 1 and len(c["history"]) == 1
        assert (out / "cells" / f"{c['arch']}--{c['defense']}--{c['train_data']}.json").exists()
    assert {r["defense"] for r in report["summary"]} == set(DEFENSES)
    assert all(r["verdict"] in ("holds", "broken", None) for r in report["summary"])
    std = [c for c in report["cells"] if c["defense"] == "standard"]
    assert all(set(c["patterns"]) == {"clean_canvas", "protected_canvas", "noise"} for c in std)
    assert json.loads((out / "report.json").read_text())["cells"] == report["cells"]

    page = Collector()
    page.feed((out / "report.html").read_text())
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
    assert page.svgs == len(DEFENSES)                         # one learning-curve plot per defense


def test_finished_cells_are_reused_and_changed_settings_are_not(protected, tmp_path):
    prot, root = protected
    out = tmp_path / "verify"
    verify_defenses(prot, out, small_config(["standard", "mixup"]), "cpu", root)
    seen = []
    verify_defenses(prot, out, small_config(["standard", "mixup", "grayscale"]), "cpu", root,
                    on_cell=lambda key, i, n, reused: seen.append((key, reused)))
    assert seen == [("smallcnn--standard--clean", True), ("smallcnn--standard--protected", True),
                    ("smallcnn--mixup--clean", True), ("smallcnn--mixup--protected", True),
                    ("smallcnn--grayscale--clean", False), ("smallcnn--grayscale--protected", False)]
    seen.clear()
    verify_defenses(prot, out, small_config(["mixup"], epochs=2), "cpu", root,
                    on_cell=lambda key, i, n, reused: seen.append((key, reused)))
    assert [r for _, r in seen] == [False, False]


def test_parse_defenses():
    assert parse_defenses("AT, jpeg,at") == ["at", "jpeg"]
    assert parse_defenses("all") == list(DEFENSES)
    with pytest.raises(UnlearnableError, match="unknown defense"):
        parse_defenses("standard,fgsm")
