"""Faces: MTCNN detection on real photos, the similarity fit, alignment and the budget-safe paste-back."""
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unlearnable.faces import TEMPLATE, align, detect_faces, fit_similarity, paste_back
from unlearnable.faces.align import CROP_SIZE, invert
from unlearnable.noise.budget import apply_noise_uint8, linf_levels

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
EPS = 8 / 255


@lru_cache(maxsize=None)
def sample(name: str) -> np.ndarray:
    with Image.open(SAMPLES / name) as im:
        return np.asarray(im.convert("RGB")).copy()


def similarity(angle_deg: float, scale: float, tx: float, ty: float) -> torch.Tensor:
    a = math.radians(angle_deg)
    return torch.tensor([[scale * math.cos(a), -scale * math.sin(a), tx],
                         [scale * math.sin(a), scale * math.cos(a), ty]], dtype=torch.float64)


def centred(angle_deg: float, scale: float, cx: float, cy: float) -> torch.Tensor:
    """The similarity with that rotation and scale taking image point (cx, cy) to the crop's centre."""
    m = similarity(angle_deg, scale, 0.0, 0.0)
    m[:, 2] = (CROP_SIZE - 1) / 2 - m[:, :2] @ torch.tensor([cx, cy], dtype=torch.float64)
    return m


def landmarks_for(m: torch.Tensor) -> torch.Tensor:
    """The image landmarks that a face with image -> crop map ``m`` has: the template mapped back."""
    return TEMPLATE @ invert(m)[:, :2].T + invert(m)[:, 2]


# ---- detection -------------------------------------------------------------------------------

@pytest.fixture
def one_thread():
    """MTCNN runs many small ops; with two threads on a CPU shared with another busy process they spin
    (5 s instead of 0.25 s for a 512 × 512 photo), so detection tests use one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@lru_cache(maxsize=None)
def astronaut_faces() -> list:
    return detect_faces([sample("astronaut.png")])[0]


def test_detects_the_astronauts_face_with_plausible_landmarks(one_thread):
    faces = astronaut_faces()
    assert len(faces) == 1
    face = faces[0]
    assert face.prob > 0.99
    x1, y1, x2, y2 = face.box
    assert 150 < x1 < x2 < 300 and 30 < y1 < y2 < 200            # Eileen Collins' face, upper middle
    assert face.size == min(x2 - x1, y2 - y1) and 70 < face.size < 120
    lm = face.landmarks
    assert lm.shape == (5, 2)
    assert ((lm[:, 0] > x1) & (lm[:, 0] < x2) & (lm[:, 1] > y1) & (lm[:, 1] < y2)).all()
    l_eye, r_eye, nose, l_mouth, r_mouth = lm
    assert l_eye[0] < nose[0] < r_eye[0] and l_mouth[0] < r_mouth[0]
    assert max(l_eye[1], r_eye[1]) < nose[1] < min(l_mouth[1], r_mouth[1])
    assert 30 < np.linalg.norm(r_eye - l_eye) < 60                # about 42 px between the eyes
    # where they are (measured once; a few pixels of slack)
    expected = [[205.0, 101.7], [246.8, 103.7], [224.7, 129.0], [201.7, 139.2], [245.3, 141.9]]
    np.testing.assert_allclose(lm, expected, atol=3)


def test_no_face_on_a_photo_without_one_batching_keeps_order_and_is_deterministic(one_thread):
    astronaut, coffee = sample("astronaut.png"), sample("coffee.png")
    mirrored = astronaut[:, ::-1].copy()
    found = detect_faces([coffee, astronaut, mirrored], batch_size=2)   # astronaut + mirror: one batch
    assert [len(f) for f in found] == [0, 1, 1]
    alone = astronaut_faces()[0]
    np.testing.assert_allclose(found[1][0].landmarks, alone.landmarks, atol=1e-3)
    # the mirror image's landmarks are the mirrored ones, left and right swapped
    flipped = np.stack([511 - alone.landmarks[:, 0], alone.landmarks[:, 1]], 1)[[1, 0, 2, 4, 3]]
    np.testing.assert_allclose(found[2][0].landmarks, flipped, atol=3)
    (again,) = detect_faces([astronaut])
    assert np.array_equal(again[0].landmarks, alone.landmarks) and again[0].prob == alone.prob
    assert np.array_equal(again[0].box, alone.box)


def test_detection_input_rules(one_thread):
    assert detect_faces([np.zeros((10, 300, 3), np.uint8)]) == [[]]    # shorter than min_face_size
    assert detect_faces([]) == []
    with pytest.raises(ValueError, match="uint8"):
        detect_faces([np.zeros((64, 64, 3), np.float32)])
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        detect_faces([np.zeros((64, 64), np.uint8)])


# ---- similarity fit --------------------------------------------------------------------------

def test_similarity_fit_recovers_a_known_transform_exactly():
    ms = torch.stack([similarity(23.0, 0.37, -41.5, 12.25), similarity(-170.0, 2.5, 300.0, -7.0),
                      similarity(0.0, 1.0, 5.0, 6.0)])
    src = torch.stack([landmarks_for(m) for m in ms])
    fitted = fit_similarity(src)
    torch.testing.assert_close(fitted, ms, atol=1e-10, rtol=0)
    torch.testing.assert_close(fit_similarity(src[0]), ms[0], atol=1e-10, rtol=0)   # unbatched


def test_similarity_fit_is_least_squares_and_never_reflects():
    from skimage.transform import SimilarityTransform
    rng = np.random.default_rng(0)
    src = landmarks_for(similarity(10.0, 0.8, 3.0, 4.0)).numpy() + rng.normal(0, 2.0, (5, 2))
    if hasattr(SimilarityTransform, "from_estimate"):
        ref = SimilarityTransform.from_estimate(src, TEMPLATE.numpy()).params[:2]
    else:
        ref = SimilarityTransform(); ref.estimate(src, TEMPLATE.numpy()); ref = ref.params[:2]   # noqa: E702
    np.testing.assert_allclose(fit_similarity(src).numpy(), ref, atol=1e-9)
    mirrored = src * np.array([-1.0, 1.0])                          # a mirror image of the face
    assert torch.linalg.det(fit_similarity(mirrored)[:, :2]) > 0
    with pytest.raises(ValueError):
        fit_similarity(np.ones((5, 2)))


# ---- alignment and paste-back ----------------------------------------------------------------

def affine_image(h: int = 220, w: int = 200) -> np.ndarray:
    """uint8 image whose channels are affine in (x, y): bilinear sampling reproduces it exactly."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x, y, 255 - x], -1).astype(np.uint8)


def test_align_then_paste_back_returns_the_original_pixels():
    image = affine_image()
    ms = torch.stack([centred(17.0, 1.3, 100.0, 110.0), centred(-8.0, 0.9, 95.0, 100.0)])
    crops, m = align(image, torch.stack([landmarks_for(x) for x in ms]))
    assert crops.shape == (2, 3, CROP_SIZE, CROP_SIZE) and crops.dtype == torch.float32
    torch.testing.assert_close(m, ms, atol=1e-9, rtol=0)
    # the crop holds the image at each crop pixel's preimage
    r = torch.arange(CROP_SIZE, dtype=torch.float64)
    v, u = torch.meshgrid(r, r, indexing="ij")
    xy = torch.stack([u, v], -1) @ invert(ms[0])[:, :2].T + invert(ms[0])[:, 2]
    assert xy.min() > 0 and xy[..., 0].max() < 199 and xy[..., 1].max() < 219   # all inside the image
    want = torch.stack([xy[..., 0], xy[..., 1], 255 - xy[..., 0]]).float() / 255
    torch.testing.assert_close(crops[0], want, atol=2e-5, rtol=0)
    # and the paste-back puts those values back where they came from
    back, weight = paste_back(crops, m, *image.shape[:2])
    full = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    inside = weight > 0
    assert inside.sum() > 5000
    torch.testing.assert_close(back[:, inside] / weight[inside], full[:, inside], atol=2e-5, rtol=0)
    assert (back[:, ~inside] == 0).all()


def test_align_matches_skimage_on_a_real_face_and_round_trips_it(one_thread):
    from skimage.transform import SimilarityTransform, warp
    image = sample("astronaut.png")
    lm = astronaut_faces()[0].landmarks
    crops, m = align(image, lm)
    ref_t = SimilarityTransform(matrix=np.vstack([m[0].numpy(), [0, 0, 1]]))
    ref = warp(image, ref_t.inverse, output_shape=(CROP_SIZE, CROP_SIZE), order=1)   # float in [0, 1]
    np.testing.assert_allclose(crops[0].permute(1, 2, 0).numpy(), ref, atol=1e-4)
    back, weight = paste_back(crops, m, *image.shape[:2])
    full = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    core = weight == 1
    assert core.sum() > 8000
    assert float((back[:, core] - full[:, core]).abs().mean()) < 0.02   # resampled twice: blurred, in place


def test_feathering_falls_to_zero_at_the_crop_border():
    h, w = 300, 320
    m = similarity(30.0, 0.8, -100.0, -40.0)
    delta = torch.full((1, 3, CROP_SIZE, CROP_SIZE), EPS)
    back, weight = paste_back(delta, m, h, w, feather=8.0)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    uv = torch.stack([xs, ys], -1) @ m[:, :2].T + m[:, 2]
    inset = torch.minimum(torch.minimum(uv[..., 0], uv[..., 1]),
                          torch.minimum(CROP_SIZE - 1 - uv[..., 0], CROP_SIZE - 1 - uv[..., 1]))
    assert (weight[inset <= 0] == 0).all() and (back[:, inset <= 0] == 0).all()
    assert (weight[inset >= 8] == 1).all() and (inset >= 8).sum() > 4000
    ramp = (inset > 0) & (inset < 8)
    torch.testing.assert_close(weight[ramp].double(), inset[ramp] / 8, atol=1e-6, rtol=0)
    near_border = (inset > 0) & (inset < 1)
    assert near_border.any() and weight[near_border].max() < 0.13
    torch.testing.assert_close(back[:, ramp], EPS * weight[ramp].expand(3, -1), atol=1e-6, rtol=0)
    _, hard = paste_back(delta, m, h, w, feather=0)
    assert set(hard.unique().tolist()) == {0.0, 1.0} and (hard[inset >= 0.5] == 1).all()


def test_the_budget_holds_at_full_resolution_with_overlapping_faces():
    h, w = 1200, 1600
    gen = torch.Generator().manual_seed(0)
    ms = torch.stack([centred(0.0, 0.25, 600.0, 500.0), centred(25.0, 0.3, 800.0, 550.0),   # overlapping
                      centred(-40.0, 0.12, 1300.0, 700.0), centred(5.0, 0.5, 300.0, 1150.0)])  # partly outside
    # worst case: every crop pixel at ±ε, faces overlapping with opposite signs
    delta = EPS * torch.randint(0, 2, (4, 3, CROP_SIZE, CROP_SIZE), generator=gen).float().mul(2).sub(1)
    back, weight = paste_back(delta, ms, h, w, eps=EPS)
    assert back.shape == (3, h, w) and weight.shape == (h, w)
    assert float(back.abs().max()) <= EPS + 1e-7
    assert (weight > 0).sum() > 20000
    # the overlap really is there: some pixel gets weight from more than one face
    single = [paste_back(delta[i:i + 1], ms[i:i + 1], h, w) for i in range(4)]
    weights = torch.stack([wt for _, wt in single])
    assert ((weights > 0).sum(0) > 1).sum() > 10000
    # weighted mean: where the weights sum to more than 1 the faces' noise is averaged
    wsum = weights.sum(0)
    for y, x in torch.nonzero(wsum > 1.5)[::5000].tolist():
        parts = sum(d[:, y, x] for d, _ in single)               # each d is its face's w_i δ_i
        torch.testing.assert_close(back[:, y, x], parts / wsum[y, x], atol=1e-6, rtol=0)
    torch.testing.assert_close(weight, wsum.clamp(max=1))
    # after rounding to uint8 the photo moves by at most ⌊255 ε⌋ = 8 levels
    rng = np.random.default_rng(1)
    photo = torch.from_numpy(rng.integers(0, 256, (1, 3, h, w), dtype=np.uint8))
    protected = apply_noise_uint8(photo, back, EPS)
    assert linf_levels(photo, protected) <= 8
    assert linf_levels(photo, protected) == 8                     # and the noise is actually there


def test_paste_back_refuses_noise_over_budget():
    m = similarity(0.0, 1.0, 0.0, 0.0)[None]
    with pytest.raises(ValueError, match="budget"):
        paste_back(torch.full((1, 3, CROP_SIZE, CROP_SIZE), 2 * EPS), m, 200, 200, eps=EPS)
    with pytest.raises(ValueError, match="finite"):
        paste_back(torch.full((1, 3, CROP_SIZE, CROP_SIZE), float("nan")), m, 200, 200)
    far = similarity(0.0, 1.0, 5000.0, 5000.0)[None]               # a crop entirely outside the photo
    back, weight = paste_back(torch.full((1, 3, CROP_SIZE, CROP_SIZE), EPS), far, 50, 60)
    assert back.abs().max() == 0 and weight.max() == 0


def test_every_detecting_thread_runs_mtcnn_on_one_thread():
    """Two photos detected at once (protect's two workers): the second thread, which has used torch
    before, must run on one intra-op thread too, not on the count it set up earlier; otherwise its
    landmarks, crops and the face search change from run to run. The count comes back afterwards."""
    import threading

    from unlearnable.faces.detect import _one_thread

    if torch.get_num_threads() < 2:
        torch.set_num_threads(2)                          # a count to come back to (restored at the end)
    start, ready, inside, release, seen = torch.get_num_threads(), threading.Event(), threading.Event(), \
        threading.Event(), {}
    cpu = torch.device("cpu")

    def first():
        ready.wait()
        with _one_thread(cpu):
            seen["first"] = torch.get_num_threads()
            inside.set()
            release.wait()

    def second():
        torch.set_num_threads(2)                          # this thread's own count, set up before detecting
        assert torch.get_num_threads() == 2               # (and read: torch sets a thread's count up lazily)
        ready.set()
        inside.wait()
        with _one_thread(cpu):
            seen["second"] = torch.get_num_threads()
        seen["second after"] = torch.get_num_threads()
        release.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"first": 1, "second": 1, "second after": 2}
    assert torch.get_num_threads() == start
    torch.set_num_threads(start)
