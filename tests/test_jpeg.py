import io

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from unlearnable.data.jpeg import (JPEG, block_dct, coefficient_spread, dct_matrix, jpeg, quant_tables,
                                   quantisation_reach)


def crops() -> dict[str, np.ndarray]:
    """128x128 uint8 RGB crops of real photos (textured face/suit, coffee cup and saucer)."""
    return {"astronaut": data.astronaut()[100:228, 180:308], "coffee": data.coffee()[100:228, 200:328]}


def pil_jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """Encode with PIL (libjpeg-turbo) at ``quality``, 4:2:0, and decode; uint8 out."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality, subsampling=2)
    buf.seek(0)
    return np.asarray(Image.open(buf))


def to_batch(img: np.ndarray) -> torch.Tensor:
    """(H, W, C) or (H, W) uint8 -> (1, C, H, W) float in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(img)).float() / 255
    return t.permute(2, 0, 1)[None] if t.dim() == 3 else t[None, None]


def to_image(x: torch.Tensor) -> np.ndarray:
    """(1, C, H, W) in [0, 1] -> (H, W, C) or (H, W) float in [0, 255]."""
    a = x[0].permute(1, 2, 0).numpy() * 255
    return a[..., 0] if a.shape[-1] == 1 else a


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


@pytest.mark.parametrize("quality", [75, 10])
def test_matches_pil_on_real_photos(quality):
    # Measured (PIL 13, libjpeg-turbo 3.2): PSNR(ours, PIL) 49.3 / 48.3 dB at q75 and 49.0 / 50.5 dB
    # at q10 (astronaut / coffee); mean |ours - PIL| 0.27-0.64 levels, vs |input - PIL| 3.1-7.7.
    for name, img in crops().items():
        ref = pil_jpeg(img, quality)
        ours = to_image(jpeg(to_batch(img), quality))
        gap = np.abs(ours - ref).mean()
        pil_change = np.abs(img.astype(np.float64) - ref).mean()
        assert psnr(ours, ref) > 44, name
        assert gap < 0.25 * pil_change, name


def test_grayscale_matches_pil():
    # Measured: 52.6 dB at q75 (an 8-bit gray photo goes through the same integer planes as libjpeg).
    img = data.camera()[200:328, 200:328]
    ref = pil_jpeg(img, 75)
    out = jpeg(to_batch(img), 75)
    assert out.shape == (1, 1, 128, 128)
    assert psnr(to_image(out), ref) > 48


def test_lower_quality_degrades_more():
    x = to_batch(crops()["astronaut"])
    err75 = (jpeg(x, 75) - x).abs().mean()
    err10 = (jpeg(x, 10) - x).abs().mean()
    assert err10 > 2 * err75 > 0


@pytest.mark.parametrize("subsampling", [True, False])
@pytest.mark.parametrize("channels", [3, 1])
def test_odd_sizes_keep_shape_and_range(subsampling, channels):
    x = torch.rand(2, channels, 37, 45, generator=torch.Generator().manual_seed(0))
    out = jpeg(x, 50, subsampling=subsampling)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert (out - x).abs().mean() > 0.01  # random noise does not survive JPEG


def test_odd_size_real_photo_close_to_pil():
    img = data.coffee()[50:87, 60:105]  # 37x45: partial blocks and an odd chroma plane
    assert psnr(to_image(jpeg(to_batch(img), 75)), pil_jpeg(img, 75)) > 42  # measured 45.8 dB


def test_gradient_flows_when_differentiable():
    x = to_batch(crops()["coffee"][:64, :64]).requires_grad_(True)
    out = jpeg(x, 75, differentiable=True)
    assert torch.equal(out.detach(), jpeg(x.detach(), 75))  # forward is exact JPEG
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


def test_per_image_quality():
    img = to_batch(crops()["astronaut"])
    x = torch.cat([img, img, img])
    out = jpeg(x, torch.tensor([10, 75, 95]))
    for i, q in enumerate([10, 75, 95]):
        assert torch.allclose(out[i:i + 1], jpeg(img, q), atol=1e-5)
    errs = (out - x).abs().mean(dim=(1, 2, 3))
    assert errs[0] > errs[1] > errs[2]
    with pytest.raises(ValueError):
        jpeg(x, torch.tensor([10, 75]))


def test_quality_tables_follow_ijg_scaling():
    luma, chroma = quant_tables(50)
    assert luma[0, 0] == 16 and chroma[0, 0] == 17  # quality 50 = the Annex K tables
    luma, chroma = quant_tables(75)
    assert luma[0, 0] == 8 and luma[7, 7] == 50  # scale 50%: floor((16*50+50)/100), floor((99*50+50)/100)
    luma, _ = quant_tables(10)
    assert luma[0, 0] == 80 and luma.max() == 255  # scale 500%, clamped to baseline 255
    assert quant_tables(torch.tensor([10, 75]))[0].shape == (2, 8, 8)


def test_module_wrapper():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(JPEG(quality=10)(x), jpeg(x, 10))
    assert "quality=10" in repr(JPEG(quality=10))


@pytest.mark.parametrize("quality,eps", [(10, 8 / 255), (30, 8 / 255), (10, 16 / 255)])
def test_quantisation_reach_is_what_the_quantiser_lets_through(quality, eps):
    """For every luminance coefficient, the extremal pattern ±eps · sign(b_uv) moves the quantised
    coefficient on every image where reach >= 1, and on a share of about reach where reach < 1 (content
    spread uniformly over many steps)."""
    luma, chroma = quantisation_reach(quality, eps)
    q_luma, q_chroma = quant_tables(quality, dtype=torch.float64)
    assert torch.allclose(chroma * q_chroma, luma * q_luma)      # the same L∞ reach in Y, Cb and Cr
    k = torch.kron(dct_matrix(8, dtype=torch.float64), dct_matrix(8, dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    n = 4000
    for i in range(64):
        q = float(q_luma.flatten()[i])
        coef = torch.zeros(n, 64, dtype=torch.float64)
        coef[:, i] = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 40 * q
        content = (coef @ k).reshape(n, 1, 8, 8)
        pattern = 255 * eps * torch.sign(k[i]).reshape(1, 1, 8, 8)
        before = torch.round(block_dct(content)[..., i] / q)
        after = torch.round(block_dct(content + pattern)[..., i] / q)
        moved = float((after != before).double().mean())
        r = float(luma.flatten()[i])
        assert moved == pytest.approx(min(r, 1.0), abs=0.04), (divmod(i, 8), r, moved)


def test_coefficient_spread_sees_only_what_varies():
    """Flat grey images of random brightness vary only the luminance DC coefficient, by 8 × the std of
    their 8-bit level (orthonormal DCT of an 8 × 8 block); everything else, chroma included, is 0."""
    g = torch.Generator().manual_seed(0)
    level = torch.randint(0, 256, (500,), generator=g).double()
    x = (level / 255).view(-1, 1, 1, 1).expand(-1, 3, 16, 16)
    luma, chroma = coefficient_spread(x)
    assert float(luma[0, 0]) == pytest.approx(8 * float(level.repeat_interleave(4).std()), rel=1e-6)  # 4 blocks each
    rest = luma.flatten()[1:]
    assert float(rest.abs().max()) < 1e-6 and float(chroma.abs().max()) < 1e-6
