import math

import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import unlearnable.eval.quality as metrics
from unlearnable.eval.quality import psnr, ssim


def noisy(img: np.ndarray, levels: int, seed: int = 0) -> np.ndarray:
    """img plus uniform integer noise in [-levels, levels], clipped to the uint8 range."""
    rng = np.random.default_rng(seed)
    return np.clip(img.astype(np.int32) + rng.integers(-levels, levels + 1, img.shape), 0, 255).astype(np.uint8)


def skimage_ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255) -> float:
    return structural_similarity(a, b, channel_axis=-1 if a.ndim == 3 else None, gaussian_weights=True,
                                 sigma=1.5, use_sample_covariance=False, data_range=data_range)


def test_psnr_matches_skimage():
    a = data.astronaut()
    b = noisy(a, 8)
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), abs=1e-9)
    assert psnr(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(psnr(a, b), abs=1e-9)


def test_identical_images():
    a = data.coffee()[:300, :400]
    assert psnr(a, a.copy()) == math.inf
    assert ssim(a, a.copy()) == 1.0


def test_ssim_matches_skimage_rgb():
    a = data.astronaut()
    b = noisy(a, 8)
    # measured |ours - skimage| ~ 5e-9
    assert ssim(a, b) == pytest.approx(skimage_ssim(a, b), abs=1e-6)
    assert ssim(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(skimage_ssim(a, b), abs=1e-6)


def test_ssim_matches_skimage_gray_across_tile_borders(monkeypatch):
    a = data.camera()[:301, :263]  # sizes that are not multiples of the tile
    b = noisy(a, 20, seed=1)
    expected = skimage_ssim(a, b)
    assert ssim(a, b) == pytest.approx(expected, abs=1e-6)
    monkeypatch.setattr(metrics, "_TILE", (37, 50))  # several tiles, ragged last row and column
    a, b = a[:120, :97], b[:120, :97]
    assert ssim(a, b) == pytest.approx(skimage_ssim(a, b), abs=1e-6)


def test_ssim_dark_image_is_numerically_safe():
    a = (data.camera()[:128, :128] // 32).astype(np.uint8)  # values 0..7: the luminance term is tiny
    b = noisy(a, 2)
    assert ssim(a, b) == pytest.approx(skimage_ssim(a, b), abs=1e-5)


def test_uint16_images():
    a = data.astronaut()[:200, :150].astype(np.uint16) * 257
    b = noisy(data.astronaut()[:200, :150], 8).astype(np.uint16) * 257
    assert ssim(a, b, data_range=65535) == pytest.approx(skimage_ssim(a, b, 65535), abs=1e-6)
    assert psnr(a, b, data_range=65535) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=65535))


def test_inputs_are_not_modified():
    a = data.astronaut()[:64, :64].astype(np.float32)
    b = a + 3
    a0, b0 = a.copy(), b.copy()
    ssim(a, b), psnr(a, b)
    assert np.array_equal(a, a0) and np.array_equal(b, b0)


def test_shape_mismatch_raises():
    a = data.astronaut()
    with pytest.raises(ValueError):
        ssim(a, a[:-1])
    with pytest.raises(ValueError):
        psnr(a, a[..., :2])
    with pytest.raises(ValueError):
        ssim(a[:8, :8], a[:8, :8])  # smaller than the 11x11 window


def test_ssim_defined_exactly_from_11_pixels():
    a = data.astronaut()
    assert not metrics.ssim_defined(10, 4000) and not metrics.ssim_defined(4000, 10) and not metrics.ssim_defined(1, 1)
    assert metrics.ssim_defined(11, 11)
    assert ssim(a[:11, :11], noisy(a[:11, :11], 8)) == pytest.approx(skimage_ssim(a[:11, :11], noisy(a[:11, :11], 8)),
                                                                     abs=1e-6)
    with pytest.raises(ValueError, match="11x11"):
        ssim(a[:10, :400], a[:10, :400])


def test_max_abs_difference_is_exact_across_strips_and_dtypes(monkeypatch):
    a = data.astronaut()
    b = a.copy()
    b[300, 17, 1] = np.uint8(int(a[300, 17, 1]) + 40 if a[300, 17, 1] < 200 else int(a[300, 17, 1]) - 40)
    b[5, 5, 0] = np.uint8(255 - a[5, 5, 0])  # the largest change, in the first strip
    expected = int(np.abs(a.astype(int) - b.astype(int)).max())
    monkeypatch.setattr(metrics, "_PSNR_ROWS_PIXELS", 512 * 3 * 7)  # 7-row strips: the change is found anyway
    assert metrics.max_abs_difference(a, b) == expected and isinstance(metrics.max_abs_difference(a, b), int)
    assert metrics.max_abs_difference(b, a) == expected  # no uint8 wrap-around
    a16, b16 = np.zeros((3, 4, 1), np.uint16), np.full((3, 4, 1), 65535, np.uint16)
    assert metrics.max_abs_difference(a16, b16) == 65535
    fa, fb = a.astype(np.float32) / 255, b.astype(np.float32) / 255
    assert metrics.max_abs_difference(fa, fb) == pytest.approx(expected / 255)
