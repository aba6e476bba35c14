from pathlib import Path

import pytest
import torch

from unlearnable.models import create_model, list_models


@pytest.mark.parametrize("name", ["smallcnn", "resnet18-narrow", "vgg11-narrow", "wrn16-1"])
def test_models_map_images_to_logits(name):
    net = create_model(name, num_classes=7, in_channels=1)
    out = net(torch.rand(2, 1, 28, 28))
    assert out.shape == (2, 7)


def test_registry_covers_three_families_and_rejects_unknown():
    names = list_models()
    assert {"resnet18", "smallcnn", "vgg11", "wrn16-4"} <= set(names)
    with pytest.raises(ValueError, match="unknown architecture"):
        create_model("transformer-xxl")


def test_shipped_smallcnn_weights_load_into_smallcnn():
    blob = torch.load(Path(__file__).parents[1] / "models" / "weights" / "smallcnn-cifar10.pt",
                      map_location="cpu", weights_only=True)
    net = create_model("smallcnn", num_classes=len(blob["meta"]["classes"]))
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()})


def test_wrn_activation_modules_add_no_state():
    """WRN's ReLUs are modules (CAS hooks them, official placement) but hold no parameters or buffers."""
    net = create_model("wrn16-1")
    assert not any(".act" in k or k.startswith("act") for k in net.state_dict())
    assert isinstance(net.get_submodule("act"), torch.nn.ReLU) and isinstance(net.blocks[-1].act1, torch.nn.ReLU)
