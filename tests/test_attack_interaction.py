"""The interaction-reduced attack (arXiv 2010.04055): its constraint, its interaction estimator,
its PGD hook, the noise-search option and the transfer command."""
from __future__ import annotations

import json

import pytest
import torch
import typer
from conftest import pre_option_fingerprint
from torch import nn
from typer.testing import CliRunner

from unlearnable.attacks.interaction import (InteractionReducedPGD, InteractionSettings, interaction_terms,
                                             measure_interaction, unit_masks)
from unlearnable.attacks.pgd import PGD
from unlearnable.errors import UnlearnableError


def _net(seed: int = 0, k: int = 4, size: int = 16) -> nn.Module:
    """A tiny nonlinear CNN (its init drawn from ``seed``, the global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, stride=2),
                             nn.Tanh(), nn.Flatten(), nn.Linear(8 * (size // 2) ** 2, k)).eval()


def _data(n: int = 6, k: int = 4, size: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    x[0] = 0.0                                     # saturated images exercise the pixel-range clip
    x[1] = 1.0
    return x, torch.randint(0, k, (n,), generator=g)


def test_ir_examples_respect_the_budget_and_pixel_range():
    model, (x, y) = _net(), _data()
    eps = 8 / 255
    for random_start in (False, True):
        adv = InteractionReducedPGD(model, eps=eps, alpha=3 / 255, steps=4, grid=8, cells=8, samples=3,
                                    random_start=random_start, generator=torch.Generator().manual_seed(1))(x, y)
        assert float((adv - x).abs().max()) <= eps + 1e-7
        assert float(adv.min()) >= 0 and float(adv.max()) <= 1
        assert float((adv - x).abs().max()) > eps / 2          # it did move


def test_chunked_attack_keeps_the_budget():
    model, (x, y) = _net(), _data()
    adv = InteractionReducedPGD(model, eps=4 / 255, steps=3, grid=8, cells=4, samples=2, batch_size=4)(x, y)
    assert adv.shape == x.shape and float((adv - x).abs().max()) <= 4 / 255 + 1e-7


def test_interaction_of_a_perturbation_on_one_unit_is_zero():
    model, (x, y) = _net(), _data()
    delta = torch.zeros_like(x)
    delta[:, :, 4:6, 10:12] = torch.rand(len(x), 3, 2, 2, generator=torch.Generator().manual_seed(1)) * 0.2 - 0.1
    # (one cell of the 8 x 8 grid at 16 px)
    inter = measure_interaction(model, x, delta, y, grid=8, cells=16, samples=16)
    assert inter.abs().max() < 1e-5
    spread = torch.zeros_like(x)
    spread[:, :, 4:6, 10:12] = 0.1
    spread[:, :, 4:6, 12:14] = 0.1                  # a neighbouring unit: they meet in the convolutions
    assert measure_interaction(model, x, spread, y, grid=8, cells=16, samples=16).abs().max() > 1e-4


class _Product(nn.Module):
    """Logits (0, c + sA·sB), sA and sB the sums of the input over two units: a game whose only
    interaction is between those units, of size sA·sB."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, z):
        sa, sb = z[:, :, 0:2, 0:2].sum((1, 2, 3)), z[:, :, 2:4, 2:4].sum((1, 2, 3))
        return torch.stack([torch.zeros_like(sa), self.c + sa * sb], 1)


def test_estimator_is_the_interaction_between_a_set_and_the_rest():
    model = _Product(c=0.7)
    x = torch.zeros(1, 1, 4, 4)
    delta = torch.zeros_like(x)
    delta[..., 0:2, 0:2], delta[..., 2:4, 2:4] = 0.5, 0.25            # sA = 2, sB = 1
    y = torch.zeros(1, dtype=torch.long)
    m = torch.zeros(1, 4, 1, 4, 4)
    m[0, 0, :, 0:2, 0:2] = 1                                          # S holds A only: separates
    m[0, 1, :, 2:4, 2:4] = 1                                          # S holds B only: separates
    m[0, 2, :, 0:2, 0:2] = m[0, 2, :, 2:4, 2:4] = 1                   # S holds both
    m[0, 3, :, 0:2, 2:4] = 1                                          # S holds neither
    out = interaction_terms(model, x, delta, y, m)
    torch.testing.assert_close(out, torch.tensor([(2.0 + 2.0 + 0 + 0) / 4]))
    flipped = interaction_terms(model, x, delta, y, m, toward_label=True)   # the noise's game: −v
    torch.testing.assert_close(flipped, -out)


def test_an_additive_game_has_no_interaction():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4)).double().eval()
    x, y = _data()
    delta = (torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) - 0.5) * 0.1
    m = unit_masks(len(x), (16, 16), grid=8, cells=16, samples=5, generator=torch.Generator().manual_seed(0))
    out = interaction_terms(lambda z: linear(z.double()), x.double(), delta.double(), y, m.double())
    assert out.abs().max() < 1e-10


def test_unit_masks_pick_distinct_cells():
    m = unit_masks(3, (32, 32), grid=16, cells=32, samples=4, generator=torch.Generator().manual_seed(0))
    assert m.shape == (3, 4, 1, 32, 32)
    assert torch.all(m.sum((2, 3, 4)) == 32 * 4)                         # 32 distinct 2x2 cells each
    cells = m[..., ::2, ::2]
    assert torch.equal(m, cells.repeat_interleave(2, -1).repeat_interleave(2, -2))
    with pytest.raises(UnlearnableError):
        unit_masks(1, (32, 32), grid=4, cells=17)


def test_lambda_zero_is_plain_pgd():
    model, (x, y) = _net(), _data()
    for random_start in (False, True):
        a = InteractionReducedPGD(model, eps=8 / 255, alpha=2 / 255, steps=5, lam=0.0, random_start=random_start,
                                  generator=torch.Generator().manual_seed(3))(x, y)
        b = PGD(model, eps=8 / 255, alpha=2 / 255, steps=5, random_start=random_start, amp=False,
                generator=torch.Generator().manual_seed(3))(x, y)
        assert torch.equal(a, b)


def test_the_penalty_lowers_the_measured_interaction():
    """On a tiny net, IR's examples interact less than PGD's at the same ε and steps (same sets
    of units to measure on)."""
    model, (x, y) = _net(seed=1, size=16), _data(n=8, seed=2)
    common = dict(eps=16 / 255, alpha=2 / 255, steps=10, grid=8, cells=8, samples=8)
    pgd = InteractionReducedPGD(model, lam=0.0, **common)(x, y)
    ir = InteractionReducedPGD(model, lam=5.0, generator=torch.Generator().manual_seed(0), **common)(x, y)
    m_pgd = measure_interaction(model, x, pgd - x, y, grid=8, cells=8, samples=64).mean()
    m_ir = measure_interaction(model, x, ir - x, y, grid=8, cells=8, samples=64).mean()
    assert m_ir < m_pgd - 0.1 * abs(m_pgd)


def test_penalty_hook_is_driven_down_both_ways():
    """A penalty that dominates the loss decides the step's sign, whether PGD ascends or descends."""
    model, (x, y) = _net(), _data()
    x = x.clamp(0.2, 0.8)
    pen = lambda forward, images, delta, logits, labels: 1e6 * delta.sum()   # noqa: E731
    for minimize in (False, True):
        d = PGD(model, eps=4 / 255, alpha=1 / 255, steps=2, minimize=minimize, penalty=pen, amp=False).perturb(x, y)
        assert torch.all(d < 0)
    with pytest.raises(UnlearnableError):
        PGD(model, steps=1, penalty=pen, transform=lambda z: z)(x, y)


def test_noise_search_option_off_keeps_the_checkpoint_identity_and_on_changes_the_noise(cifar_root):
    from unlearnable.data.datasets import load_dataset
    from unlearnable.noise.minmin import MinMinConfig, _fingerprint, error_minimizing_noise
    from unlearnable.noise.problems import DatasetProblem
    from unlearnable.train.loop import build_model

    data = load_dataset("cifar10", "train", cifar_root)
    data = data.subset(torch.arange(20))
    off = MinMinConfig(steps=2, train_steps=1, max_rounds=1, batch_size=20)
    # the fingerprint of a run without the option is the one computed before the option existed
    problem = DatasetProblem(data, off.batch_size)
    surrogate = build_model("vgg11-narrow", 10, 3, 0, "cpu")
    assert _fingerprint(off, problem, surrogate) == pre_option_fingerprint(off, problem, surrogate)

    def noise(cfg):
        return error_minimizing_noise(build_model("vgg11-narrow", 10, 3, 0, "cpu"), data, cfg).delta

    on = MinMinConfig(steps=2, train_steps=1, max_rounds=1, batch_size=20,
                      interaction=InteractionSettings(lam=1.0, grid=8, cells=8, samples=2))
    a, c = noise(off), noise(on)    # (the penalty's gradient is 0 at δ = 0: 2 steps needed to differ)
    assert not torch.equal(a, c) and float(c.abs().max()) <= on.eps + 1e-7
    assert _fingerprint(on, problem, surrogate) != _fingerprint(off, problem, surrogate)


def test_transfer_command_writes_json(cifar_root, tmp_path):
    from unlearnable.cli.attack_transfer import transfer_cmd
    from unlearnable.train.loop import build_model
    from unlearnable.train.weights import save_trained

    paths = []
    for i in range(2):   # untrained models biased towards class 3: the test images of class 3 are "correct"
        model = build_model("vgg11-narrow", 10, 3, i, "cpu")
        head = model.get_classifier()
        with torch.no_grad():
            head.weight.mul_(0.01)
            head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(3), 10).float() * 5)
        save_trained(tmp_path / f"m{i}", model, {"arch": "vgg11-narrow"})
        paths.append(tmp_path / f"m{i}")
    app = typer.Typer()
    app.command("transfer")(transfer_cmd)
    app.command("other")(lambda: None)               # two commands: typer keeps the sub-command name
    out = tmp_path / "t.json"
    res = CliRunner().invoke(app, ["transfer", str(paths[0]), "--victim", str(paths[1].with_suffix(".pt")),
                                   "--dataset", "cifar10", "--data-root", str(cifar_root), "--eps", "8",
                                   "--steps", "2", "--samples", "2", "--images", "5", "-o", str(out)])
    assert res.exit_code == 0, res.output
    rec = json.loads(out.read_text())
    assert rec["surrogate"]["arch"] == "vgg11-narrow" and rec["attacked"] > 0 and set(rec["methods"]) == {"pgd", "ir"}
    assert rec["methods"]["ir"]["linf_255"] <= 8 + 1e-4
    assert "pgd" in res.output and "ir" in res.output
    res = CliRunner().invoke(app, ["transfer", str(tmp_path / "missing"), "--victim", str(paths[1]),
                                   "--data-root", str(cifar_root)])
    assert res.exit_code == 2
