"""Two-person skeleton interactions as actor -> reactor pairs (SBU Kinect Interaction, Yun et al.,
CVPRW 2012; K3HI, Hu et al. 2013), the data of the adversarial interaction attack (Koren et al.,
arXiv 2101.06704), and the skeletons (joint names, kinematic tree) of both.

File format (``<name>_actor_reactor.npz``, read with ``allow_pickle=False``): ``actor`` and
``reactor`` float32 (N, T_max, 15, 3) zero-padded after ``length`` (int, N) frames, ``label``
(str, N), ``split`` ('train'/'test', N), ``seq`` (source id, N). Coordinates are the datasets'
normalised Kinect values (not metres); every distance this package reports is in these units.

Where a name is looked for: ``<root>/skeleton-interaction/<name>_actor_reactor.npz`` with ``root``
the library's data root (``--data-root``, else ``$UNLEARNABLE_DATA_ROOT``, else
``~/.cache/unlearnable/data``); any other argument is taken as the path of an .npz file. The
research data is never shipped with the package (tests and benchmarks read
``../shared/data/skeleton-interaction`` beside the clone).

Joint orders. SBU's is its README's: head, neck, torso, left shoulder/elbow/hand, right
shoulder/elbow/hand, left hip/knee/foot, right hip/knee/foot. K3HI's differs and is not documented
with the data; we derived it from the geometry: head, neck, left shoulder, right shoulder, left
elbow, right elbow, left hand, right hand, torso, left hip, right hip, left knee, right knee, left
foot, right foot (OpenNI's order). Check (all 528 K3HI skeleton sequences): with this tree the
mean within-sequence coefficient of variation of each bone's length is 0.02-0.08, as SBU's own
bones under SBU's tree (0.015-0.09); reading K3HI with SBU's tree gives up to 0.19. Left/right
follow the sign of x as in SBU (the labels only name the chains; nothing here depends on them).
Both trees are rooted at the torso.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.datasets import resolve_data_root
from ..errors import DataNotFoundError, UnlearnableError

FOLDER = "skeleton-interaction"
NAMES = ("sbu", "k3hi")


@dataclass(frozen=True)
class Skeleton:
    """A kinematic tree over ``len(joints)`` joints: ``parents[j]`` is joint j's parent (-1 for the
    root); ``order`` lists the joints root first, every parent before its children."""

    name: str
    joints: tuple[str, ...]
    parents: tuple[int, ...]

    @property
    def root(self) -> int:
        return self.parents.index(-1)

    @property
    def order(self) -> tuple[int, ...]:
        done, order = {self.root}, [self.root]
        while len(order) < len(self.joints):
            for j, p in enumerate(self.parents):
                if j not in done and p in done:
                    done.add(j)
                    order.append(j)
        return tuple(order)

    @property
    def mirror(self) -> tuple[int, ...]:
        """The joint permutation of a left-right mirror image (left_x <-> right_x, others fixed)."""
        swap = {"left_": "right_", "right_": "left_"}
        names = [next((swap[k] + n[len(k):] for k in swap if n.startswith(k)), n) for n in self.joints]
        return tuple(self.joints.index(n) for n in names)

    @property
    def bones(self) -> tuple[tuple[int, int], ...]:
        """(parent, child) pairs, in ``order`` (14 for these 15-joint skeletons)."""
        return tuple((self.parents[j], j) for j in self.order if self.parents[j] >= 0)


SKELETONS = {
    "sbu": Skeleton("sbu", ("head", "neck", "torso", "left_shoulder", "left_elbow", "left_hand", "right_shoulder",
                            "right_elbow", "right_hand", "left_hip", "left_knee", "left_foot", "right_hip",
                            "right_knee", "right_foot"),
                    (1, 2, -1, 1, 3, 4, 1, 6, 7, 2, 9, 10, 2, 12, 13)),
    "k3hi": Skeleton("k3hi", ("head", "neck", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
                              "left_hand", "right_hand", "torso", "left_hip", "right_hip", "left_knee", "right_knee",
                              "left_foot", "right_foot"),
                     (1, 8, 1, 1, 2, 3, 4, 5, -1, 8, 8, 9, 10, 11, 12)),
}


@dataclass
class Interactions:
    """Padded actor/reactor sequences. ``actor``, ``reactor``: float32 (N, T, J, 3), zero after
    ``lengths[i]`` frames; ``lengths`` int64 (N,) in [2, T]; ``labels`` int64 (N,) indexing
    ``classes``; ``train`` bool (N,) (False: test split); ``seq`` the source ids."""

    name: str
    skeleton: Skeleton
    actor: torch.Tensor
    reactor: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    train: torch.Tensor
    seq: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices: torch.Tensor) -> "Interactions":
        """The sequences at ``indices`` (int64 or bool), padded to their own longest length."""
        idx = torch.as_tensor(indices)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        t = int(self.lengths[idx].max()) if len(idx) else 0
        return Interactions(self.name, self.skeleton, self.actor[idx, :t], self.reactor[idx, :t], self.lengths[idx],
                            self.labels[idx], self.classes, self.train[idx], tuple(self.seq[int(i)] for i in idx))

    def split(self, which: str) -> "Interactions":
        """'train' or 'test'."""
        if which not in ("train", "test"):
            raise UnlearnableError(f"unknown split {which!r}: train or test")
        return self.subset(self.train if which == "train" else ~self.train)

    def to(self, device: torch.device | str) -> "Interactions":
        return Interactions(self.name, self.skeleton, self.actor.to(device), self.reactor.to(device),
                            self.lengths.to(device), self.labels.to(device), self.classes, self.train.to(device),
                            self.seq)


def frame_mask(lengths: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(N, T) bool: True on the first ``lengths[i]`` frames (the real ones), False on padding."""
    return torch.arange(num_frames, device=lengths.device)[None, :] < lengths[:, None]


def interaction_path(name: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """The .npz file for ``name`` ('sbu', 'k3hi' under the data root, see the module docstring) or
    ``name`` itself when it is a path."""
    key = str(name).lower()
    if key in NAMES:
        return resolve_data_root(root) / FOLDER / f"{key}_actor_reactor.npz"
    return Path(name).expanduser()


def load_interactions(name: str | os.PathLike, root: str | os.PathLike | None = None,
                      skeleton: str | None = None) -> Interactions:
    """Read an actor -> reactor file (module docstring: format and where it is looked for).
    ``skeleton`` ('sbu' or 'k3hi') is the joint order; by default the one whose name starts the
    file name. Raises :class:`DataNotFoundError` when the file is absent and
    :class:`UnlearnableError` when it is not of this format."""
    path = interaction_path(name, root)
    if not path.is_file():
        raise DataNotFoundError(f"no skeleton interaction file at {path}: put {NAMES[0]}_actor_reactor.npz / "
                                f"{NAMES[1]}_actor_reactor.npz in DATA_ROOT/{FOLDER}/ or give the .npz path")
    skel = skeleton or next((k for k in NAMES if path.name.lower().startswith(k)), None)
    if skel not in SKELETONS:
        raise UnlearnableError(f"{path.name}: say which joint order it uses (skeleton='sbu' or 'k3hi')")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in ("actor", "reactor", "length", "label", "split", "seq")}
    except (KeyError, ValueError, OSError) as e:
        raise UnlearnableError(f"{path}: not an actor/reactor interaction file ({e})") from None
    actor, reactor, length = arrays["actor"], arrays["reactor"], arrays["length"].astype(np.int64)
    n, t = actor.shape[:2]
    joints = len(SKELETONS[skel].joints)
    if actor.shape != (n, t, joints, 3) or reactor.shape != actor.shape or length.shape != (n,) \
            or any(arrays[k].shape != (n,) for k in ("label", "split", "seq")):
        raise UnlearnableError(f"{path}: expected actor/reactor (N, T, {joints}, 3) and N labels, splits, lengths; "
                               f"got {actor.shape}, {reactor.shape}, {length.shape}")
    if n == 0 or length.min() < 2 or length.max() > t:
        raise UnlearnableError(f"{path}: sequence lengths must lie in [2, {t}]")
    if not (np.isfinite(actor).all() and np.isfinite(reactor).all()):
        raise UnlearnableError(f"{path}: non-finite coordinates")
    if not set(np.unique(arrays["split"])) <= {"train", "test"}:
        raise UnlearnableError(f"{path}: split must be 'train' or 'test'")
    classes, labels = np.unique(arrays["label"], return_inverse=True)
    lengths = torch.from_numpy(length)
    mask = frame_mask(lengths, t)[:, :, None, None]
    return Interactions(name=path.name.split("_")[0].lower(), skeleton=SKELETONS[skel],
                        actor=torch.from_numpy(actor.astype(np.float32)) * mask,
                        reactor=torch.from_numpy(reactor.astype(np.float32)) * mask,
                        lengths=lengths, labels=torch.from_numpy(labels.astype(np.int64)),
                        classes=tuple(str(c) for c in classes),
                        train=torch.from_numpy(arrays["split"] == "train"),
                        seq=tuple(str(s) for s in arrays["seq"]))
