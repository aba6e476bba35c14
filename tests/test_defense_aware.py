"""Defense-aware search and structured noise (issue 13, item 2) on the one engine: each defense view is
its defense's own transform in the forward pass and passes gradients, mixing scores the defense's
mixed loss, the structure projections keep |δ| ≤ ε and are idempotent, the options off leave the
engine and protect-dataset as they were, and the search lowers the loss under the views."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import pre_option_fingerprint, synthetic_images
from PIL import Image

from unlearnable.data.augment import cutmix, cutout, gray_world, grayscale, mixed_cross_entropy, mixup, random_crop_flip
from unlearnable.data.datasets import ImageTensors, balanced_subset, load_dataset, resolve_data_root
from unlearnable.data.jpeg import jpeg
from unlearnable.errors import UnlearnableError
from unlearnable.noise import minmin as engine
from unlearnable.noise.defense_aware import DefenseAwareProblem, defense_aware_noise
from unlearnable.noise.defense_views import DefenseView, DefenseViewConfig, parse_views, resize_down_up
from unlearnable.noise.minmin import MinMinConfig, _fingerprint, error_minimizing_noise, minmin
from unlearnable.noise.problems import DatasetProblem
from unlearnable.noise.robust import RobustSettings
from unlearnable.noise.structure import (balanced, colour_cast, lowpass, luminance, parse_structure,
                                         structure_projection, tile)
from unlearnable.train.loop import TrainConfig, build_model, train

EPS = 8 / 255


def _data(n: int = 32, k: int = 4, size: int = 16, saturate: bool = True) -> ImageTensors:
    x, y = synthetic_images(n, k, seed=3, size=size)
    if saturate:
        x[0] = 0                                       # saturated images exercise the pixel-range clip
        x[1] = 255
    else:
        x = np.clip(x, 20, 235)
    return ImageTensors(torch.from_numpy(x), torch.from_numpy(y), [str(i) for i in range(k)])


def _cfg(mode: str = "samplewise", rounds: int = 2, **kw) -> MinMinConfig:
    return MinMinConfig(mode=mode, steps=2, train_steps=2, batch_size=16, stop_accuracy=1.0, max_rounds=rounds,
                        classwise_portion=0.5, **kw)


def _one(name: str, **kw) -> DefenseViewConfig:
    return DefenseViewConfig(views=(name,), crop_flip=False, **kw)


def _gens(seed: int = 5) -> tuple[torch.Generator, torch.Generator]:
    return torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)


def _z(b: int = 8, size: int = 32) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(1))


# --- each view: the defense's transform in the forward pass, gradients flow ------------------------------

def _twin(name: str, z: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The non-differentiable defense (``train.defenses`` / ``data.augment``) on the same random draws."""
    torch.randint(0, 1, (len(z),), generator=gen)                  # the view's pick of a defense per image
    with torch.no_grad():
        if name == "grayscale":
            return grayscale(z)
        if name == "jpeg":
            q = torch.randint(10, 51, (len(z),), generator=gen)
            return jpeg(z, q.float())
        if name == "cutout":
            return cutout(z, 16, gen)
        if name in ("mixup", "cutmix"):
            return (mixup if name == "mixup" else cutmix)(z, torch.zeros(len(z), dtype=torch.long), 1.0, gen)[0]
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["grayscale", "jpeg", "cutout", "mixup", "cutmix"])
def test_each_view_equals_its_defense_forward_and_passes_gradients(name):
    g1, g2 = _gens()
    z = _z().requires_grad_(True)
    out = DefenseView(_one(name), g1)(z)
    assert torch.equal(out.detach(), _twin(name, z.detach(), g2))
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    (grad,) = torch.autograd.grad((out * w).sum(), z)
    assert bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0


def test_jpeg_view_is_differentiable_where_the_defense_is_not():
    z = _z().requires_grad_(True)
    view = DefenseView(_one("jpeg"), torch.Generator().manual_seed(0))(z)
    (g_view,) = torch.autograd.grad(view.sum(), z)
    plain = jpeg(z, 10)                                             # rounding: no gradient reaches the input
    (g_plain,) = torch.autograd.grad(plain.sum(), z, allow_unused=True)
    assert g_plain is None or float(g_plain.abs().sum()) == 0
    assert float(g_view.abs().mean()) > 0.1                          # straight-through: about the identity's


def test_crop_flip_comes_first_and_standard_adds_nothing():
    g1, g2 = _gens()
    z = _z()
    out = DefenseView(DefenseViewConfig(views=("standard",)), g1)(z)
    assert torch.equal(out, random_crop_flip(z, 4, g2))


def test_resize_matches_pillow_bilinear_down_up_and_passes_gradients():
    x, _ = synthetic_images(4, 2, seed=0, size=32)
    for side in (16, 24):
        ours = resize_down_up(torch.from_numpy(x).float() / 255, (side, side)) * 255
        for i in range(len(x)):
            im = Image.fromarray(np.ascontiguousarray(x[i].transpose(1, 2, 0)))
            pil = np.asarray(im.resize((side, side), Image.Resampling.BILINEAR).resize((32, 32),
                                                                                       Image.Resampling.BILINEAR))
            assert np.abs(ours[i].permute(1, 2, 0).numpy() - pil.astype(np.float32)).max() <= 2.0   # two roundings
    z = _z().requires_grad_(True)
    out = DefenseView(_one("resize"), torch.Generator().manual_seed(0))(z)
    assert out.shape == z.shape and 0 <= float(out.detach().min()) and float(out.detach().max()) <= 1
    (grad,) = torch.autograd.grad(out.sum(), z)
    assert float(grad.abs().sum()) > 0


@pytest.mark.parametrize("name", ["mixup", "cutmix"])
def test_mixing_scores_the_defense_mixed_loss_and_soft_targets(name):
    g1, g2 = _gens()
    z = _z()
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    view = DefenseView(_one(name), g1)
    xm = view(z)
    torch.randint(0, 1, (len(z),), generator=g2)
    mix = mixup if name == "mixup" else cutmix
    twin, ya, yb, lam = mix(z, y, 1.0, g2)
    assert torch.equal(xm, twin) and 0 < lam < 1
    logits = torch.randn(8, 4, generator=torch.Generator().manual_seed(3))
    expected = mixed_cross_entropy(logits, ya, yb, lam)
    assert torch.allclose(view.loss(logits, y), expected, atol=1e-6)
    assert torch.allclose(F.cross_entropy(logits, view.soft_targets(y, 4)), expected, atol=1e-6)
    assert torch.equal(view.dominant(y), ya if lam >= 0.5 else yb)


def test_unmixed_images_keep_plain_cross_entropy_and_every_image_gets_one_view():
    cfg = DefenseViewConfig()
    z = _z(b=64)
    view = DefenseView(cfg, torch.Generator().manual_seed(0))
    out = view(z)
    y = torch.arange(64) % 4
    mixed = view.lam < 1
    assert out.shape == z.shape and 0 < int(mixed.sum()) < 64      # some images mixed, most not
    logits = torch.randn(64, 4, generator=torch.Generator().manual_seed(3))
    own = F.cross_entropy(logits, y, reduction="none")
    assert torch.equal(view.partner[~mixed], torch.arange(64)[~mixed])
    assert torch.allclose(view.loss(logits, y), (view.lam * own + (1 - view.lam) * F.cross_entropy(
        logits, y[view.partner], reduction="none")).mean())


def test_view_names_are_validated():
    assert parse_views("all") == DefenseViewConfig().views
    assert parse_views("jpeg, grayscale,jpeg") == ("jpeg", "grayscale")
    with pytest.raises(UnlearnableError, match="unknown defense view"):
        parse_views("jpeg,blur")
    with pytest.raises(UnlearnableError):
        DefenseViewConfig(jpeg_quality=(50, 10))


# --- structure: projections -------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["luminance", "lowpass", "lowpass-8", "luminance+lowpass", "tile", "tile-4",
                                  "luminance+tile-8+lowpass-2"])
def test_structure_projection_keeps_the_ball_and_is_idempotent(spec):
    d = (torch.rand(6, 3, 18, 18, generator=torch.Generator().manual_seed(0)) * 2 - 1) * EPS   # 18: partial blocks
    p = structure_projection(spec)
    once = p(d)
    assert float(once.abs().max()) <= EPS + 1e-7
    assert torch.allclose(p(once), once, atol=1e-8)
    assert not torch.allclose(once, d)


def test_luminance_survives_grayscale_and_lowpass_is_block_constant():
    x = _z()
    d = (torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1) * EPS
    assert torch.allclose(grayscale(x + luminance(d)), grayscale(x) + luminance(d), atol=1e-6)
    lp = lowpass(d, 4)
    blocks = lp.unfold(2, 4, 4).unfold(3, 4, 4)                      # (B, C, 8, 8, 4, 4)
    assert torch.equal(blocks, blocks[..., :1, :1].expand_as(blocks))


def test_tile_is_a_periodic_texture_and_an_orthogonal_projection():
    d = (torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(0)) * 2 - 1) * EPS   # 20: partial tiles
    t = tile(d, 8)
    assert torch.equal(t[..., :8, :8], t[..., 8:16, 8:16]) and torch.equal(t[..., :4, :8], t[..., 16:20, 8:16])
    assert abs(float(((d - t) * t).sum())) < 1e-6                     # residual orthogonal to the image of P
    lp = tile(d, 8, block=4)
    blocks = lp[..., :16, :16].unfold(2, 4, 4).unfold(3, 4, 4)
    assert torch.equal(blocks, blocks[..., :1, :1].expand_as(blocks))
    assert torch.equal(lp[..., :8, :8], lp[..., 8:16, :8])
    assert torch.allclose(structure_projection("tile-8+lowpass-4")(d), lp)
    periodic = torch.rand(1, 1, 8, 8).repeat(1, 1, 4, 4)             # a periodic δ is left as it is
    assert torch.allclose(tile(periodic, 8), periodic, atol=1e-7)


def test_balanced_takes_out_the_cast_inside_the_ball_and_keeps_the_gray_mean():
    g = torch.Generator().manual_seed(0)
    cast = torch.tensor([0.6, -0.4, 0.2]).view(1, 3, 1, 1) * EPS
    d = ((torch.rand(6, 3, 18, 18, generator=g) * 2 - 1) * EPS + cast).clamp(-EPS, EPS)
    signs = torch.sign(torch.randn(6, 3, 18, 18, generator=g)) * EPS          # a sign step's ±ε noise
    for x in (d, signs):
        assert float(colour_cast(x).abs().max()) > 0.3 / 255
        b = balanced(x, EPS)
        assert float(colour_cast(b).abs().max()) < 1e-5 / 255              # no cast left, to the bisection's tolerance
        assert float(b.abs().max()) <= EPS + 1e-7                          # inside the ball
        assert torch.allclose(b.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=1e-7)   # a brightness change is kept
        assert torch.allclose(balanced(b, EPS), b, atol=1e-6)              # idempotent
    lum = luminance(d)
    assert torch.allclose(balanced(lum, EPS), lum, atol=1e-7)               # luminance noise has no cast
    assert torch.allclose(structure_projection("luminance+balanced", EPS)(d), lum, atol=1e-7)
    lin = balanced(d)                                                       # the gradient's (linear) projection
    assert torch.allclose(balanced(lin), lin, atol=1e-8) and float(colour_cast(lin).abs().max()) < 1e-8
    z = _z(6, 18) * 0.8 + 0.1                                               # away from the pixel range's ends
    assert torch.allclose(gray_world(z + d), gray_world(z + lin), atol=1e-6)   # what gray world never sees
    tiled = structure_projection("tile-8+balanced", EPS)(d)                  # the offset and clip keep the texture
    assert torch.allclose(tiled[..., :8, :8], tiled[..., 8:16, 8:16]) and float(colour_cast(tiled).abs().max()) < 1e-7


def test_balanced_search_writes_no_cast():
    data = _data(saturate=False)
    model = build_model("smallcnn", 4, 3, 0, torch.device("cpu"))
    plain = error_minimizing_noise(model, data, _cfg("classwise")).delta
    d = error_minimizing_noise(build_model("smallcnn", 4, 3, 0, torch.device("cpu")), data,
                               _cfg("classwise", structure="balanced")).delta
    assert float(colour_cast(plain).abs().max()) > 0.1 / 255                  # sign steps leave a cast
    assert float(colour_cast(d).abs().max()) < 1e-4 / 255
    assert float(d.abs().max()) <= EPS + 1e-6 and float(d.abs().mean()) > 0.5 / 255


def test_structure_spec_is_canonical_and_validated():
    assert parse_structure("lowpass+luminance") == "luminance+lowpass-4"
    assert parse_structure("balanced+tile+luminance") == "luminance+tile-8+balanced"
    assert MinMinConfig(structure="Lowpass-8").structure == "lowpass-8"
    assert parse_structure("lowpass-2+tile+luminance") == "luminance+tile-8+lowpass-2"
    for bad in ("blur", "lowpass-1", "luminance+luminance", "", "tile-1", "tile-8+lowpass-3", "tile+tile-4",
                "balanced+balanced"):
        with pytest.raises(UnlearnableError):
            MinMinConfig(structure=bad)


@pytest.mark.parametrize("mode", ["samplewise", "classwise"])
def test_structured_search_gives_structured_noise_within_eps(mode):
    data = _data(saturate=False)
    model = build_model("smallcnn", 4, 3, 0, torch.device("cpu"))
    res = error_minimizing_noise(model, data, _cfg(mode, structure="luminance+lowpass"))
    d = res.delta
    assert float(d.abs().max()) <= EPS + 1e-6 and float(d.abs().max()) > 0
    assert torch.allclose(d, structure_projection("luminance+lowpass")(d), atol=1e-6)
    x = data.images.float() / 255
    per = res.per_sample(data.labels)
    assert float((x + per).min()) >= 0 and float((x + per).max()) <= 1


@pytest.mark.parametrize("spec,robust", [("luminance+lowpass-8", False), ("lowpass-4", False),
                                         ("luminance+tile-8+lowpass-2", False), ("luminance+lowpass-8", True)])
def test_structured_step_moves_every_block_by_a_full_step(spec, robust):
    """One sample-wise round of one PGD step from zero noise, away from the pixel range: the step is
    sign(P∇) · α, so every block moves by exactly α (the raw sign, projected afterwards, would move a
    block by the mean of its pixels' signs, mostly less); REM's noise step too."""
    data = _data(saturate=False)
    model = build_model("smallcnn", 4, 3, 0, torch.device("cpu"))
    rem = RobustSettings(radius=2 / 255, steps=1, step_size=2 / 255, samples=1, padding=2) if robust else None
    cfg = replace(_cfg(rounds=1, structure=spec, robust=rem), steps=1, train_steps=0)
    d = error_minimizing_noise(model, data, cfg).delta
    assert torch.allclose(d, structure_projection(spec)(d), atol=1e-7)
    assert torch.allclose(d.abs(), torch.full_like(d, cfg.step_size), atol=1e-7)


def test_structure_on_saturated_pixels_is_cut_by_the_pixel_range_only():
    data = _data(saturate=False)
    data.images[0, 0] = 255                                           # one channel saturated: a luminance
    data.images[1, 2] = 0                                             # step must be cut there
    res = error_minimizing_noise(build_model("smallcnn", 4, 3, 0, torch.device("cpu")), data,
                                 _cfg(structure="luminance"))
    d = res.delta
    x = data.images.float() / 255
    assert float((x + d).min()) >= 0 and float((x + d).max()) <= 1   # the engine's feasibility holds
    off = (d - d.mean(1, keepdim=True)).abs().amax(1) > 1e-6          # pixels whose channels differ
    assert not bool(off[2:].any()) and bool(off[:2].any())           # ... only on the saturated images


# --- off: the engine and protect-dataset as before ------------------------------------------------------

def test_options_off_keep_the_checkpoint_identity_and_run_no_option_code(monkeypatch):
    off = _cfg(rounds=1)
    assert "structure" not in off.settings()
    data, surrogate = _data(), build_model("smallcnn", 4, 3, 0, torch.device("cpu"))
    problem = DatasetProblem(data, off.batch_size)
    assert _fingerprint(off, problem, surrogate) == pre_option_fingerprint(off, problem, surrogate)
    assert _fingerprint(_cfg(rounds=1, structure="luminance"), problem, surrogate) != _fingerprint(off, problem,
                                                                                                   surrogate)
    aware = DefenseAwareProblem(data, off.batch_size)
    assert _fingerprint(off, aware, surrogate) != _fingerprint(off, problem, surrogate)

    def boom(*a, **k):
        raise AssertionError("structure code ran with the option off")

    monkeypatch.setattr(engine, "structured_step", boom)
    a = error_minimizing_noise(build_model("smallcnn", 4, 3, 0, torch.device("cpu")), data, off).delta
    b = error_minimizing_noise(build_model("smallcnn", 4, 3, 0, torch.device("cpu")), data, off).delta
    assert torch.equal(a, b) and float(a.abs().max()) > 0


def test_protect_dataset_off_keeps_its_settings(cifar_root, tmp_path, monkeypatch):
    import unlearnable.protect.dataset as workflow
    from unlearnable.protect.dataset import protect_dataset

    def boom(*a, **k):
        raise AssertionError("the defense-aware search ran with the option off")

    monkeypatch.setattr(workflow, "defense_aware_noise", boom)
    cfg = MinMinConfig(steps=1, train_steps=1, batch_size=20, max_rounds=1)
    off = protect_dataset("cifar10", tmp_path / "off", cfg, "smallcnn", 20, cifar_root, "cpu")
    assert "defense_aware" not in off["settings"] and "structure" not in off["settings"]["minmin"]


def test_cli_protect_dataset_takes_defense_aware_and_structure(cifar_root, tmp_path):
    import json

    from typer.testing import CliRunner

    from unlearnable.cli.main import app

    out = tmp_path / "prot"
    args = ["protect-dataset", "cifar10", "-o", str(out), "--data-root", str(cifar_root), "--arch", "smallcnn",
            "--subset", "20", "--steps", "1", "--train-steps", "1", "--batch-size", "20", "--max-rounds", "1"]
    r = CliRunner().invoke(app, [*args, "--defense-aware", "cutout,mixup", "--structure", "luminance"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "protected.json").read_text())
    assert manifest["settings"]["defense_aware"]["views"] == ["cutout", "mixup"]
    assert manifest["settings"]["minmin"]["structure"] == "luminance" and manifest["linf_levels"] <= 8
    delta = np.load(out / "perturbation.npy").astype(np.float32)
    assert np.abs(delta - delta.mean(1, keepdims=True)).max() < 1 / 255   # luminance (float16 file, clipped pixels)
    r = CliRunner().invoke(app, [*args[:3], str(tmp_path / "o2"), *args[4:], "--defense-aware", "blur"])
    assert r.exit_code == 2 and "unknown defense view" in r.output


# --- the defense-aware search ---------------------------------------------------------------------------

def test_defense_aware_search_resumes_bit_for_bit(tmp_path):
    cfg = _cfg(rounds=2)
    full = defense_aware_noise(build_model("smallcnn", 4, 3, 0, torch.device("cpu")), _data(n=16), cfg)

    def stop(log):
        if log.round == 1:
            raise KeyboardInterrupt

    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(KeyboardInterrupt):
        defense_aware_noise(build_model("smallcnn", 4, 3, 0, torch.device("cpu")), _data(n=16), cfg, ckpt,
                            on_round=stop)
    resumed = defense_aware_noise(build_model("smallcnn", 4, 3, 0, torch.device("cpu")), _data(n=16), cfg, ckpt)
    assert torch.equal(full.delta, resumed.delta)
    assert full.history[-1].surrogate_loss == resumed.history[-1].surrogate_loss
    with pytest.raises(UnlearnableError, match="identity view"):
        defense_aware_noise(build_model("smallcnn", 4, 3, 0, torch.device("cpu")), _data(),
                            _cfg(robust=RobustSettings()))


@pytest.fixture(scope="module")
def cifar_subset():
    """60 real CIFAR-10 training images (6 per class) and a SmallCNN fitted to them."""
    try:
        full = load_dataset("cifar10", "train", resolve_data_root(None))
    except Exception as e:                                           # no CIFAR-10 on this machine
        pytest.skip(f"CIFAR-10 not available: {e}")
    data = full.subset(balanced_subset(full.labels, 60, 0))
    model = build_model("smallcnn", 10, 3, 0, torch.device("cpu"))
    train(model, data, None, TrainConfig(epochs=10, batch_size=20, augment=False))
    return data, model


@pytest.mark.parametrize("views", [DefenseViewConfig(), DefenseViewConfig(views=("grayscale",), crop_flip=False)],
                         ids=["all", "grayscale"])
def test_defense_aware_search_lowers_the_loss_under_the_views(cifar_subset, views):
    """With the surrogate frozen (no training steps), PGD through the defense views lowers the expected
    loss under the views below the clean images'; under grayscale alone, also below plain EM noise of
    the same budget (which spends part of it on colour that grayscale removes)."""
    data, trained = cifar_subset
    cfg = MinMinConfig(steps=5, train_steps=0, batch_size=30, max_rounds=1, step_size=2 / 255)

    def searched(problem) -> torch.Tensor:
        model = build_model("smallcnn", 10, 3, 0, torch.device("cpu"))
        model.load_state_dict(trained.state_dict())
        return minmin(model, problem, cfg).delta

    aware = searched(DefenseAwareProblem(data, cfg.batch_size, views))
    judge = DefenseAwareProblem(data, cfg.batch_size, views)
    pool = torch.arange(len(data))

    def view_loss(delta: torch.Tensor) -> float:
        gen = torch.Generator().manual_seed(99)
        return sum(judge.score(trained, lambda i: delta[i], pool, 60, gen)[1] for _ in range(4)) / 4

    clean, da = view_loss(torch.zeros_like(aware)), view_loss(aware)
    assert da < 0.9 * clean, (clean, da)
    if views.views == ("grayscale",):
        em = view_loss(searched(DatasetProblem(data, cfg.batch_size)))
        assert da < 0.95 * em, (clean, em, da)


# --- warm start: plain EM first, then the views ------------------------------------------------------------

def _model():
    return build_model("smallcnn", 4, 3, 0, torch.device("cpu"))


def _logs(history) -> list[tuple]:
    return [(h.round, h.surrogate_acc, h.surrogate_loss) for h in history]


def test_warm_start_is_plain_em_draw_for_draw_then_the_views():
    cfg = _cfg(rounds=4)
    em = error_minimizing_noise(_model(), _data(), cfg)
    warm = defense_aware_noise(_model(), _data(), cfg, views=DefenseViewConfig(warm_start=2))
    cold = defense_aware_noise(_model(), _data(), cfg)
    assert warm.views_from == 3 and cold.views_from is None and warm.rounds == 4
    assert _logs(warm.history[:2]) == _logs(em.history[:2])          # the warm rounds are EM's, bit for bit
    assert _logs(warm.history[2:]) != _logs(em.history[2:])          # then the views
    assert _logs(warm.history) != _logs(cold.history)
    assert float(warm.delta.abs().max()) <= EPS + 1e-7 and not torch.equal(warm.delta, em.delta)


def test_warm_start_ends_when_em_passes_its_stop_test(tmp_path):
    cfg, views = replace(_cfg(rounds=5), stop_accuracy=0.01), DefenseViewConfig(warm_start=3)   # any model passes
    warm = defense_aware_noise(_model(), _data(), cfg, views=views)
    assert warm.views_from == 2 and warm.rounds == 2 and warm.converged   # 1 EM round, 1 through the views

    def stop(log):
        raise KeyboardInterrupt

    ckpt = tmp_path / "ckpt.pt"      # interrupted at the switch, whose stop test passed: the views still run
    with pytest.raises(KeyboardInterrupt):
        defense_aware_noise(_model(), _data(), cfg, ckpt, on_round=stop, views=views)
    resumed = defense_aware_noise(_model(), _data(), cfg, ckpt, views=views)
    assert resumed.rounds == 2 and torch.equal(resumed.delta, warm.delta)


@pytest.mark.parametrize("interrupt_after", [1, 2], ids=["at-the-switch", "after-it"])
def test_warm_start_resumes_bit_for_bit(tmp_path, interrupt_after):
    cfg, views = _cfg(rounds=3), DefenseViewConfig(warm_start=1)
    full = defense_aware_noise(_model(), _data(n=16), cfg, views=views)

    def stop(log):
        if log.round == interrupt_after:
            raise KeyboardInterrupt

    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(KeyboardInterrupt):
        defense_aware_noise(_model(), _data(n=16), cfg, ckpt, on_round=stop, views=views)
    resumed = defense_aware_noise(_model(), _data(n=16), cfg, ckpt, views=views)
    assert resumed.views_from == full.views_from == 2 and resumed.rounds == 3
    assert torch.equal(full.delta, resumed.delta) and _logs(full.history) == _logs(resumed.history)


def test_warm_start_is_validated_and_off_keeps_the_identity():
    assert "warm_start" not in DefenseViewConfig().settings()
    assert DefenseViewConfig(warm_start=3).settings()["warm_start"] == 3
    with pytest.raises(UnlearnableError, match="warm start"):
        DefenseViewConfig(warm_start=-1)
    with pytest.raises(UnlearnableError, match="leave rounds for the views"):
        defense_aware_noise(_model(), _data(), _cfg(rounds=2), views=DefenseViewConfig(warm_start=2))
    data, cfg = _data(), _cfg(rounds=1)
    warm, cold = DefenseAwareProblem(data, 16, DefenseViewConfig(warm_start=1)), DefenseAwareProblem(data, 16)
    assert _fingerprint(cfg, warm, _model()) != _fingerprint(cfg, cold, _model())


def test_cli_warm_start_needs_defense_aware_and_records_the_switch(cifar_root, tmp_path):
    import json

    from typer.testing import CliRunner

    from unlearnable.cli.main import app

    args = ["protect-dataset", "cifar10", "--data-root", str(cifar_root), "--arch", "smallcnn", "--subset", "20",
            "--steps", "1", "--train-steps", "1", "--batch-size", "20", "--max-rounds", "2", "--warm-start", "1"]
    r = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "a")])
    assert r.exit_code == 2 and "needs --defense-aware" in r.output
    r = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "b"), "--defense-aware", "all"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "b" / "protected.json").read_text())
    assert manifest["settings"]["defense_aware"]["warm_start"] == 1 and manifest["views_from_round"] == 2
    assert manifest["rounds"] == 2 and "defense views from round 2" in r.output
