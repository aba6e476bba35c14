"""Where the photo and face searches' surrogate starts: its architecture initialised afresh from the seed
(as the paper's min-min; the default) or its pretrained weights (the default with --face-weights)."""
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import unlearnable.protect.photos as photos_mod
from unlearnable.cli.main import app
from unlearnable.data.photos.files import UsageError
from unlearnable.noise.minmin import MinMinConfig
from unlearnable.protect.photos import PhotoProtectConfig, protect_photos
from unlearnable.train.surrogate import fresh_surrogate, load_surrogate

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def _floats(model: nn.Module) -> dict:
    return {k: v for k, v in model.state_dict().items() if v.is_floating_point()}


def _record_search_surrogate(monkeypatch, search: str) -> list:
    """Wrap protect's ``search`` (photo_noise or face_noise: the surrogate is their 4th argument) so that
    the weights each call starts from are recorded."""
    seen, real = [], getattr(photos_mod, search)

    def record(*args, **kw):
        seen.append({k: v.clone() for k, v in _floats(args[3]).items()})
        return real(*args, **kw)

    monkeypatch.setattr(photos_mod, search, record)
    return seen


def test_fresh_surrogate_redraws_every_layer_from_the_seed_and_leaves_the_model_alone():
    model, _ = load_surrogate()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a, b, c = fresh_surrogate(model, 0), fresh_surrogate(model, 0), fresh_surrogate(model, 1)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())   # the pretrained one untouched
    for k, v in _floats(a).items():
        if k.endswith("running_mean"):
            assert torch.equal(v, torch.zeros_like(v)), k
        elif k.endswith("running_var"):
            assert torch.equal(v, torch.ones_like(v)), k
        else:
            assert not torch.equal(v, before[k]), k          # every weight and bias drawn again
        assert torch.equal(v, _floats(b)[k]), k              # from the seed
    assert all(not torch.equal(v, _floats(c)[k]) for k, v in _floats(a).items() if k.endswith("weight")
               and v.dim() > 1)
    assert type(a) is type(model) and a.get_classifier().out_features == model.get_classifier().out_features


def test_a_layer_that_cannot_be_reset_is_an_error_not_a_silently_pretrained_one():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.s = nn.Parameter(torch.full((1,), 3.0))

    with pytest.raises(ValueError, match="Scale"):
        fresh_surrogate(nn.Sequential(nn.Linear(2, 2), Scale()), 0)


def test_surrogate_start_defaults_rules_and_identity():
    assert PhotoProtectConfig().surrogate_start == "fresh"                 # whole photos since 2026-11-30
    assert PhotoProtectConfig(faces=True).surrogate_start == "fresh"
    assert PhotoProtectConfig(faces=True, face_weights="w.pt").surrogate_start == "pretrained"
    with pytest.raises(UsageError, match="--face-weights"):
        PhotoProtectConfig(faces=True, face_weights="w.pt", surrogate_start="fresh")
    with pytest.raises(UsageError, match="surrogate start"):
        PhotoProtectConfig(surrogate_start="warm")
    # a resume never mixes the two; the pretrained identity stays what it was before the option existed
    assert PhotoProtectConfig(surrogate_start="fresh").fingerprint()["surrogate_start"] == "fresh"
    assert PhotoProtectConfig(faces=True).fingerprint()["surrogate_start"] == "fresh"
    assert PhotoProtectConfig().fingerprint()["surrogate_start"] == "fresh"
    assert "surrogate_start" not in PhotoProtectConfig(surrogate_start="pretrained").fingerprint()


@pytest.mark.parametrize("start", [None, "fresh", "pretrained"])
def test_the_search_starts_from_the_chosen_surrogate(tmp_path, monkeypatch, start):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("astronaut.png", "coffee.png"):
        with Image.open(SAMPLES / name) as im:
            im.convert("RGB").resize((80, 60)).save(folder / name)
    seen = _record_search_surrogate(monkeypatch, "photo_noise")
    cfg = PhotoProtectConfig(search=MinMinConfig.for_photos(max_rounds=1, steps=1, train_steps=1, seed=3),
                             workers=1, metrics=False, surrogate_start=start)
    m = protect_photos([folder], tmp_path / "out", cfg)
    shipped = load_surrogate()[0]
    want = _floats(shipped if start == "pretrained" else fresh_surrogate(shipped, 3))
    assert len(seen) == 1 and seen[0].keys() == want.keys()
    assert all(torch.equal(seen[0][k], want[k]) for k in want)
    assert m["surrogate"]["start"] == (start or "fresh") and m["summary"]["ok"] == 2
    if start != "pretrained":            # the manifest names what the search started from, not the unused weights
        assert m["surrogate"]["name"] == "smallcnn initialised afresh (seed 3)" and m["surrogate"]["file"] is None
        assert m["surrogate"]["test_accuracy"] is None and m["surrogate"]["built_from"] == "smallcnn-cifar10"
    else:
        assert m["surrogate"]["name"] == "smallcnn-cifar10" and m["surrogate"]["file"].startswith("(shipped)")


def test_cli_surrogate_start_option(tmp_path, monkeypatch):
    seen = []

    def capture(inputs, out, cfg, on_event=None):
        seen.append(cfg.surrogate_start)
        raise KeyboardInterrupt

    monkeypatch.setattr(photos_mod, "protect_photos", capture)
    for args in ([], ["--surrogate-start", "fresh"], ["--faces"], ["--faces", "--surrogate-start", "pretrained"]):
        runner.invoke(app, ["protect", str(SAMPLES), "-o", str(tmp_path / "out"), *args])
    assert seen == ["fresh", "fresh", "fresh", "pretrained"]
    r = runner.invoke(app, ["protect", str(SAMPLES), "-o", str(tmp_path / "out"), "--surrogate-start", "warm"])
    assert r.exit_code == 2 and "surrogate start" in r.output and not (tmp_path / "out").exists()


def test_the_face_search_starts_fresh_by_default(tmp_path, monkeypatch):
    folder = tmp_path / "me"
    folder.mkdir()
    with Image.open(SAMPLES / "astronaut.png") as im:
        im.convert("RGB").save(folder / "astronaut.png")
    seen = _record_search_surrogate(monkeypatch, "face_noise")
    cfg = PhotoProtectConfig(search=MinMinConfig.for_photos(max_rounds=1, steps=1, train_steps=1, seed=5),
                             faces=True, workers=1, metrics=False)
    m = protect_photos([folder], tmp_path / "out", cfg)
    want = _floats(fresh_surrogate(load_surrogate()[0], 5))
    assert len(seen) == 1 and all(torch.equal(seen[0][k], want[k]) for k in want)
    assert m["surrogate"]["start"] == "fresh" and m["summary"]["faces"] == 1
