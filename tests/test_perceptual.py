"""The perceptual budget on photos (noise.perceptual) and the blotch measure (eval.blotch): the hard ε is
never exceeded (also after rounding the written file), flat areas get less noise than texture, the search
sees the mask, the blotch measure tells blotches from fine grain, and the option off changes nothing."""
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unlearnable.data.datasets import ImageTensors
from unlearnable.eval.blotch import blotch
from unlearnable.models import create_model
from unlearnable.noise.minmin import MinMinConfig
from unlearnable.noise.perceptual import (PerceptualProblem, jnd_levels, jnd_mask, noise_shaper, perceptual_photo_noise,
                                          shape_noise)
from unlearnable.noise.upsample import apply_noise
from unlearnable.protect.photos import PhotoProtectConfig, protect_photos

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
EPS = 8 / 255


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def test_shaped_noise_never_exceeds_the_noise_it_shapes():
    g = torch.Generator().manual_seed(0)
    delta = (torch.rand(64, 3, 16, 16, generator=g) * 2 - 1) * EPS
    delta[:16] = EPS * torch.sign(delta[:16])                # every channel at the bound
    delta[16:32, 0], delta[16:32, 1:] = EPS, -EPS            # opposite signs: the worst chroma
    mask = torch.rand(64, 1, 16, 16, generator=g)
    mask[::3] = 1.0
    for chroma in (0.0, 0.25, 1.0):
        out = shape_noise(delta, mask, chroma)
        assert out.shape == delta.shape
        assert out.abs().max() <= EPS + 1e-7
        assert (out.abs() <= delta.abs().amax(1, keepdim=True) * mask + 1e-7).all()
    torch.testing.assert_close(shape_noise(delta, torch.ones_like(mask), 1.0), delta)
    gray = torch.full((1, 3, 4, 4), EPS)                     # pure luma noise passes unchanged
    torch.testing.assert_close(shape_noise(gray, torch.ones(1, 1, 4, 4), 0.25), gray)


@pytest.mark.parametrize("shape,dtype,eps", [((301, 457, 3), np.uint8, 8 / 255), ((97, 130, 3), np.uint8, 7.5 / 255),
                                             ((120, 80, 1), np.uint8, 8 / 255), ((64, 50, 3), np.uint16, 4 / 255)])
def test_written_change_never_exceeds_epsilon(shape, dtype, eps):
    rng = np.random.default_rng(0)
    top = np.iinfo(dtype).max
    pixels = rng.integers(0, top + 1, size=shape, dtype=np.int64).astype(dtype)
    pixels[: shape[0] // 3] = top // 2                       # a flat band: the mask is small there
    pixels[-5:] = top                                        # saturated rows
    delta = torch.sign(torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(1))) * eps
    out, worst = apply_noise(pixels, delta, strip=37, eps=eps, shape=noise_shaper(pixels, eps))
    change = np.abs(out.astype(np.int64) - pixels.astype(np.int64))
    assert out.dtype == pixels.dtype and change.max() == worst <= round(eps * top)
    assert worst > 0
    # and as a PNG file decodes it (8-bit): what a scraper reads back
    if dtype == np.uint8:
        buf = io.BytesIO()
        Image.fromarray(out[..., 0] if shape[2] == 1 else out).save(buf, format="PNG")
        back = np.asarray(Image.open(io.BytesIO(buf.getvalue()))).reshape(shape)
        assert np.abs(back.astype(np.int64) - pixels.astype(np.int64)).max() <= round(eps * top)


def _flat_and_texture(h=128, w=256) -> np.ndarray:
    """Left half flat mid-grey, right half a high-contrast random texture around mid-grey."""
    rng = np.random.default_rng(0)
    img = np.full((h, w, 3), 128, np.uint8)
    img[:, w // 2:] = np.where(rng.random((h, w // 2, 1)) < 0.5, 40, 216).astype(np.uint8)
    return img


def test_flat_areas_get_less_noise_than_texture():
    img = _flat_and_texture()
    rgb = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    jnd = jnd_levels(rgb)[0, 0]
    assert jnd[:, :60].max() == pytest.approx(3.0, abs=0.05)   # Chou & Li: 3 levels on flat mid-grey
    m = jnd_mask(rgb, EPS)[0, 0]
    assert m[:, :60].max() < 0.4 and m[:, 140:].mean() > 0.8
    out, _ = apply_noise(img, torch.full((3, 8, 8), EPS), eps=EPS, shape=noise_shaper(img, EPS, size=128))
    change = np.abs(out.astype(np.int64) - img.astype(np.int64))
    assert change[:, :48].mean() < 0.5 * change[:, -48:].mean()
    assert change[:, :48].max() <= 3 < change[:, -48:].max()


def test_blotch_measure_sees_blotches_not_fine_noise_of_the_same_energy():
    rng = np.random.default_rng(0)
    img = np.full((240, 320, 3), 128, np.float64)
    yy, xx = np.mgrid[:240, :320]
    smooth = 4 * np.sin(xx / 18) * np.sin(yy / 23)
    fine = rng.standard_normal((240, 320))
    fine *= np.sqrt((smooth ** 2).mean() / (fine ** 2).mean())
    colour = np.array([1.0, -1.0, 1.0])                       # magenta / green

    def written(pattern):
        return np.clip(np.round(img + pattern[..., None] * colour), 0, 255).astype(np.uint8)

    orig = img.astype(np.uint8)
    blotchy, grainy = blotch(orig, written(smooth)), blotch(orig, written(fine))
    assert blotchy["flat_share"] == grainy["flat_share"] == 1.0
    assert blotchy["blotch"] > 4 * grainy["blotch"]
    assert blotch(orig, orig)["blotch"] == 0.0
    textured = _flat_and_texture(240, 320)
    assert blotch(textured, textured)["flat_share"] == pytest.approx(0.5, abs=0.02)
    busy = rng.integers(0, 256, (40, 40, 3), dtype=np.int64).astype(np.uint8)
    assert blotch(busy, busy) == {"blotch": None, "blotch_luma": None, "flat_share": 0.0}


def _tiny_problem(n=4):
    g = torch.Generator().manual_seed(0)
    ref = ImageTensors(torch.randint(0, 256, (30, 3, 32, 32), generator=g, dtype=torch.uint8),
                       torch.arange(30) % 3, ["a", "b", "c"])
    photos = torch.randint(0, 256, (n, 3, 64, 64), generator=g, dtype=torch.uint8)
    torch.manual_seed(0)
    return ref, photos, create_model("smallcnn", num_classes=3).eval()


@pytest.mark.parametrize("mode", ["classwise", "samplewise"])
def test_the_search_sees_the_mask(mode):
    """Where the mask is zero the written noise is zero whatever δ is, so a search that sees the mask
    gets no gradient there and leaves δ at its start (zero); the rest of δ moves."""
    ref, photos, surrogate = _tiny_problem()
    masks = torch.ones(4, 1, 64, 64)
    masks[..., :32] = 0.0
    cfg = MinMinConfig.for_photos(mode=mode, max_rounds=1, min_rounds=1, steps=2, train_steps=1)
    delta, _ = perceptual_photo_noise(photos, torch.zeros(4, dtype=torch.long), 1, surrogate, ref, cfg,
                                      reference_batch=8, photo_batch=4, masks=masks)
    assert (delta[..., :32] == 0).all() and delta[..., 32:].abs().max() > 0


def test_a_view_needs_its_batch():
    ref, photos, _ = _tiny_problem()
    problem = PerceptualProblem(photos, torch.zeros(4, dtype=torch.long), 1, ref, torch.device("cpu"),
                                masks=torch.ones(4, 1, 64, 64))
    with pytest.raises(RuntimeError):
        problem.view(torch.Generator())
    problem.clean(torch.tensor([0, 1]))
    problem.view(torch.Generator())
    with pytest.raises(ValueError):
        PerceptualProblem(photos, torch.zeros(4, dtype=torch.long), 1, ref, torch.device("cpu"),
                          masks=torch.full((4, 1, 64, 64), 2.0))


def _album(root: Path) -> Path:
    for name, sample, size in (("a.png", "astronaut.png", (96, 72)), ("b.png", "coffee.png", (80, 80))):
        with Image.open(SAMPLES / sample) as im:
            im.convert("RGB").resize(size).save(root / name)
    return root


def test_protect_off_is_unchanged_and_on_writes_the_shaped_noise(tmp_path):
    src = _album(tmp_path)
    fast = MinMinConfig.for_photos(max_rounds=1, steps=2, train_steps=2)
    assert "perceptual" not in PhotoProtectConfig().fingerprint()  # settings (and state identity) as before
    for on in (False, True):
        out = tmp_path / f"out-{on}"
        m = protect_photos([src / "a.png", src / "b.png"], out, PhotoProtectConfig(search=fast, workers=1, perceptual=on))
        assert m["summary"]["ok"] == 2
        assert ("perceptual" in m["settings"]) == on
        state = torch.load(out / ".unlearnable" / "search.pt", weights_only=True)
        pattern = state["patterns"][0]
        for e in m["images"]:
            orig = np.asarray(Image.open(src / e["output"]).convert("RGB"))
            got = np.asarray(Image.open(out / e["output"]))
            plain, _ = apply_noise(orig, pattern, eps=EPS)
            if not on:  # exactly today's path: the unshaped upsampled pattern
                assert np.array_equal(got, plain)
            else:
                shaped, _ = apply_noise(orig, pattern, eps=EPS, shape=noise_shaper(orig, EPS))
                assert np.array_equal(got, shaped) and not np.array_equal(got, plain)
            assert np.abs(got.astype(int) - orig.astype(int)).max() <= 8 and e["noise_max_levels"] <= 8
            assert {"blotch", "blotch_luma", "flat_share"} <= set(e)
    with pytest.raises(Exception, match="--faces"):
        PhotoProtectConfig(faces=True, perceptual=True)
