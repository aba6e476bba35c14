"""Noise for photos: full-resolution budget, search behaviour, scraper views, pseudo-classes."""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unlearnable.data.datasets import ImageTensors
from unlearnable.data.pseudo_labels import kmeans, pseudo_labels
from unlearnable.models import add_classes, create_model
from unlearnable.noise.minmin import MinMinConfig
from unlearnable.noise.problems import photo_noise
from unlearnable.noise.upsample import apply_noise, bilinear_matrix, upsample_noise
from unlearnable.noise.views import ViewConfig, scraper_pipeline, scraper_view

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def test_bilinear_matrix_is_convex():
    for n_out, n_in in [(37, 8), (8, 8), (5, 16), (3000, 64)]:
        m = bilinear_matrix(n_out, n_in)
        assert m.shape == (n_out, n_in)
        assert (m >= 0).all()
        torch.testing.assert_close(m.sum(1), torch.ones(n_out))


@pytest.mark.parametrize("shape,dtype", [((301, 457, 3), np.uint8), ((120, 80, 1), np.uint8), ((64, 50, 1), np.uint16)])
def test_full_resolution_change_never_exceeds_epsilon(shape, dtype):
    rng = np.random.default_rng(0)
    top = np.iinfo(dtype).max
    pixels = rng.integers(0, top + 1, size=shape, dtype=np.int64).astype(dtype)
    pixels[:10] = 0
    pixels[-10:] = top  # saturated rows: clipping must not break anything
    eps = 8 / 255
    delta = (torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1) * eps
    delta[:, ::2] = eps  # many values at the bound
    out, worst = apply_noise(pixels, delta, strip=37)
    assert out.shape == pixels.shape and out.dtype == pixels.dtype
    change = np.abs(out.astype(np.int64) - pixels.astype(np.int64))
    assert change.max() == worst <= round(eps * top)
    assert worst > 0
    # strips agree with the one-shot upsampling
    full = upsample_noise(delta.mean(0, keepdim=True) if shape[2] == 1 else delta, shape[0], shape[1])
    ref = np.clip(np.round(pixels.astype(np.float64) + full.permute(1, 2, 0).double().numpy() * top), 0, top)
    assert np.abs(ref - out).max() <= 1


def test_grayscale_photo_gets_gray_noise():
    pixels = np.full((40, 30, 1), 128, np.uint8)
    out, _ = apply_noise(pixels, torch.full((3, 8, 8), 4 / 255))
    assert out.shape == (40, 30, 1) and (out == 132).all()


def test_scraper_view_shapes_range_and_gradient():
    z = torch.rand(4, 3, 64, 64, requires_grad=True)
    v = scraper_view(z, ViewConfig(out_size=32, jpeg_prob=1.0), torch.Generator().manual_seed(0))
    assert v.shape == (4, 3, 32, 32) and v.min() >= 0 and v.max() <= 1
    v.sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_white_balanced_views_see_no_colour_cast_and_pass_gradients():
    """white_balance = 1: a class-wide tint reaches the view only as its brightness (the gray-world
    white balance takes out the rest), the view stays differentiable; 0 (default): the tint is seen, and
    the view draws nothing more from the generator than before the option existed."""
    z = 0.2 + 0.6 * torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    tint = torch.tensor([8.0, -8.0, 8.0]).view(1, 3, 1, 1) / 255
    cfg = ViewConfig(out_size=32, jpeg_prob=0.0, white_balance=1.0)

    def view(x, c=cfg, seed=0):
        return scraper_view(x, c, torch.Generator().manual_seed(seed))

    torch.testing.assert_close(view(z + tint), view(z + tint.mean()), atol=1e-5, rtol=0)
    plain = ViewConfig(out_size=32, jpeg_prob=0.0)
    assert (view(z + tint, plain) - view(z + tint.mean(), plain)).abs().max() > 4 / 255
    g = torch.Generator().manual_seed(0)
    scraper_view(z, plain, g)
    assert torch.equal(g.get_state(), _draws_of_the_plain_view(z.shape[0]))
    zz = z.clone().requires_grad_(True)
    view(zz).sum().backward()
    assert torch.isfinite(zz.grad).all() and zz.grad.abs().sum() > 0


def _draws_of_the_plain_view(b: int) -> torch.Tensor:
    """The generator state after the draws of a view without JPEG and without white balance: four
    uniform (b,) draws (side, aspect, x and y shift) and one for the flip."""
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        torch.rand(b, generator=g)
    return g.get_state()


def test_whole_photos_and_faces_search_through_white_balanced_views_by_default(tmp_path, monkeypatch):
    """The photo default (PHOTO_VIEW) white-balances every view; a run without it keeps its settings as
    they were before the option; faces keep their own views, white-balanced too (since 2026-11-30); the
    CLI's --no-white-balance gives the plain views of either."""
    from typer.testing import CliRunner

    import unlearnable.protect.photos as protect_mod
    from unlearnable.cli.main import app
    from unlearnable.noise.views import FACE_VIEW, PHOTO_VIEW
    from unlearnable.protect.photos import PhotoProtectConfig

    assert PhotoProtectConfig().view == PHOTO_VIEW and PHOTO_VIEW.white_balance == 1.0
    assert PhotoProtectConfig().fingerprint()["view"]["white_balance"] == 1.0
    assert "white_balance" not in PhotoProtectConfig(view=ViewConfig()).fingerprint()["view"]
    assert PhotoProtectConfig(faces=True).view == FACE_VIEW and FACE_VIEW.white_balance == 1.0
    seen = []
    monkeypatch.setattr(protect_mod, "protect_photos", lambda inputs, out, cfg, on_event=None: seen.append(cfg) or
                        {"images": [], "summary": {}, "errors": []})
    (tmp_path / "in").mkdir()
    for flag in ([], ["--no-white-balance"]):
        CliRunner().invoke(app, ["protect", str(tmp_path / "in"), "-o", str(tmp_path / "o"), *flag])
    for flag in ([], ["--no-white-balance"]):
        CliRunner().invoke(app, ["protect", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--faces", *flag])
    assert [c.view.white_balance for c in seen] == [1.0, 0.0, 1.0, 0.0]
    assert seen[2].view == FACE_VIEW and seen[3].view == replace(FACE_VIEW, white_balance=0.0)   # not photo views


def test_protect_passes_a_noise_structure_to_the_search(tmp_path, monkeypatch):
    """``protect --structure`` reaches the search schedule (whole photos and faces); none by default; an
    unknown structure is a usage error (exit 2) before anything is read."""
    from typer.testing import CliRunner

    import unlearnable.protect.photos as protect_mod
    from unlearnable.cli.main import app

    seen = []
    monkeypatch.setattr(protect_mod, "protect_photos", lambda inputs, out, cfg, on_event=None: seen.append(cfg) or
                        {"images": [], "summary": {}, "errors": []})
    (tmp_path / "in").mkdir()
    base = ["protect", str(tmp_path / "in"), "-o", str(tmp_path / "o")]
    for extra in ([], ["--structure", "balanced"], ["--faces", "--structure", "balanced"]):
        CliRunner().invoke(app, base + extra)                                # the fake manifest has no summary
    assert [c.search.structure for c in seen] == [None, "balanced", "balanced"]
    assert seen[2].search.steps == 20                                        # still the face schedule
    bad = CliRunner().invoke(app, base + ["--structure", "wobbly"])
    assert bad.exit_code == 2 and len(seen) == 3


def test_scraper_pipeline_resizes_and_recompresses():
    rgb = np.random.default_rng(0).integers(0, 256, (300, 451, 3), dtype=np.uint8)
    small = scraper_pipeline(rgb, 32, 75)
    assert small.shape == (32, 32, 3) and small.dtype == np.uint8
    assert not np.array_equal(small, scraper_pipeline(rgb, 32, None))


def test_add_classes_keeps_old_classes():
    torch.manual_seed(0)
    m = create_model("smallcnn", num_classes=10).eval()
    m2 = add_classes(m, 2).eval()
    x = torch.rand(3, 3, 32, 32)
    out, out2 = m(x), m2(x)
    assert out2.shape == (3, 12)
    torch.testing.assert_close(out2[:, :10], out)
    assert m.head.out_features == 10  # original untouched


def _tiny_problem(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ref = ImageTensors(torch.randint(0, 256, (60, 3, 32, 32), generator=g, dtype=torch.uint8),
                       torch.arange(60) % 3, ["a", "b", "c"])
    photos = torch.randint(0, 256, (n, 3, 64, 64), generator=g, dtype=torch.uint8)
    torch.manual_seed(seed)
    return ref, photos, create_model("smallcnn", num_classes=3).eval()


@pytest.mark.parametrize("mode", ["samplewise", "classwise"])
def test_photo_noise_is_bounded_and_leaves_the_surrogate_alone(mode):
    ref, photos, surrogate = _tiny_problem()
    labels = torch.arange(12) % 2
    before = [p.clone() for p in surrogate.parameters()]
    cfg = MinMinConfig.for_photos(mode=mode, max_rounds=3, min_rounds=3, steps=3, train_steps=2)
    delta, hist = photo_noise(photos, labels, 2, surrogate, ref, cfg, reference_batch=16, photo_batch=8)
    assert delta.shape == ((12 if mode == "samplewise" else 2), 3, 64, 64)
    assert delta.abs().max() <= cfg.eps + 1e-6 and delta.abs().max() > 0
    assert len(hist) == 3
    for p, q in zip(before, surrogate.parameters()):
        assert torch.equal(p, q)  # the given surrogate is never modified
    if mode == "samplewise":  # x + δ stays a valid image (a shared class pattern is clipped when applied)
        x = photos.float() / 255
        assert ((x + delta) >= -1e-6).all() and ((x + delta) <= 1 + 1e-6).all()


def _view_loss(model, z, labels, draws=4):
    """Mean cross-entropy of ``model`` over ``draws`` seeded random scraper views of z (the same views
    for any z of the same shape)."""
    with torch.no_grad():
        return sum(float(F.cross_entropy(model(scraper_view(z, ViewConfig(out_size=32), torch.Generator().manual_seed(s))),
                                         labels)) for s in range(draws)) / draws


@pytest.mark.parametrize("mode", ["samplewise", "classwise"])
def test_photo_noise_lowers_the_loss(mode, monkeypatch):
    """The min-min promise on real photos: the shipped surrogate is fine-tuned on the perturbed sample
    photos (two classes) during the search; on the same random scraper views, the fine-tuned model's
    loss with the found noise must be strictly lower than with no noise."""
    import unlearnable.noise.problems as search
    from unlearnable.data.photos.decode import read_preview
    from unlearnable.train.surrogate import load_reference, load_surrogate

    surrogate, _ = load_surrogate()
    reference = load_reference()
    files = sorted(p for p in SAMPLES.iterdir() if p.suffix in (".png", ".jpg"))
    photos = torch.from_numpy(np.stack([read_preview(p, 64) for p in files])).permute(0, 3, 1, 2).contiguous()
    labels = torch.arange(len(files)) % 2
    made = []  # the search's own model (a fine-tuned copy with two new classes), kept to measure it
    real_add = search.add_classes
    monkeypatch.setattr(search, "add_classes", lambda m, extra: made.append(real_add(m, extra)) or made[-1])
    cfg = MinMinConfig.for_photos(mode=mode, max_rounds=2, min_rounds=2, steps=3, train_steps=3)
    delta, _ = photo_noise(photos, labels, 2, surrogate, reference, cfg)
    model = made[0].eval()
    x = photos.float() / 255
    d = delta[labels] if mode == "classwise" else delta
    target = labels + reference.num_classes
    clean, protected = _view_loss(model, x, target), _view_loss(model, (x + d).clamp(0, 1), target)
    assert protected < clean - 0.02, (protected, clean)


def test_classwise_photo_step_is_the_mean_of_per_photo_steps():
    """The paper's class-wise update (official perturbation.py): every photo takes its own signed
    step from the class pattern and the pattern becomes their mean, not the sign of a summed gradient."""
    ref, photos, surrogate = _tiny_problem(4)
    labels = torch.zeros(4, dtype=torch.long)
    cfg = MinMinConfig.for_photos(mode="classwise", max_rounds=1, min_rounds=1, steps=1, train_steps=0)
    delta, _ = photo_noise(photos, labels, 1, surrogate, ref, cfg)
    # recompute the one PGD step: same model, same seeded views (the search's first use of its generator)
    model = add_classes(surrogate, 1).eval()
    d = torch.zeros(4, 3, 64, 64, requires_grad=True)
    view = ViewConfig(out_size=32)
    loss = F.cross_entropy(model(scraper_view((photos.float() / 255 + d).clamp(0, 1), view,
                                              torch.Generator().manual_seed(cfg.seed))), labels + 3, reduction="sum")
    grad, = torch.autograd.grad(loss, d)
    expected = (-cfg.step_size * grad.sign()).clamp(-cfg.eps, cfg.eps).mean(0)
    torch.testing.assert_close(delta[0], expected)
    assert ((delta.abs() > 0) & (delta.abs() < cfg.step_size - 1e-7)).any()  # partial agreement: a partial step


def test_photo_noise_is_deterministic():
    ref, photos, surrogate = _tiny_problem(6)
    cfg = MinMinConfig.for_photos(max_rounds=2, steps=2, train_steps=1)
    d1, _ = photo_noise(photos, torch.zeros(6, dtype=torch.long), 1, surrogate, ref, cfg, reference_batch=8, photo_batch=4)
    d2, _ = photo_noise(photos, torch.zeros(6, dtype=torch.long), 1, surrogate, ref, cfg, reference_batch=8, photo_batch=4)
    assert torch.equal(d1, d2)


def test_kmeans_finds_separated_groups():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(10, 5, generator=g) * 0.05 + 3
    b = torch.randn(7, 5, generator=g) * 0.05 - 3
    lab = kmeans(torch.cat([a, b]), 2)
    assert len(set(lab[:10].tolist())) == 1 and len(set(lab[10:].tolist())) == 1 and lab[0] != lab[10]


def test_pseudo_labels_cover_all_photos():
    _, photos, surrogate = _tiny_problem(9)
    labels, names = pseudo_labels(surrogate, photos, 3)
    assert labels.shape == (9,) and int(labels.max()) + 1 == len(names) <= 3
