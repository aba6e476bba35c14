import functools
import logging
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from conftest import synthetic_images

from unlearnable.attacks.pgd import PGD
from unlearnable.data.datasets import ImageTensors
from unlearnable.errors import UnlearnableError
from unlearnable.noise.budget import apply_noise_uint8, epsilon_levels, linf_levels, parse_epsilon
from unlearnable.noise.minmin import MinMinConfig, error_minimizing_noise
from unlearnable.noise.problems import stratified_subset
from unlearnable.train.loop import TrainConfig, build_model, train


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


def _run(mode, tmp_path=None, interrupt_after=None, rounds=3, on_round=None, on_progress=None):
    data, model = _data_and_surrogate()
    cfg = MinMinConfig(mode=mode, steps=3, train_steps=2, batch_size=32, stop_accuracy=1.0,
                       max_rounds=rounds, classwise_portion=0.5)
    ckpt = tmp_path / "ckpt.pt" if tmp_path else None

    def round_done(log):
        if on_round:
            on_round(log)
        if interrupt_after is not None and log.round == interrupt_after:
            raise KeyboardInterrupt

    return error_minimizing_noise(model, data, cfg, ckpt, on_round=round_done, on_progress=on_progress), data


@functools.cache
def _uninterrupted(mode, rounds=3):
    """The reference result of ``_run`` without checkpoint, computed once per module (not mutated)."""
    return _run(mode, rounds=rounds)


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
    res, data = _uninterrupted("classwise")
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
    full, _ = _uninterrupted(mode)
    with pytest.raises(KeyboardInterrupt):
        _run(mode, tmp_path, interrupt_after=2)
    resumed, _ = _run(mode, tmp_path)
    assert resumed.rounds == 3
    assert [h.surrogate_acc for h in resumed.history] == [h.surrogate_acc for h in full.history]
    assert torch.equal(resumed.delta, full.delta)


def test_checkpoint_from_other_settings_is_refused(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _run("samplewise", tmp_path, interrupt_after=1)
    data, model = _data_and_surrogate()
    with pytest.raises(UnlearnableError, match="other settings"):
        error_minimizing_noise(model, data, MinMinConfig(steps=7, batch_size=32), tmp_path / "ckpt.pt")


def test_config_defaults_follow_the_experiment_scripts():
    for mode in ("samplewise", "classwise"):
        assert MinMinConfig(mode=mode).stop_accuracy == 0.99  # error 0.01 (exp_setting.sh), both modes
    assert MinMinConfig(mode="classwise").classwise_portion == 0.2
    assert MinMinConfig(mode="classwise").steps == 1 and MinMinConfig().steps == 20
    for bad in (0.0, 1.01, 99):
        with pytest.raises(UnlearnableError, match="stop accuracy"):
            MinMinConfig(stop_accuracy=bad)


def test_stratified_subset_takes_the_portion_of_every_class():
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate([50, 30, 20, 1])])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(3))]
    idx = stratified_subset(labels, 0.2, torch.Generator().manual_seed(0))
    assert torch.equal(idx, torch.unique(idx))                         # sorted, no repeats
    assert torch.bincount(labels[idx], minlength=4).tolist() == [10, 6, 4, 1]  # a class of one keeps it
    again = stratified_subset(labels, 0.2, torch.Generator().manual_seed(0))
    other = stratified_subset(labels, 0.2, torch.Generator().manual_seed(1))
    assert torch.equal(idx, again) and not torch.equal(idx, other)


def _indexed_data(n=40, k=4) -> ImageTensors:
    """Images that say which sample they are: black with one white pixel at position i (the argmax
    survives any δ within 8/255), labels i % k."""
    x = torch.zeros(n, 3, 16, 16, dtype=torch.uint8)
    x.view(n, 3, -1)[torch.arange(n), :, torch.arange(n)] = 255
    return ImageTensors(x, torch.arange(n) % k, [str(c) for c in range(k)])


def test_classwise_surrogate_trains_on_all_data_and_noise_uses_a_stratified_subset():
    data = _indexed_data()
    model = build_model("smallcnn", 4, 3, 0, torch.device("cpu"))
    seen = {True: set(), False: set()}  # training-mode forwards (surrogate steps) / eval-mode (PGD, stop test)
    model.register_forward_pre_hook(
        lambda m, args: seen[m.training].update(args[0][:, 0].flatten(1).argmax(1).tolist()))
    cfg = MinMinConfig(mode="classwise", train_steps=3, batch_size=16, max_rounds=1, classwise_portion=0.3)
    error_minimizing_noise(model, data, cfg)
    pool = torch.tensor(sorted(seen[False]))
    assert torch.bincount(data.labels[pool], minlength=4).tolist() == [3, 3, 3, 3]  # 30 % of each class of 10
    assert len(seen[True]) >= 32 and not seen[True] <= seen[False]  # the surrogate sees far beyond the subset


def test_noise_search_runs_in_fp32_while_victims_keep_bf16(monkeypatch):
    """On CPU autocast is a no-op, so this checks the mechanism: every forward of the search (surrogate
    steps, PGD, stop test) runs outside the bf16 autocast context; victims' training and attacks enter it."""
    import unlearnable.attacks.pgd as pgd_mod
    import unlearnable.train.loop as loop_mod

    active = []

    @contextmanager
    def recording_autocast(device):
        active.append(device)
        try:
            yield
        finally:
            active.pop()

    monkeypatch.setattr(pgd_mod, "autocast", recording_autocast)
    monkeypatch.setattr(loop_mod, "autocast", recording_autocast)
    data, model = _data_and_surrogate()
    under_amp = []
    model.register_forward_pre_hook(lambda m, args: under_amp.append(bool(active)))
    for mode in ("samplewise", "classwise"):
        error_minimizing_noise(model, data, MinMinConfig(mode=mode, steps=2, train_steps=2, batch_size=32,
                                                         max_rounds=1))
    assert len(under_amp) > 10 and not any(under_amp)
    under_amp.clear()
    train(model, data, None, TrainConfig(epochs=1, batch_size=32, augment=False))   # a victim: bf16 on CUDA
    PGD(model, steps=1)(data.images[:8].float() / 255, data.labels[:8])            # an attack: bf16 on CUDA
    assert len(under_amp) > 3 and all(under_amp)


@pytest.mark.parametrize("mode", ["samplewise", "classwise"])
def test_raising_the_round_cap_continues_from_the_checkpoint(tmp_path, mode):
    full, _ = _uninterrupted(mode)
    first, _ = _run(mode, tmp_path, rounds=1)
    assert first.rounds == 1 and not first.converged
    ran = []
    extended, _ = _run(mode, tmp_path, rounds=3, on_round=lambda log: ran.append(log.round))
    assert ran == [2, 3]                              # round 1 came from the checkpoint, not redone
    assert extended.history[0] == first.history[0]    # same record, timing included
    assert [h.surrogate_acc for h in extended.history] == [h.surrogate_acc for h in full.history]
    assert torch.equal(extended.delta, full.delta)


@pytest.mark.parametrize("mode", ["samplewise", "classwise"])
def test_interrupt_in_mid_round_then_rerun_equals_uninterrupted(tmp_path, mode):
    full, _ = _uninterrupted(mode)
    started = []

    def crash_in_round_2_search(phase, done, total):
        if phase == "train" and done == 1:
            started.append(1)
        if phase == "search" and len(started) == 2:
            raise RuntimeError("interrupted during the noise step of round 2")

    with pytest.raises(RuntimeError, match="round 2"):
        _run(mode, tmp_path, rounds=3, on_progress=crash_in_round_2_search)
    resumed, _ = _run(mode, tmp_path, rounds=3)
    assert [h.surrogate_acc for h in resumed.history] == [h.surrogate_acc for h in full.history]
    assert torch.equal(resumed.delta, full.delta)


class _RunsCodeWhenUnpickled:
    ran = False

    def __reduce__(self):
        return (_mark_unpickled, ())


def _mark_unpickled():
    _RunsCodeWhenUnpickled.ran = True


def _tamper(path, how):
    state = torch.load(path, weights_only=True)
    if how == "delta x30":
        state["delta"] = state["delta"] * 30
    elif how == "code":
        state["history"] = [_RunsCodeWhenUnpickled()]
    elif how == "nan weights":
        name = next(iter(state["model"]))
        state["model"][name] = state["model"][name] * float("nan")
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    else:
        torch.save(state, path)


@pytest.fixture(scope="module")
def one_round_checkpoint(tmp_path_factory):
    """Bytes of the checkpoint of a finished 1-round sample-wise run, and that run's δ."""
    path = tmp_path_factory.mktemp("ckpt") / "ckpt.pt"
    res, _ = _run("samplewise", path.parent, rounds=1)
    return path.read_bytes(), res.delta


@pytest.mark.parametrize("how", ["delta x30", "code", "nan weights", "truncated"])
def test_bad_checkpoint_is_reported_and_the_work_redone(tmp_path, caplog, one_round_checkpoint, how):
    blob, delta = one_round_checkpoint
    (tmp_path / "ckpt.pt").write_bytes(blob)
    _tamper(tmp_path / "ckpt.pt", how)
    ran = []
    with caplog.at_level(logging.WARNING, logger="unlearnable.noise.minmin"):
        res, _ = _run("samplewise", tmp_path, rounds=1, on_round=lambda log: ran.append(log.round))
    assert "starting the noise search over" in caplog.text
    assert ran == [1] and not _RunsCodeWhenUnpickled.ran   # redone from scratch; no code ran on load
    assert torch.equal(res.delta, delta) and res.delta.abs().max() <= 8 / 255 + 1e-7


def test_good_checkpoint_of_a_finished_run_is_reused(tmp_path, one_round_checkpoint):
    blob, delta = one_round_checkpoint
    (tmp_path / "ckpt.pt").write_bytes(blob)
    ran = []
    res, _ = _run("samplewise", tmp_path, rounds=1, on_round=lambda log: ran.append(log.round))
    assert ran == [] and res.rounds == 1 and torch.equal(res.delta, delta)
