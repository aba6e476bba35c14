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


@pytest.mark.parametrize("name", [n for n in list_models() if n != "inception-resnet-v1"])
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


def test_inception_resnet_v1_has_the_head_api_and_reads_facenet_state_dicts(tmp_path):
    """The face recogniser: forward = head(embedding), grown by classes like the others; a facenet-pytorch
    state dict (its own classifier 'logits.*' ignored) loads; a missing or foreign file is one clear error."""
    from unlearnable.models.facenet import load_face_weights

    torch.manual_seed(0)
    net = create_model("inception-resnet-v1", num_classes=4).eval()
    x = torch.rand(2, 3, 80, 80)
    with torch.no_grad():
        logits = net(x)
        pre = net.forward_head(net.forward_features(x), pre_logits=True)
        assert logits.shape == (2, 4) and pre.shape == (2, net.num_features)
        assert torch.equal(net.get_classifier()(pre), logits)
        assert add_classes(net, 3)(x).shape == (2, 7)
    with pytest.raises(ValueError, match="at least 75x75"):
        net(torch.rand(1, 3, 32, 32))

    from facenet_pytorch import InceptionResnetV1
    torch.manual_seed(1)
    theirs = InceptionResnetV1(classify=True, num_classes=9).eval()       # a stand-in for the VGGFace2 file
    path = tmp_path / "vggface2.pt"
    torch.save(theirs.state_dict(), path)
    assert load_face_weights(net, path) == ["logits.bias", "logits.weight"]
    with torch.no_grad():
        ref = torch.nn.functional.normalize(net.forward_head(net.forward_features(x), pre_logits=True))
        theirs.classify = False
        torch.testing.assert_close(ref, theirs((x * 255 - 127.5) / 128), rtol=1e-5, atol=1e-6)

    with pytest.raises(FileNotFoundError, match="face weights not found: .*nope.pt"):
        load_face_weights(net, tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable torch state dict"):
        load_face_weights(net, tmp_path / "junk.pt")
    torch.save(create_model("smallcnn").state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an Inception-ResNet-v1 state dict"):
        load_face_weights(net, tmp_path / "other.pt")
