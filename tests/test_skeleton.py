"""The skeleton interaction attack (arXiv 2101.06704): data, constraints, reaction model, attack, CLI.

Real data: SBU / K3HI from ../shared/data/skeleton-interaction beside the clone (skipped, with a
reason, when that folder is absent). The reaction model is trained once (20 epochs, ~10 s)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

from unlearnable.attacks.skeleton import SkeletonInteractionAttack
from unlearnable.cli.attack_skeleton import skeleton_cmd
from unlearnable.skeleton.constraints import BONE_TOL, bone_lengths, project_skeleton, random_perturbation, violations
from unlearnable.skeleton.data import SKELETONS, frame_mask, load_interactions
from unlearnable.skeleton.reaction import (ReactionConfig, class_mean_reactions, load_reaction, mpjpe, predict,
                                           reaction_errors, target_reactions, train_reaction)

SHARED = Path(__file__).parents[1].parent / "shared/data/skeleton-interaction"
EPS = 0.05


def _need_data() -> None:
    if not (SHARED / "sbu_actor_reactor.npz").exists():
        pytest.skip(f"skeleton interaction data not found ({SHARED}, i.e. ../shared/data beside the clone)")


@pytest.fixture(scope="module")
def sbu():
    _need_data()
    d = load_interactions(SHARED / "sbu_actor_reactor.npz")
    return d.split("train"), d.split("test")


@pytest.fixture(scope="module")
def model(sbu):
    """Small batches of a small GRU: one thread is several times faster than two on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield train_reaction(sbu[0], ReactionConfig(epochs=20, hidden=64, seed=0), "cpu")
    finally:
        torch.set_num_threads(threads)


def _bone_cv(x: torch.Tensor, lengths: torch.Tensor, skeleton) -> torch.Tensor:
    """(bones,) mean over sequences of the within-sequence coefficient of variation of each bone's length."""
    m = frame_mask(lengths, x.shape[1]).float()[..., None]
    b = bone_lengths(x, skeleton)
    mean = (b * m).sum(1) / m.sum(1)
    std = (((b - mean[:, None]) ** 2 * m).sum(1) / m.sum(1)).sqrt()
    return (std / mean).mean(0)


def test_joint_orders_match_the_data():
    """Each file's own tree keeps bones steady (as Kinect does); K3HI read with SBU's tree does not."""
    _need_data()
    cv = {}
    for name in ("sbu", "k3hi"):
        d = load_interactions(SHARED / f"{name}_actor_reactor.npz")
        assert d.skeleton is SKELETONS[name] and d.actor.shape[2:] == (15, 3)
        both, lengths = torch.cat([d.actor, d.reactor]), torch.cat([d.lengths, d.lengths])
        cv[name] = _bone_cv(both, lengths, d.skeleton)
        assert cv[name].max() < 0.1
    wrong = _bone_cv(both, lengths, SKELETONS["sbu"])   # K3HI read in SBU's order
    assert wrong.max() > 0.15 and wrong.mean() > 1.5 * cv["k3hi"].mean()


def test_projection_meets_both_constraints_and_keeps_feasible_points(sbu):
    test = sbu[1]
    g = torch.Generator().manual_seed(0)
    for eps in (0.005, 0.05, 0.3):
        wild = test.actor + 3 * eps * torch.randn(test.actor.shape, generator=g)
        adv = project_skeleton(wild, test.actor, eps, test.skeleton, test.lengths)
        v = violations(adv, test.actor, test.lengths, test.skeleton)
        assert v["max_displacement"] <= eps and v["max_bone_length_change"] <= BONE_TOL
        assert v["max_padding_change"] == 0 and v["mean_displacement"] > 0.8 * eps
        again = project_skeleton(adv, test.actor, eps, test.skeleton, test.lengths)
        assert (again - adv).abs().max() < 1e-5   # feasible in, (nearly) unchanged out


def test_reaction_model_beats_zero_motion(sbu, model):
    errors = reaction_errors(model, sbu[1], sbu[0])
    assert errors["model"] < 0.97 * errors["zero_motion"] and errors["model"] < 0.5 * errors["mean_pose"]


def test_untargeted_attack_beats_random_noise_and_holds_the_constraints(sbu, model):
    test = sbu[1]
    clean = mpjpe(predict(model, test), test.reactor, test.lengths).mean()
    rnd = random_perturbation(test.actor, test.lengths, EPS, test.skeleton, torch.Generator().manual_seed(0))
    random_err = mpjpe(predict(model, test, rnd), test.reactor, test.lengths).mean()
    # λ = 0: the attack's power under the hard constraints, which the random noise meets too
    atk = SkeletonInteractionAttack(model, test.skeleton, eps=EPS, steps=20, smooth_weight=0.0)
    adv = atk(test.actor, test.lengths, first=test.reactor[:, 0], reaction=test.reactor)
    attacked = mpjpe(predict(model, test, adv), test.reactor, test.lengths).mean()
    assert attacked > 1.05 * clean and attacked - clean > 3 * (random_err - clean).abs(), (clean, random_err, attacked)
    v = violations(adv, test.actor, test.lengths, test.skeleton)
    assert v["max_displacement"] <= EPS and v["max_bone_length_change"] <= BONE_TOL
    real = frame_mask(test.lengths, test.actor.shape[1])
    assert torch.equal(adv[~real], test.actor[~real])


def test_targeted_attack_moves_towards_the_target_within_constraints(sbu, model):
    train, test = sbu
    sub = test.subset(torch.arange(8))
    means = class_mean_reactions(train)
    goal = (sub.labels + 1) % train.num_classes
    targets = target_reactions(means, goal, sub.reactor[:, 0], sub.lengths, sub.actor.shape[1])
    atk = SkeletonInteractionAttack(model, sub.skeleton, eps=EPS, steps=20, smooth_weight=0.0)
    adv = atk(sub.actor, sub.lengths, targets, first=sub.reactor[:, 0])
    rnd = random_perturbation(sub.actor, sub.lengths, EPS, sub.skeleton, torch.Generator().manual_seed(0))
    before = mpjpe(predict(model, sub), targets, sub.lengths).mean()
    after = mpjpe(predict(model, sub, adv), targets, sub.lengths).mean()
    random_err = mpjpe(predict(model, sub, rnd), targets, sub.lengths).mean()
    assert after < 0.95 * before and before - after > 3 * (random_err - before).abs(), (before, random_err, after)
    v = violations(adv, sub.actor, sub.lengths, sub.skeleton)
    assert v["max_displacement"] <= EPS and v["max_bone_length_change"] <= BONE_TOL and v["max_padding_change"] == 0


class _SeesPadding(nn.Module):
    """A non-causal toy reaction model whose every output frame depends on every input frame,
    padding included, so the attack's gradient is non-zero on padding frames."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))

    def forward(self, actor, lengths, first):
        return first[:, None] + (actor * self.w).sum((1, 2), keepdim=True).expand_as(actor)


def test_padding_frames_are_never_perturbed():
    skel = SKELETONS["sbu"]
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 1, 15, 3, generator=g)
    actor = (base + 0.01 * torch.randn(3, 12, 15, 3, generator=g)).contiguous()
    lengths = torch.tensor([12, 7, 4])
    actor = actor * frame_mask(lengths, 12)[:, :, None, None]
    toy = _SeesPadding()
    first = actor[:, 0] + 0.5
    for start in (False, True):
        atk = SkeletonInteractionAttack(toy, skel, eps=0.05, steps=3, random_start=start, generator=g)
        adv = atk(actor, lengths, first=first, reaction=torch.zeros_like(actor))
        real = frame_mask(lengths, 12)
        assert torch.equal(adv[~real], actor[~real]) and (adv[real] != actor[real]).any()


def _tiny_npz(path: Path) -> Path:
    """A synthetic file in the real format: standing skeletons drifting in x, 2 classes."""
    _need_data()
    sbu = load_interactions(SHARED / "sbu_actor_reactor.npz")
    rng = np.random.default_rng(0)
    n, t = 12, 10
    pose = sbu.actor[0, 0].numpy()
    drift = np.linspace(0, 0.1, t)[None, :, None, None] * rng.choice([-1.0, 1.0], size=(n, 1, 1, 1))
    actor = (pose + drift + 0.005 * rng.standard_normal((n, t, 15, 3))).astype(np.float32)
    reactor = (pose + [0.5, 0, 0] - drift + 0.005 * rng.standard_normal((n, t, 15, 3))).astype(np.float32)
    length = np.array([10, 8] * 6)
    for i, ln in enumerate(length):
        actor[i, ln:] = reactor[i, ln:] = 0
    np.savez(path, actor=actor, reactor=reactor, length=length, label=np.array(["a", "b"] * 6),
             split=np.array(["train"] * 8 + ["test"] * 4), seq=np.array([f"s{i}" for i in range(n)]))
    return path


def test_cli_trains_saves_loads_and_writes_json(tmp_path):
    data = _tiny_npz(tmp_path / "sbu_tiny_actor_reactor.npz")
    app = typer.Typer()
    app.command("skeleton")(skeleton_cmd)
    app.command("unused")(lambda: None)   # two commands: the command name is then required, as in the real app
    runner = CliRunner()
    fast = ["--eps", "0.02,0.05", "--steps", "2", "--epochs", "2", "--hidden", "8", "--device", "cpu"]
    r = runner.invoke(app, ["skeleton", str(data), *fast, "--save-model", str(tmp_path / "m"),
                            "-o", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "r.json").read_text())
    assert [row["eps"] for row in rec["by_eps"]] == [0.02, 0.05] and rec["test_sequences"] == 4
    for row in rec["by_eps"]:
        c = row["untargeted"]["constraints"]
        assert c["max_displacement"] <= row["eps"] and c["max_bone_length_change"] <= BONE_TOL
        assert 0 <= row["targeted"]["reach_rate"]["attacked"] <= 1 and row["targeted"]["pairs"] == 4
    assert "attacked" in r.output and (tmp_path / "m.pt").exists()
    model, _ = load_reaction(tmp_path / "m")
    d = load_interactions(data)
    assert model.gru.hidden_size == 8 and predict(model, d).shape == d.reactor.shape
    # the saved model is used as is; existing outputs are refused, not replaced
    r = runner.invoke(app, ["skeleton", str(data), *fast, "--model", str(tmp_path / "m.pt"),
                            "-o", str(tmp_path / "r2.json"), "--no-targeted"])
    assert r.exit_code == 0, r.output
    again = json.loads((tmp_path / "r2.json").read_text())
    assert again["clean"] == rec["clean"] and "loaded" in again["model"]
    r = runner.invoke(app, ["skeleton", str(data), *fast, "-o", str(tmp_path / "r.json")])
    assert r.exit_code == 2 and "already exists" in r.output
