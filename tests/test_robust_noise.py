"""Robust error-minimising noise (REM, arXiv 2203.14533) on the one engine: off keeps the engine as
it was, on keeps the budget, its inner maximisation raises the loss within ρ_a, its outer step
lowers the worst-case loss, and a REM search resumes from its checkpoint bit for bit."""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from conftest import pre_option_fingerprint, synthetic_images

from unlearnable.attacks.pgd import PGD
from unlearnable.data.datasets import ImageTensors
from unlearnable.errors import UnlearnableError
from unlearnable.noise import robust
from unlearnable.noise.minmin import MinMinConfig, _fingerprint, error_minimizing_noise
from unlearnable.noise.problems import DatasetProblem
from unlearnable.noise.robust import RobustSettings, rem_config, robust_noise_step, worst_case
from unlearnable.train.loop import TrainConfig, build_model, train

TINY = RobustSettings(radius=4 / 255, steps=2, step_size=2 / 255, samples=2, padding=2)


def _data(n: int = 32, k: int = 4, size: int = 16) -> ImageTensors:
    x, y = synthetic_images(n, k, seed=3, size=size)
    x[0] = 0                                           # saturated images exercise the pixel-range clip
    x[1] = 255
    return ImageTensors(torch.from_numpy(x), torch.from_numpy(y), [str(i) for i in range(k)])


def _cfg(mode: str = "samplewise", rounds: int = 2, on: bool = True) -> MinMinConfig:
    return MinMinConfig(mode=mode, steps=2, train_steps=2, batch_size=16, stop_accuracy=1.0, max_rounds=rounds,
                        classwise_portion=0.5, step_size=1.6 / 255, robust=TINY if on else None)


def _run(cfg: MinMinConfig, checkpoint=None, interrupt_after: int | None = None):
    def round_done(log):
        if interrupt_after is not None and log.round == interrupt_after:
            raise KeyboardInterrupt

    model = build_model("smallcnn", 4, 3, 0, torch.device("cpu"))
    return error_minimizing_noise(model, _data(), cfg, checkpoint, on_round=round_done)


@functools.cache
def _uninterrupted(mode: str):
    return _run(_cfg(mode))


@pytest.fixture(scope="module")
def trained():
    """A SmallCNN fitted to the tiny set, eval mode, and its float images and labels."""
    data = _data(n=64)
    model = build_model("smallcnn", 4, 3, 0, torch.device("cpu"))
    train(model, data, None, TrainConfig(epochs=3, batch_size=16, augment=False))
    return model.eval(), data.images.float() / 255, data.labels


def test_option_off_runs_no_rem_code_and_keeps_the_checkpoint_identity(monkeypatch):
    off = _cfg(rounds=1, on=False)
    assert "robust" not in off.settings()
    data, surrogate = _data(), build_model("smallcnn", 4, 3, 0, torch.device("cpu"))
    problem = DatasetProblem(data, off.batch_size)
    # the fingerprint of a run without the option is the one computed before the option existed
    assert _fingerprint(off, problem, surrogate) == pre_option_fingerprint(off, problem, surrogate)
    assert _fingerprint(_cfg(rounds=1), problem, surrogate) != _fingerprint(off, problem, surrogate)

    def boom(*a, **k):
        raise AssertionError("REM code ran with the option off")

    import unlearnable.noise.minmin as engine
    for name in ("AdversarialSurrogateStep", "robust_noise_step", "robust_score"):
        monkeypatch.setattr(engine, name, boom)
    a, b = _run(off).delta, _run(off).delta
    assert torch.equal(a, b) and float(a.abs().max()) > 0


@pytest.mark.parametrize("mode", ["samplewise", "classwise"])
def test_rem_noise_stays_within_eps_and_keeps_images_in_range(mode):
    res = _uninterrupted(mode)
    data = _data()
    cfg = _cfg(mode)
    assert res.rounds == 2
    assert float(res.delta.abs().max()) <= cfg.eps + 1e-7
    if mode == "samplewise":   # (a class pattern is shared by images of different content: clipped when applied)
        z = data.images.float() / 255 + res.delta
        assert float(z.min()) >= -1e-6 and float(z.max()) <= 1 + 1e-6
    em = _run(_cfg(mode, on=False)).delta
    assert not torch.equal(em, res.delta)                      # the option changes the noise
    assert all(0 <= h.surrogate_acc <= 1 for h in res.history)


def test_inner_maximisation_raises_the_loss_within_the_radius(trained):
    model, x, y = trained
    s = RobustSettings(radius=4 / 255, steps=5, step_size=1 / 255)
    d = worst_case(model, x, y, s, torch.Generator().manual_seed(0))
    assert float(d.abs().max()) <= s.radius + 1e-7
    assert float((x + d).min()) >= 0 and float((x + d).max()) <= 1
    with torch.no_grad():
        clean, adv = F.cross_entropy(model(x), y), F.cross_entropy(model(x + d), y)
    assert adv > clean + 0.05
    assert not model.training


def _robust_loss(model, x, y, delta, s) -> float:
    """The worst-case loss at x + δ within ρ_a, its PGD seeded alike for every δ compared."""
    z = (x + delta).clamp(0, 1)
    adv = z + worst_case(model, z, y, s, torch.Generator().manual_seed(1))
    with torch.no_grad():
        return float(F.cross_entropy(model(adv), y))


def test_outer_step_lowers_the_worst_case_loss(trained):
    model, x, y = trained
    s = RobustSettings(radius=4 / 255, steps=5, step_size=1 / 255, samples=2, padding=2)
    pgd = PGD(model, eps=8 / 255, alpha=1.6 / 255, steps=1, minimize=True, amp=False)
    gen = torch.Generator().manual_seed(0)
    delta = torch.zeros_like(x)
    before = _robust_loss(model, x, y, delta, s)
    for _ in range(5):
        delta = robust_noise_step(pgd, x, y, delta, s, gen)
    assert float(delta.abs().max()) <= 8 / 255 + 1e-7
    assert _robust_loss(model, x, y, delta, s) < before - 0.05
    with pytest.raises(UnlearnableError, match="identity view"):
        pgd.transform = lambda z: z
        robust_noise_step(pgd, x, y, delta, s, gen)


@pytest.mark.parametrize("mode", ["samplewise", "classwise"])
def test_rem_search_resumes_bit_for_bit(tmp_path, mode):
    full = _uninterrupted(mode)
    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(KeyboardInterrupt):
        _run(_cfg(mode), ckpt, interrupt_after=1)
    resumed = _run(_cfg(mode), ckpt)
    assert resumed.rounds == 2
    assert [h.surrogate_acc for h in resumed.history] == [h.surrogate_acc for h in full.history]
    assert torch.equal(resumed.delta, full.delta)


def test_rem_config_takes_the_official_settings():
    cfg = rem_config()
    assert cfg.robust == RobustSettings() and cfg.settings()["robust"]["radius"] == pytest.approx(4 / 255)
    assert (cfg.eps, cfg.steps, cfg.step_size, cfg.batch_size) == (8 / 255, 10, 1.6 / 255, 128)
    assert (cfg.robust.steps, cfg.robust.step_size, cfg.robust.samples) == (10, 0.8 / 255, 5)
    with pytest.raises(UnlearnableError, match="radius"):
        RobustSettings(radius=0)
    assert robust.__all__
