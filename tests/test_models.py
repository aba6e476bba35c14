from pathlib import Path

import pytest
import torch

from unlearnable.models import add_classes, create_model, list_models


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


@pytest.mark.parametrize("name", list(list_models()))
def test_every_model_has_the_timm_api(name):
    """forward = forward_head(forward_features), pre-logits are the classifier's input, the classifier
    can be reset and grown by classes (the photo search appends its classes this way)."""
    torch.manual_seed(0)
    net = create_model(name, num_classes=5).eval()
    x = torch.rand(2, 3, 16, 16)                                # small: wrn34-10 is 46M parameters
    with torch.no_grad():
        logits = net(x)
        feats = net.forward_features(x)
        assert feats.ndim == 4 and feats.shape[:2] == (2, net.num_features)
        assert torch.equal(net.forward_head(feats), logits)
        pre = net.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, net.num_features)
        clf = net.get_classifier()
        assert isinstance(clf, torch.nn.Linear) and clf.out_features == 5 and clf.in_features == net.num_features
        assert torch.equal(clf(pre), logits)                    # the final layer, applied to the pre-logits
        assert all(net.get_submodule(n) is not None for n in net.cas_layers) and len(net.cas_layers) >= 1

        grown = add_classes(net, 3).eval()
        assert net.get_classifier() is clf and clf.out_features == 5        # the original is untouched
        new = grown.get_classifier()
        assert new.out_features == 8 and set(grown.state_dict()) == set(net.state_dict())
        assert torch.equal(new.weight[:5], clf.weight) and torch.equal(new.bias[:5], clf.bias)
        assert torch.equal(new.weight[5:], clf.weight.mean(0, keepdim=True).expand(3, -1))
        assert torch.equal(new.bias[5:], clf.bias.mean().expand(3))
        out = grown(x)
        assert out.shape == (2, 8)
        torch.testing.assert_close(out[:, :5], logits, rtol=0, atol=1e-6)

        keys = list(net.state_dict())
        net.reset_classifier(4)
        assert net.forward_head(feats).shape == (2, 4) and net.get_classifier().out_features == 4
        assert net.get_classifier().weight.dtype == clf.weight.dtype and list(net.state_dict()) == keys
