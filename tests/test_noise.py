import pytest
import torch
import torch.nn.functional as F

from unlearnable.data.datasets import ImageTensors
from unlearnable.errors import UnlearnableError
from unlearnable.noise.budget import apply_noise_uint8, epsilon_levels, linf_levels, parse_epsilon
from unlearnable.noise.error_minimizing import MinMinConfig, error_minimizing_noise
from unlearnable.noise.pgd import PGD
from unlearnable.train.loop import TrainConfig, build_model, train

from conftest import synthetic_images


def _tiny_data(n=120, k=4, size=16) -> ImageTensors:
    x, y = synthetic_images(n, k, seed=5, size=size)
    return ImageTensors(torch.from_numpy(x), torch.from_numpy(y), [str(i) for i in range(k)])


def _data_and_surrogate() -> tuple[ImageTensors, torch.nn.Module]:
    """The 96-image, 4-class search set and a freshly seeded SmallCNN surrogate."""
    return _tiny_data(n=96, k=4), build_model("smallcnn", 4, 3, 0, torch.device("cpu"))


@pytest.fixture(scope="module")
def trained():
    data = _tiny_data()
    model = build_model("smallcnn", 4, 3, 0, torch.device("cpu"))
    train(model, data, None, TrainConfig(epochs=2, batch_size=32, augment=False))
    return model.eval(), data.images.float() / 255, data.labels


@pytest.mark.parametrize("minimize", [True, False])
def test_pgd_moves_the_loss_the_asked_way(trained, minimize):
    model, x, y = trained
    before = F.cross_entropy(model(x), y).item()
    atk = PGD(model, eps=8 / 255, alpha=2 / 255, steps=5, minimize=minimize)
    delta = atk.perturb(x, y)
    after = F.cross_entropy(model(x + delta), y).item()
    assert (after < before) if minimize else (after > before)
    assert delta.abs().max() <= 8 / 255 + 1e-7
    assert ((x + delta) >= 0).all() and ((x + delta) <= 1).all()
    assert torch.allclose(atk(x, y), (x + delta).clamp(0, 1))


def test_pgd_rejects_bad_budget(trained):
    with pytest.raises(UnlearnableError, match="epsilon"):
        PGD(trained[0], eps=0.0)


@pytest.mark.parametrize("eps", [8 / 255, 4 / 255, 0.03, 16 / 255])
def test_budget_holds_after_uint8_rounding(eps):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 8, 8), generator=g, dtype=torch.uint8)
    x[0] = 0
    x[1] = 255  # saturated pixels must clip, not wrap
    delta = (torch.rand(x.shape, generator=g) * 2 - 1) * eps * 1.5  # deliberately over budget
    out = apply_noise_uint8(x, delta, eps)
    assert out.dtype == torch.uint8
    assert linf_levels(x, out) <= 255 * eps + 1e-6
    assert linf_levels(x, out) == epsilon_levels(eps)


def test_rounding_is_to_nearest_and_keeps_negative_noise():
    x = torch.full((1, 1, 1, 4), 100, dtype=torch.uint8)
    delta = torch.tensor([-3.4, -2.6, 2.4, 2.6]).view(1, 1, 1, 4) / 255
    assert apply_noise_uint8(x, delta, 8 / 255).flatten().tolist() == [97, 97, 102, 103]


def test_parse_epsilon():
    assert parse_epsilon(8) == pytest.approx(8 / 255)
    assert parse_epsilon(0.05) == 0.05
    for bad in (0, -1, float("nan")):
        with pytest.raises(UnlearnableError):
            parse_epsilon(bad)


def _run(mode, tmp_path=None, interrupt_after=None, rounds=3):
    data, model = _data_and_surrogate()
    cfg = MinMinConfig(mode=mode, steps=3, train_steps=2, batch_size=32, stop_accuracy=1.01,
                       max_rounds=rounds, classwise_portion=0.5)
    ckpt = tmp_path / "ckpt.pt" if tmp_path else None

    def on_round(log):
        if interrupt_after is not None and log.round == interrupt_after:
            raise KeyboardInterrupt

    return error_minimizing_noise(model, data, cfg, ckpt, on_round=on_round), data


def test_samplewise_noise_lowers_surrogate_loss():
    data, model = _data_and_surrogate()
    cfg = MinMinConfig(mode="samplewise", steps=5, train_steps=3, batch_size=32, max_rounds=8)
    res = error_minimizing_noise(model, data, cfg)
    assert res.delta.shape == data.images.shape
    assert res.delta.abs().max() <= cfg.eps + 1e-7
    x = data.images.float() / 255
    with torch.no_grad():
        model.eval()
        clean = F.cross_entropy(model(x), data.labels).item()
        noisy = F.cross_entropy(model((x + res.delta).clamp(0, 1)), data.labels).item()
    assert noisy < clean
    assert res.history[-1].surrogate_acc >= res.history[0].surrogate_acc


def test_classwise_noise_has_one_delta_per_class():
    res, data = _run("classwise")
    assert res.delta.shape == (4, 3, 16, 16)
    assert res.delta.abs().max() <= 8 / 255 + 1e-7
    per = res.per_sample(data.labels)
    for k in range(4):
        rows = per[data.labels == k]
        assert torch.equal(rows, rows[:1].expand_as(rows))


def test_round_cap_stops_an_unreachable_search():
    res, _ = _run("samplewise", rounds=2)
    assert res.rounds == 2 and not res.converged


@pytest.mark.parametrize("mode", ["samplewise", "classwise"])
def test_resume_equals_uninterrupted(tmp_path, mode):
    full, _ = _run(mode, rounds=4)
    with pytest.raises(KeyboardInterrupt):
        _run(mode, tmp_path, interrupt_after=2, rounds=4)
    resumed, _ = _run(mode, tmp_path, rounds=4)
    assert resumed.rounds == 4
    assert [h.surrogate_acc for h in resumed.history] == [h.surrogate_acc for h in full.history]
    assert torch.equal(resumed.delta, full.delta)


def test_checkpoint_from_other_settings_is_refused(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _run("samplewise", tmp_path, interrupt_after=1)
    data, model = _data_and_surrogate()
    with pytest.raises(UnlearnableError, match="other settings"):
        error_minimizing_noise(model, data, MinMinConfig(steps=7, batch_size=32), tmp_path / "ckpt.pt")
