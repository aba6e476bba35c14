"""S-CIELAB (unlearnable.eval.scielab): the colour pipeline against skimage's CIELAB, the FFT blur
against a direct convolution, the eye's low-pass on colour, masks, and the flat mask it shares with
``blotch``."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.color import deltaE_cie76, rgb2lab

from unlearnable.eval import scielab as S
from unlearnable.eval.blotch import blotch, flat_mask


def test_identical_images_differ_by_nothing():
    a = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    r = S.scielab(a, a)
    assert r["mean"] < 1e-9 and r["over_jnd"] == 0.0 and r["colour_over_jnd"] == 0.0


@pytest.mark.parametrize("c1,c2", [((120, 130, 140), (126, 128, 131)), ((30, 200, 90), (35, 195, 96)),
                                   ((250, 250, 250), (244, 250, 252))])
def test_uniform_patches_give_the_cielab_difference(c1, c2):
    """On uniform images the blur (unit sum) changes nothing: ΔE*ab is CIELAB's, as skimage computes it."""
    a = np.broadcast_to(np.array(c1, np.uint8), (24, 30, 3)).copy()
    b = np.broadcast_to(np.array(c2, np.uint8), (24, 30, 3)).copy()
    want = float(deltaE_cie76(rgb2lab(a[:1, :1]), rgb2lab(b[:1, :1]))[0, 0])
    r = S.scielab(a, b, samples_per_degree=10)
    assert r["mean"] == pytest.approx(want, rel=2e-3)
    assert r["p99"] == pytest.approx(want, rel=2e-3)
    assert r["over_jnd"] == float(want > S.JND)


def test_fft_blur_is_the_centred_convolution_with_mirrored_borders():
    x = torch.rand(3, 19, 23, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    spd = 3.0
    got = S._blur(x, spd)
    for c, spec in enumerate(S.FILTERS):
        r = int(np.ceil(3 * max(s for s, _ in spec) * spd))
        k = S.kernel(spec, spd, r)
        assert float(k.sum()) == pytest.approx(1.0)
        padded = torch.from_numpy(np.pad(x[c].numpy(), r, mode="symmetric"))
        want = F.conv2d(padded[None, None], k.flip(0, 1)[None, None])[0, 0]
        assert torch.allclose(got[c], want, atol=1e-10)


def test_the_eye_blurs_fine_colour_noise_but_not_a_blotch():
    """The same chroma amplitude is far less visible as a 1-pixel checkerboard than as a smooth blotch;
    a lightness-free colour change shows in the colour part, not in ΔL*."""
    h = w = 96
    base = np.full((h, w, 3), 128.0)
    yy, xx = np.mgrid[:h, :w]
    chroma = np.stack([1.0, -0.5, -0.5])  # R up, G and B down: mostly a red-green change
    checker = np.where((yy + xx) % 2 == 0, 1.0, -1.0)
    blotch_field = np.cos(2 * np.pi * xx / w)
    fine = np.clip(base + 6 * checker[..., None] * chroma, 0, 255).round().astype(np.uint8)
    smooth = np.clip(base + 6 * blotch_field[..., None] * chroma, 0, 255).round().astype(np.uint8)
    orig = base.astype(np.uint8)
    r_fine, r_smooth = S.scielab(orig, fine), S.scielab(orig, smooth)
    assert r_smooth["colour_over_jnd"] > 0.3 and r_fine["colour_over_jnd"] == 0.0
    assert r_fine["colour_mean"] < 0.25 * r_smooth["colour_mean"]
    d = S.scielab_difference(orig, smooth)
    assert float(d[1:].abs().max()) > 3 * float(d[0].abs().max())


def test_mask_restricts_and_an_empty_mask_gives_none():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)
    b = a.copy()
    b[:, 15:] = np.clip(b[:, 15:].astype(int) + 12, 0, 255).astype(np.uint8)
    left = np.zeros((30, 30), bool)
    left[:, :5] = True
    assert S.scielab(a, b, mask=left)["mean"] < S.scielab(a, b, mask=~left)["mean"]
    assert S.scielab(a, b, mask=np.zeros((30, 30), bool)) == dict.fromkeys(
        ("mean", "p99", "over_jnd", "colour_mean", "colour_p99", "colour_over_jnd"))


def test_gray_images_are_their_rgb_copies_and_shapes_must_match():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (20, 20), dtype=np.uint8)
    b = np.clip(a.astype(int) + 5, 0, 255).astype(np.uint8)
    assert S.scielab(a, b) == S.scielab(np.repeat(a[..., None], 3, 2), np.repeat(b[..., None], 3, 2))
    with pytest.raises(ValueError):
        S.scielab(a, b[:10])


def test_flat_mask_is_the_blotch_measures_flat_pixels():
    rng = np.random.default_rng(4)
    a = np.full((300, 40, 3), 100, np.uint8)
    a[:, 20:] = rng.integers(0, 256, (300, 20, 3), dtype=np.uint8)      # textured right half
    m = flat_mask(a)
    assert m.shape == (300, 40) and bool(m[:, :10].all()) and not bool(m[:, 30:].any())
    b = np.clip(a.astype(int) + 3, 0, 255).astype(np.uint8)
    assert float(m.double().mean()) == pytest.approx(blotch(a, b)["flat_share"])
