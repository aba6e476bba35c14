"""FaceNet's Inception-ResNet-v1 as a registry classifier: the face recogniser the face pipeline's
surrogate can be when the user has pretrained weights.

Architecture: Inception-ResNet-v1 (Szegedy et al., AAAI 2017, arXiv:1602.07261) with FaceNet's
512-d embedding head (Schroff et al., CVPR 2015, arXiv:1503.03832), as implemented by
``facenet_pytorch.InceptionResnetV1`` 2.5.3 (23.5M parameters without the classifier). Its pretrained
files (VGGFace2, CASIA-WebFace) are *not* fetched: facenet-pytorch would download them at run time,
and this tool never downloads. ``load_face_weights`` loads a state dict the user already has.

What this wrapper adds:
- Input in [0, 1] like every registry model; facenet-pytorch's ``fixed_image_standardization``
  ((255 x − 127.5) / 128) is applied inside, so pretrained weights see what they were trained on.
- ``head`` is a classifier over the 512-d embedding before L2 normalisation (``last_bn``'s output,
  what facenet-pytorch feeds its ``logits`` layer when ``classify=True``), so ``add_classes`` and
  ``reset_classifier`` work as for the other models. Deviation from the registry's convention:
  ``num_features`` (512) is the classifier's input, while ``forward_features`` gives the 1792-channel
  map before pooling (the embedding layer sits between the two).
- Deviation: facenet-pytorch's pretrained nets were trained on 160 × 160 crops; the face pipeline
  aligns to 112 × 112 (the ArcFace template, the Unlearnable Examples face case study). The network
  pools adaptively, so it runs at 112 unchanged; the scale mismatch costs a pretrained net some
  accuracy, traded for the 2× fewer pixels. Inputs must be at least 75 × 75 (its stem and reductions).
- CPU cost, measured on this project's 2-core machine under load: one forward + backward of 32
  crops at 112 × 112 took 10.8 s, against 0.27 s for ``smallcnn`` at 32 × 32: the CPU face pipeline
  therefore defaults to the shipped small surrogate, and this network is for a GPU or for users
  with pretrained weights.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .heads import Classifier

EMBEDDING = 512
MIN_INPUT = 75


class InceptionResnetV1Classifier(Classifier):
    """``facenet_pytorch.InceptionResnetV1`` (no classifier of its own) + ``head``: Linear(512, classes)."""

    classifier_attr = "head"
    num_features = EMBEDDING
    cas_layers = ("net.repeat_2", "net.repeat_3")

    def __init__(self, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.6) -> None:
        super().__init__()
        if in_channels != 3:
            raise ValueError("Inception-ResNet-v1 takes RGB (3-channel) faces")
        from facenet_pytorch import InceptionResnetV1

        self.net = InceptionResnetV1(classify=False, dropout_prob=dropout)
        self.head = nn.Linear(EMBEDDING, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H ≥ 75, W ≥ 75) in [0, 1] -> (B, 1792, h, w), the last Inception block's feature map."""
        if min(x.shape[-2:]) < MIN_INPUT:
            raise ValueError(f"Inception-ResNet-v1 needs inputs of at least {MIN_INPUT}x{MIN_INPUT}, "
                             f"got {tuple(x.shape[-2:])}")
        n = self.net
        x = (x * 255 - 127.5) / 128
        for layer in (n.conv2d_1a, n.conv2d_2a, n.conv2d_2b, n.maxpool_3a, n.conv2d_3b, n.conv2d_4a, n.conv2d_4b,
                      n.repeat_1, n.mixed_6a, n.repeat_2, n.mixed_7a, n.repeat_3, n.block8):
            x = layer(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pooling, dropout and FaceNet's embedding layer (512-d, before L2 normalisation: what
        facenet-pytorch's own classifier reads), then ``head`` unless ``pre_logits``."""
        n = self.net
        x = n.last_bn(n.last_linear(n.dropout(n.avgpool_1a(x)).flatten(1)))
        return x if pre_logits else self.head(x)


def load_face_weights(model: InceptionResnetV1Classifier, path: str | os.PathLike) -> list[str]:
    """Load a facenet-pytorch state dict (e.g. its VGGFace2 file ``20180402-114759-vggface2.pt``) into
    ``model``'s backbone, with ``torch.load(weights_only=True)``. The file's own classifier
    (``logits.*``, its training identities) is not used. Raises ``FileNotFoundError`` naming a missing
    file and ``ValueError`` (one line) for a file that is not such a state dict. Returns the keys ignored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"face weights not found: {path} (give the path of a facenet-pytorch state dict, "
                                "e.g. 20180402-114759-vggface2.pt; nothing is downloaded)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, not a torch file, or not weights-only
        raise ValueError(f"{path} is not a readable torch state dict ({type(e).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    ignored = sorted(k for k in state if k.startswith("logits."))
    backbone = {k: v for k, v in state.items() if not k.startswith("logits.")}
    own = model.net.state_dict()
    missing = sorted(set(own) - set(backbone))
    unexpected = sorted(set(backbone) - set(own))
    wrong = sorted(k for k in set(own) & set(backbone) if own[k].shape != backbone[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
                 f"{len(wrong)} of another shape (e.g. {wrong[0]})" if wrong else ""]
        raise ValueError(f"{path} is not an Inception-ResNet-v1 state dict: " + ", ".join(p for p in parts if p))
    model.net.load_state_dict(backbone)
    return ignored
