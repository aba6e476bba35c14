"""NP-Attack (arXiv 2009.11508), its neural process and the NES baseline (arXiv 1804.08598): the NP
learns images (beats the mean image), both attacks keep ε, the pixel range and the query limit
exactly, stop at once on a victim that is already wrong, and the CLI writes its JSON."""
from __future__ import annotations

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from unlearnable.attacks.nes import NES, QueryCounter, margin
from unlearnable.attacks.np_attack import NPAttack
from unlearnable.cli.attack_blackbox import blackbox_cmd
from unlearnable.data.datasets import ImageTensors
from unlearnable.errors import UnlearnableError
from unlearnable.models.neural_process import NPConfig
from unlearnable.train.neural_process import (NPTrainConfig, load_neural_process, reconstruction_mse,
                                              save_neural_process, train_neural_process)

TINY = dict(channels=3, height=8, width=8, hidden=32, r_dim=16, z_dim=8, heads=2, window=3)


def smooth_images(n: int, seed: int, size: int = 8) -> torch.Tensor:
    """uint8 (n, 3, size, size): a random colour plus a random linear ramp per channel, clipped."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(-1, 1, size)
    base = torch.rand(n, 3, 1, 1, generator=g)
    ramp = (torch.rand(n, 3, 2, 1, 1, generator=g) - 0.5) * 0.8
    x = base + ramp[:, :, 0] * t.view(1, 1, -1, 1) + ramp[:, :, 1] * t.view(1, 1, 1, -1)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread is faster, and far faster on a busy machine (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_np():
    train = ImageTensors(smooth_images(256, 0), torch.zeros(256, dtype=torch.long), ["x"], "smooth")
    model, record = train_neural_process(train, NPTrainConfig(steps=300, batch_size=16, lr=3e-3),
                                         NPConfig(**TINY))
    return model, record, train


def test_np_reconstructs_held_out_images_better_than_the_mean_image(tiny_np):
    model, _, train = tiny_np
    held_out = smooth_images(64, 1).float() / 255
    mean_image = (train.images.float() / 255).mean(0, keepdim=True)
    mean_mse = ((held_out - mean_image) ** 2).mean().item()
    assert reconstruction_mse(model, held_out, 1.0) < 0.1 * mean_mse        # every pixel as context
    assert reconstruction_mse(model, held_out, 0.5) < 0.25 * mean_mse       # half of them: completion


def test_np_file_round_trip_and_bad_files(tiny_np, tmp_path):
    model, record, _ = tiny_np
    path = save_neural_process(tmp_path / "np.pt", model, record)
    with pytest.raises(UnlearnableError):
        save_neural_process(path, model, record)                        # never replaced silently
    loaded, rec = load_neural_process(path)
    x = smooth_images(4, 2).float() / 255
    with torch.no_grad():
        r1, z1, _ = model.encode_images(x)
        r2, z2, _ = loaded.encode_images(x)
        assert torch.equal(model.decode_images(r1, z1), loaded.decode_images(r2, z2))
    assert rec["np"] == model.config.to_dict()
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(UnlearnableError):
        load_neural_process(tmp_path / "bad.pt")


def linear_victim(seed: int = 0, classes: int = 4, size: int = 8):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(classes, 3 * size * size, generator=g) * 0.2
    return lambda x: x.flatten(1) @ w.t()


def edge_images(n: int, seed: int) -> torch.Tensor:
    """Images in [0, 1] with many pixels exactly at 0 and 1 (the pixel-range clip must act)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 8, 8, generator=g) * 1.6 - 0.3).clamp(0, 1)


def attacks(victim, np_model, eps, max_queries, **kw):
    return {"nes": NES(victim, eps=eps, max_queries=max_queries, samples=4, lr=eps / 2, batch_size=3, **kw),
            "np": NPAttack(victim, np_model, eps=eps, max_queries=max_queries, population=4, lr=2.0,
                           space="rz", batch_size=3, **kw),
            "np-no-residual": NPAttack(victim, np_model, eps=eps, max_queries=max_queries, population=5, lr=2.0,
                                       residual=False, batch_size=3, **kw)}


@pytest.mark.parametrize("name", ["nes", "np", "np-no-residual"])
def test_attacks_keep_eps_pixel_range_and_query_limit(tiny_np, name):
    model, _, _ = tiny_np
    victim = linear_victim()
    x = edge_images(7, 3)
    y = victim(x).argmax(1)
    eps, limit = 4 / 255, 23                        # not a multiple of any iteration's cost
    counter = QueryCounter(victim)
    res = attacks(counter, model, eps, limit)[name](x, y)
    assert res.adv_images.shape == x.shape
    assert res.adv_images.min() >= 0 and res.adv_images.max() <= 1
    assert (res.adv_images - x).abs().max() <= eps + 1e-6
    assert (res.adv_images - x).abs().max() >= eps / 2           # the ε clip did act: the test can fail
    assert int(res.queries.max()) <= limit and int(res.queries.min()) >= 1
    assert counter.count == int(res.queries.sum())              # every query charged to its image
    # the success flags are the victim's verdict on the returned images
    assert torch.equal(victim(res.adv_images).argmax(1) != y, res.success)


@pytest.mark.parametrize("name", ["nes", "np"])
def test_per_image_limit_is_never_exceeded(tiny_np, name):
    model, _, _ = tiny_np
    victim = linear_victim(1)
    x = edge_images(1, 4)
    y = victim(x).argmax(1)
    counter = QueryCounter(victim, limit=17)         # raises on the query that would exceed it
    res = attacks(counter, model, 2 / 255, 17)[name](x, y)
    assert counter.count == int(res.queries[0]) <= 17


@pytest.mark.parametrize("name", ["nes", "np", "np-no-residual"])
def test_a_victim_that_is_already_wrong_costs_one_query(tiny_np, name):
    model, _, _ = tiny_np
    wrong = lambda x: torch.tensor([5.0, 0.0, 0.0, 0.0]).expand(len(x), -1)  # noqa: E731 - always class 0
    x = edge_images(5, 5)
    y = torch.ones(5, dtype=torch.long)
    counter = QueryCounter(wrong)
    res = attacks(counter, model, 8 / 255, 100)[name](x, y)
    assert res.success.all() and res.queries.tolist() == [1] * 5 and counter.count == 5


@pytest.mark.parametrize("name", ["nes", "np"])
def test_attacks_fool_an_easy_victim(tiny_np, name):
    model, _, _ = tiny_np
    victim = linear_victim(2)
    x = edge_images(6, 6) * 0.5 + 0.25
    y = victim(x).argmax(1)
    res = attacks(victim, model, 0.25, 400)[name](x, y)
    assert res.success.float().mean() >= 0.5
    assert (margin(victim(res.adv_images), y)[res.success] < 0).all()


def test_margin_sign_matches_misclassification():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    y = torch.tensor([0, 0])
    assert margin(logits, y).tolist() == [1.0, -3.0]
    p = torch.softmax(logits, 1)
    assert torch.allclose(margin(p, y, probabilities=True), margin(logits, y), atol=1e-5)


def test_np_attack_refuses_a_wrong_image_shape(tiny_np):
    model, _, _ = tiny_np
    with pytest.raises(UnlearnableError):
        NPAttack(linear_victim(), model)(torch.rand(2, 3, 16, 16), torch.zeros(2, dtype=torch.long))


def test_cli_black_box_writes_json(cifar_root, tmp_path):
    from unlearnable.train.loop import build_model
    from unlearnable.train.weights import save_trained

    victim = build_model("smallcnn", 10, 3, 0, "cpu")
    save_trained(tmp_path / "victim", victim, {"arch": "smallcnn"})
    app = typer.Typer()
    app.command("black-box")(blackbox_cmd)
    app.command("unused")(lambda: None)             # two commands: the command name is part of the call
    runner = CliRunner()
    base = ["black-box", str(tmp_path / "victim.pt"), "--dataset", "cifar10", "--data-root", str(cifar_root),
            "--images", "3", "--max-queries", "40", "--device", "cpu"]
    r = runner.invoke(app, base + ["--method", "nes", "-o", str(tmp_path / "nes.json")])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "nes.json").read_text())
    assert res["settings"]["method"] == "nes" and res["summary"]["images"] == len(res["queries"])
    assert max(res["queries"]) <= 40 and res["max_abs_perturbation"] <= 8 / 255 + 1e-6
    assert "median queries" in r.output
    r = runner.invoke(app, base + ["--method", "np", "--train-np", "2", "--np-out", str(tmp_path / "np.pt"),
                                   "-o", str(tmp_path / "np.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "np.json").read_text())["settings"]["np"] == str(tmp_path / "np.pt")
    r = runner.invoke(app, base + ["--method", "np", "-o", str(tmp_path / "x.json")])
    assert r.exit_code == 2 and "needs an NP" in r.output
