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
