"""Find every face in a photo: box, five landmarks and probability, with MTCNN.

Detector: MTCNN (Zhang, Zhang, Li & Qiao, "Joint Face Detection and Alignment using Multi-task
Cascaded Convolutional Networks", IEEE SPL 2016, arXiv:1604.02878) as implemented by
``facenet_pytorch.MTCNN`` 2.5.3 (Tim Esler's port of davidsandberg/facenet's MTCNN). Its P-, R- and
O-net weights ship inside the wheel (``facenet_pytorch/data/{pnet,rnet,onet}.pt``), so nothing is
downloaded at run time.

Defaults are facenet-pytorch's: ``min_face_size=20`` pixels, ``thresholds=(0.6, 0.7, 0.7)`` (P-, R-,
O-net face probabilities), pyramid ``factor=0.709``; boxes are ordered largest first
(``select_largest=True``). We always run with ``keep_all=True`` (every face, not one per photo) and
use ``MTCNN.detect(..., landmarks=True)`` only (no crop extraction: alignment is ours, see
``align.py``). Landmark order is MTCNN's: left eye, right eye, nose, left mouth corner, right mouth
corner, "left" meaning smaller x in the image, as (x, y) pixel coordinates with pixel centres on
integers (the convention of the ArcFace template in ``align.py``).

Deliberate choices (deviations from calling ``MTCNN.detect`` on a list):
- facenet-pytorch batches only equal-size images (and checks a list of arrays by element count, not
  shape), so photos are grouped by (H, W) and each group is passed as one stacked (B, H, W, 3) uint8
  tensor, ``batch_size`` photos at a time to bound memory (a 12 MP photo is 144 MB as float32).
- An image smaller than ``min_face_size`` on its short side cannot hold a face; facenet-pytorch would
  fail on its empty scale pyramid, so it is answered with no faces without running the nets.
- ``detect_faces(..., max_side=N)`` runs the nets on a copy whose longer side is at most N pixels
  (Pillow's antialiased box reduction) and scales boxes and landmarks back to the photo's pixels
  (pixel centres kept on integers: x_full = (x + 0.5) · s − 0.5). MTCNN's cost grows with the pixel
  count; on a 12 MP photo it took 5.9 s at full size on one loaded core. The smallest face found is
  then ``min_face_size`` · s full-size pixels (s = long side / N), which is reported by the callers.
- On the CPU the nets run on one thread (``_one_thread``), whatever torch's setting: MTCNN is many
  small ops, for which intra-op threads only add synchronisation; measured on this project's 2-core
  machine under load, one 960 × 720 photo took 1.9 s on one thread and 14.7 s on two. Every detecting
  thread sets it for itself (the count is per thread), and it is restored when the last concurrent
  detection ends. One MTCNN per (device, settings) is built once.
- Runs on the CPU unless a device is given; no gradients. On one device and for one grouping of the
  inputs the result is deterministic (the same call twice gives identical floats); a different batch
  composition may change the last bits of the convolutions.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator, Sequence

import numpy as np
import torch

MIN_FACE_SIZE = 20                # facenet-pytorch's default, pixels
THRESHOLDS = (0.6, 0.7, 0.7)      # facenet-pytorch's default P-, R-, O-net thresholds
FACTOR = 0.709                    # facenet-pytorch's default pyramid scale factor


@dataclass(frozen=True)
class Face:
    """One detected face. ``box``: (4,) float64 [x1, y1, x2, y2] in pixels (may reach slightly outside
    the image); ``landmarks``: (5, 2) float64 (x, y) of left eye, right eye, nose, left and right mouth
    corners; ``prob``: the O-net face probability in [0, 1]."""

    box: np.ndarray
    landmarks: np.ndarray
    prob: float

    @property
    def size(self) -> float:
        """The box's shorter side in pixels."""
        return float(min(self.box[2] - self.box[0], self.box[3] - self.box[1]))


def _check(image: np.ndarray, i: int) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image {i} must be an (H, W, 3) uint8 array, got {got}")


def detect_faces(images: Sequence[np.ndarray], device: torch.device | str = "cpu",
                 min_face_size: int = MIN_FACE_SIZE, thresholds: Sequence[float] = THRESHOLDS,
                 factor: float = FACTOR, batch_size: int = 4, max_side: int | None = None) -> list[list[Face]]:
    """Every face in every image. ``images``: (H, W, 3) uint8 RGB arrays of any sizes. Returns, per
    image in input order, a list of ``Face`` (largest box first; empty when none). ``min_face_size``:
    smallest face searched for, in pixels; ``thresholds``: P-, R-, O-net probabilities a candidate must
    pass; ``batch_size``: most same-size images run through the nets at once; ``max_side``: detect on a
    copy downscaled to at most this many pixels on its longer side (None: full size)."""
    for i, image in enumerate(images):
        _check(image, i)
    if max_side is not None:
        scaled = [_downscale(image, max_side) for image in images]
        found = detect_faces([a for a, _ in scaled], device, min_face_size, thresholds, factor, batch_size)
        return [[_rescale(f, s) for f in faces] for faces, (_, s) in zip(found, scaled)]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    mtcnn = _mtcnn(str(device), min_face_size, tuple(thresholds), factor)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        if min(image.shape[:2]) >= min_face_size:
            groups.setdefault(image.shape[:2], []).append(i)
    found: list[list[Face]] = [[] for _ in images]
    for members in groups.values():
        for b0 in range(0, len(members), batch_size):
            chunk = members[b0:b0 + batch_size]
            batch = torch.from_numpy(np.stack([images[i] for i in chunk]))
            with torch.inference_mode(), _one_thread(device):
                boxes, probs, points = mtcnn.detect(batch, landmarks=True)
            for i, b, p, pts in zip(chunk, boxes, probs, points):
                if b is None:
                    continue
                found[i] = [Face(box=np.asarray(b[k], dtype=np.float64),
                                 landmarks=np.asarray(pts[k], dtype=np.float64).reshape(5, 2),
                                 prob=float(p[k])) for k in range(len(b))]
    return found


@lru_cache(maxsize=4)
def _mtcnn(device: str, min_face_size: int, thresholds: tuple[float, ...], factor: float):
    from facenet_pytorch import MTCNN

    return MTCNN(min_face_size=min_face_size, thresholds=list(thresholds), factor=factor, keep_all=True,
                 select_largest=True, device=torch.device(device)).eval()


_threads_lock = threading.Lock()
_threads_state = {"users": 0, "saved": 1}


@contextmanager
def _one_thread(device: torch.device) -> Iterator[None]:
    """torch on one intra-op thread in every thread that detects on the CPU; the last to leave restores the
    count the first found. Every detecting thread sets its own: once a thread has used torch its count
    is its own (OpenMP), so a second thread that relied on the first one's setting ran MTCNN on two
    threads, and its landmarks, the aligned crops and the face search changed from run to run (measured:
    13, 9 and 10 rounds for one seed; fixed 2026-11-30)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    with _threads_lock:
        if _threads_state["users"] == 0:
            _threads_state["saved"] = before
        _threads_state["users"] += 1
    torch.set_num_threads(1)
    try:
        yield
    finally:
        with _threads_lock:
            _threads_state["users"] -= 1
            torch.set_num_threads(_threads_state["saved"] if _threads_state["users"] == 0 else before)


def _downscale(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """(image at most ``max_side`` on its longer side, the factor full / small); unchanged if it fits."""
    from PIL import Image

    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image, 1.0
    s = max(h, w) / max_side
    size = (max(1, round(w / s)), max(1, round(h / s)))
    small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
    return small, w / size[0]


def _rescale(face: Face, s: float) -> Face:
    if s == 1.0:
        return face
    return Face(box=(face.box + 0.5) * s - 0.5, landmarks=(face.landmarks + 0.5) * s - 0.5, prob=face.prob)
