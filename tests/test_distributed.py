"""torchrun's path on the CPU: 2 gloo processes against one process. The processes are forked (they
start in well under a second) and joined by a file store, or by torchrun's own environment variables
(RANK, WORLD_SIZE, ...) where the test is about reading them. Each writes what it saw to a file.

What a user relies on: 2 ranks give one process's noise within the tolerance ``unlearnable.distributed``
states (sample-wise and class-wise, with and without batch norm), every rank holds the same surrogate,
a sample-wise rank holds only its rows of δ, a sharded checkpoint resumes (also with another world
size), a rank killed mid-run leaves a state the rerun resumes to the same output, ``protect-dataset``
writes its outputs once and every rank returns the manifest, and the ``verify`` cells are spread.
"""
from __future__ import annotations

import os
import runpy
import shutil
import socket
import sys
import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import synthetic_images, write_cifar10
from torch import nn

from unlearnable import distributed
from unlearnable.data.datasets import ImageTensors
from unlearnable.errors import UnlearnableError
from unlearnable.noise.minmin import MinMinConfig, error_minimizing_noise
from unlearnable.train.loop import build_model

STEP = 0.8 / 255
SAMPLEWISE = MinMinConfig(steps=2, train_steps=3, batch_size=32, max_rounds=3, stop_accuracy=1.0)
CLASSWISE = MinMinConfig(mode="classwise", train_steps=3, batch_size=32, max_rounds=3, stop_accuracy=1.0,
                         classwise_portion=0.5)


# --------------------------------------------------------------------------------------------- harness

def _child(rank: int, world: int, store: str | None, env: dict | None, fn, args: tuple) -> None:
    torch.set_num_threads(1)
    if env:         # what torchrun sets; the library joins the group itself
        os.environ.update(TORCHELASTIC_RUN_ID="test", RANK=str(rank), LOCAL_RANK=str(rank),
                          WORLD_SIZE=str(world), **env)
    elif store:
        dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world,
                                timeout=timedelta(seconds=60))
    try:
        fn(rank, *args)
    finally:
        distributed.destroy()


def spawn(tmp: Path, fn, *args, world: int = 2, torchrun_env: bool = False) -> None:
    """Run ``fn(rank, *args)`` in ``world`` forked processes of one gloo group (``world`` 1: no group)."""
    env = None
    if torchrun_env:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(s.getsockname()[1])}
    store = str(tmp / f"store-{uuid.uuid4().hex}") if world > 1 else None
    mp.start_processes(_child, args=(world, store, env, fn, args), nprocs=world, start_method="fork")


def _data() -> ImageTensors:
    x, y = synthetic_images(64, 4, seed=5, size=16)
    return ImageTensors(torch.from_numpy(x), torch.from_numpy(y), [str(i) for i in range(4)])


def _no_bn() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                             nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


def _bn() -> nn.Module:
    return build_model("smallcnn", 4, 3, 0, torch.device("cpu"))


class GhostBN(nn.Module):
    """One process's stand-in for 2 ranks' batch norm: while training, each rank's slice of the batch is
    normalised with its own statistics, and the running statistics become the mean of the slices'."""

    def __init__(self, bn: nn.BatchNorm2d, n: int) -> None:
        super().__init__()
        self.bn, self.n = bn, n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        if not self.training:
            return bn(x)
        outs, stats = [], []
        for r in range(self.n):
            rm, rv = bn.running_mean.clone(), bn.running_var.clone()
            part = x[r * len(x) // self.n:(r + 1) * len(x) // self.n]
            outs.append(F.batch_norm(part, rm, rv, bn.weight, bn.bias, True, bn.momentum, bn.eps))
            stats.append((rm, rv))
        with torch.no_grad():
            bn.running_mean.copy_(sum(s[0] for s in stats) / self.n)
            bn.running_var.copy_(sum(s[1] for s in stats) / self.n)
            bn.num_batches_tracked += 1
        return torch.cat(outs)


def _ghost(model: nn.Module, n: int = 2) -> nn.Module:
    for name, child in model.named_children():
        setattr(model, name, GhostBN(child, n)) if isinstance(child, nn.BatchNorm2d) else _ghost(child, n)
    return model


def _search(rank: int, out: Path, make, cfg: MinMinConfig, ckpt: str | None = None, fault=None) -> None:
    """The engine on the tiny set; saves what this rank holds afterwards."""
    if fault is not None and fault[0] == rank:
        distributed._fault = lambda stage, rnd: os._exit(3) if (stage, rnd) == fault[1:] else None
    model = make()
    res = error_minimizing_noise(model, _data(), cfg, ckpt)
    torch.save({"delta": res.delta, "acc": [h.surrogate_acc for h in res.history],
                "seconds": [h.seconds for h in res.history],                   # a resumed round keeps its own
                "model": {k: v.clone() for k, v in model.state_dict().items()}}, out / f"rank{rank}.pt")


def run(tmp: Path, make, cfg: MinMinConfig, world: int = 2, ckpt: Path | None = None, fault=None) -> list[dict]:
    out = tmp / f"run-{uuid.uuid4().hex}"
    out.mkdir()
    spawn(tmp, _search, out, make, cfg, str(ckpt) if ckpt else None, fault, world=world)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world)]


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a == b).float().mean())


@pytest.fixture(scope="module", autouse=True)
def warm():
    """One short search in this process, single-threaded as the ranks are, before any fork: the forked
    processes inherit the compiled CPU kernels instead of each compiling them again (about 1 s each)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for make in (_no_bn, _bn):
            for cfg in (SAMPLEWISE, CLASSWISE):
                error_minimizing_noise(make(), _data(), replace(cfg, max_rounds=1))
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------- one process or two

@pytest.mark.parametrize("cfg", [SAMPLEWISE, CLASSWISE], ids=["samplewise", "classwise"])
def test_two_ranks_give_one_process_noise_without_batch_norm(tmp_path, cfg):
    (one,) = run(tmp_path, _no_bn, cfg, world=1)
    r0, r1 = run(tmp_path, _no_bn, cfg)
    # the tolerance of the module docstring: sums in another order flip a few near-zero gradient signs
    assert agreement(r0["delta"], one["delta"]) >= 0.99
    assert float((r0["delta"] - one["delta"]).abs().max()) <= 4 * STEP + 1e-6
    assert r0["acc"] == one["acc"] and r1["acc"] == one["acc"]
    for k, v in r0["model"].items():                        # every rank holds the same surrogate
        assert torch.equal(v, r1["model"][k]), k
    if cfg.mode == "samplewise":                            # δ gathered once, on rank 0
        assert r0["delta"].shape == (64, 3, 16, 16) and r1["delta"].shape == (0, 3, 16, 16)
    else:                                                   # class-wise: every rank holds the same δ
        assert torch.equal(r0["delta"], r1["delta"])


@pytest.mark.parametrize("cfg", [SAMPLEWISE, CLASSWISE], ids=["samplewise", "classwise"])
def test_with_batch_norm_two_ranks_are_one_process_with_batch_norm_per_rank_slice(tmp_path, cfg):
    (ghost,) = run(tmp_path, lambda: _ghost(_bn()), cfg, world=1)
    r0, r1 = run(tmp_path, _bn, cfg)
    # the only change besides summation order: batch-norm statistics per rank's slice
    assert agreement(r0["delta"], ghost["delta"]) >= 0.99 and r0["acc"] == ghost["acc"]
    for k, v in r0["model"].items():                        # running statistics averaged: same surrogate
        assert torch.equal(v, r1["model"][k]), k
    assert float(r0["delta"].abs().max()) <= cfg.eps + 1e-6


# ---------------------------------------------------------------------------------------- checkpoints

TWO = replace(SAMPLEWISE, max_rounds=2)         # the checkpoint tests' runs
CAPPED = replace(SAMPLEWISE, max_rounds=1)
SHARDS_1 = ["checkpoint.pt.round-00001.rows-0-32", "checkpoint.pt.round-00001.rows-32-64"]
SHARDS_2 = ["checkpoint.pt.round-00002.rows-0-32", "checkpoint.pt.round-00002.rows-32-64"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(the uninterrupted 2-rank run of 2 rounds, the 2-rank run capped at round 1, its checkpoint folder)."""
    tmp = tmp_path_factory.mktemp("runs")
    (tmp / "capped").mkdir()
    full = run(tmp, _bn, TWO)[0]
    capped = run(tmp, _bn, CAPPED, ckpt=tmp / "capped" / "checkpoint.pt")[0]
    return full, capped, tmp / "capped"


def _copy(folder: Path, tmp: Path) -> Path:
    shutil.copytree(folder, tmp / "state")
    return tmp / "state" / "checkpoint.pt"


def _shards(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".round-" in p.name)


def test_a_sharded_checkpoint_resumes_to_the_uninterrupted_result(tmp_path, runs):
    full, capped, folder = runs
    ckpt = _copy(folder, tmp_path)
    state = torch.load(ckpt, weights_only=True)
    assert "delta" not in state and state["delta_shards"]["rows"] == [[0, 32], [32, 64]]
    assert _shards(ckpt.parent) == SHARDS_1
    shard = torch.load(ckpt.parent / SHARDS_1[0], weights_only=True)
    assert torch.equal(shard["delta"], capped["delta"][:32])          # a rank's shard: its rows only
    r0, _ = run(tmp_path, _bn, TWO, ckpt=ckpt)
    assert r0["seconds"][0] == capped["seconds"][0]                   # round 1 was resumed, not redone
    assert torch.equal(r0["delta"], full["delta"]) and r0["acc"] == full["acc"]
    assert _shards(ckpt.parent) == SHARDS_2                           # older shards removed


def test_another_world_size_resumes_by_rows(tmp_path, runs):
    _, capped, folder = runs
    ckpt = _copy(folder, tmp_path)
    (alone,) = run(tmp_path, _bn, CAPPED, world=1, ckpt=ckpt)         # one process reads both shards
    assert torch.equal(alone["delta"], capped["delta"]) and alone["seconds"] == capped["seconds"]
    (alone,) = run(tmp_path, _bn, TWO, world=1, ckpt=ckpt)            # and goes on, in one file again
    assert len(alone["acc"]) == 2 and _shards(ckpt.parent) == []
    assert "delta" in torch.load(ckpt, weights_only=True)
    r0, r1 = run(tmp_path, _bn, TWO, ckpt=ckpt)                       # two ranks cut their rows from it
    assert torch.equal(r0["delta"], alone["delta"]) and r0["seconds"] == alone["seconds"]
    assert r1["delta"].shape[0] == 0


@pytest.mark.parametrize("fault", [(1, "shard", 2), (0, "state", 2)],
                         ids=["rank1-after-its-shard", "rank0-after-the-state"])
def test_a_rank_killed_mid_run_resumes_to_the_same_output(tmp_path, runs, fault):
    full, capped, folder = runs
    ckpt = _copy(folder, tmp_path)
    with pytest.raises(mp.ProcessExitedException):
        run(tmp_path, _bn, TWO, ckpt=ckpt, fault=fault)
    state = torch.load(ckpt, weights_only=True)
    assert state["delta_shards"]["round"] == (1 if fault[1] == "shard" else 2)
    r0, _ = run(tmp_path, _bn, TWO, ckpt=ckpt)
    assert r0["seconds"][0] == capped["seconds"][0]                   # resumed from the checkpoint
    assert torch.equal(r0["delta"], full["delta"]) and r0["acc"] == full["acc"]
    assert _shards(ckpt.parent) == SHARDS_2


def test_a_missing_shard_makes_every_rank_start_over(tmp_path, runs):
    _, capped, folder = runs
    ckpt = _copy(folder, tmp_path)
    (ckpt.parent / SHARDS_1[1]).unlink()                              # rank 1's rows are gone
    r0, _ = run(tmp_path, _bn, CAPPED, ckpt=ckpt)
    assert r0["seconds"] != capped["seconds"]                         # round 1 redone, by both ranks together
    assert torch.equal(r0["delta"], capped["delta"])


# --------------------------------------------------------------------------------------- refusals

def _refusals(rank: int, out: Path) -> None:
    from unlearnable.attacks.interaction import InteractionSettings
    from unlearnable.noise.problems import photo_noise
    from unlearnable.noise.robust import RobustSettings

    seen = []
    for cfg in (MinMinConfig(interaction=InteractionSettings()), MinMinConfig(robust=RobustSettings()),
                MinMinConfig(batch_size=1)):
        try:
            error_minimizing_noise(_no_bn(), _data(), cfg)
        except UnlearnableError as e:
            seen.append(str(e))
    data = _data()
    try:
        photo_noise(data.images[:4], torch.zeros(4, dtype=torch.long), 1, _bn(), data)
    except UnlearnableError as e:
        seen.append(str(e))
    torch.save(seen, out / f"rank{rank}.pt")


def test_options_that_draw_per_batch_are_refused_on_several_ranks(tmp_path):
    spawn(tmp_path, _refusals, tmp_path)
    for r in range(2):
        seen = torch.load(tmp_path / f"rank{r}.pt")
        assert len(seen) == 4
        assert "one process" in seen[0] and "one process" in seen[1]
        assert "cannot be shared by 2 processes" in seen[2] and "ReferenceBankProblem" in seen[3]


# ------------------------------------------------------------------------------ the workflows

def _protect(rank: int, out: Path, root: Path, target: Path) -> None:
    from unlearnable.protect.dataset import protect_dataset

    cfg = MinMinConfig(steps=2, train_steps=2, batch_size=8, max_rounds=1)
    try:
        result = protect_dataset("cifar10", target, cfg, "smallcnn", 40, root, "cpu", workers=1)
    except UnlearnableError as e:
        result = {"error": type(e).__name__, "message": str(e)}
    result["rank"] = (distributed.current().rank, distributed.current().world_size)
    torch.save(result, out / f"rank{rank}.pt")


def test_protect_dataset_under_torchrun_writes_once_and_every_rank_returns_the_manifest(tmp_path):
    root = write_cifar10(tmp_path / "data")
    target = tmp_path / "out"
    spawn(tmp_path, _protect, tmp_path, root, target, torchrun_env=True)
    m0, m1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert m0["rank"] == (0, 2) and m1["rank"] == (1, 2)       # the group was joined from torchrun's variables
    assert {k: v for k, v in m0.items() if k != "rank"} == {k: v for k, v in m1.items() if k != "rank"}
    assert m0["num_images"] == 40 and m0["rounds"] == 1 and not m0["converged"]
    assert np.load(target / "perturbation.npy").shape == (40, 3, 32, 32)
    state = target / ".unlearnable"
    assert _shards(state) == ["checkpoint.pt.round-00001.rows-0-16", "checkpoint.pt.round-00001.rows-16-40"]
    # rank 0's refusal of a folder it did not write reaches every rank
    other = tmp_path / "taken"
    other.mkdir()
    (other / "indices.npy").write_bytes(b"the user's")
    spawn(tmp_path, _protect, tmp_path, root, other, torchrun_env=True)
    e0, e1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert e0["error"] == "UsageError" and "not written by unlearnable" in e0["message"]
    assert e1["error"] == "WriterFailed" and e0["message"] in e1["message"]
    assert (other / "indices.npy").read_bytes() == b"the user's"


def _verify(rank: int, out: Path, prot: Path, target: Path, root: Path) -> None:
    from unlearnable.train.loop import TrainConfig
    from unlearnable.verify.matrix import MatrixConfig, verify_defenses

    cfg = MatrixConfig(archs=["smallcnn"], defenses=["standard"], train=TrainConfig(epochs=1, batch_size=20),
                       robust_images=0, patterns_for=["none"])
    trained = []
    report = verify_defenses(prot, target, cfg, "cpu", root,
                             on_event=lambda kind, info: kind == "model" and trained.append(info["key"]))
    torch.save({"report": report, "trained": trained}, out / f"rank{rank}.pt")


def test_verify_spreads_cells_over_ranks_and_rank0_assembles_the_report(tmp_path):
    from unlearnable.protect.dataset import protect_dataset

    root = write_cifar10(tmp_path / "data", n_train=100, n_test=20)
    prot = tmp_path / "prot"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                                # as the ranks: they inherit its compiled kernels
    try:
        protect_dataset("cifar10", prot, MinMinConfig(mode="classwise", max_rounds=1, train_steps=1, batch_size=50),
                        "smallcnn", 40, root, "cpu")
    finally:
        torch.set_num_threads(threads)
    spawn(tmp_path, _verify, tmp_path, prot, tmp_path / "alone", root, world=1)
    alone = torch.load(tmp_path / "rank0.pt", weights_only=False)
    spawn(tmp_path, _verify, tmp_path, prot, tmp_path / "spread", root)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    keys = alone["trained"]
    assert len(keys) == 2 and r0["trained"] == keys[:1] and r1["trained"] == keys[1:]   # cell i on rank i mod 2
    assert r0["report"] == r1["report"]
    cells = {(c["defense"], c["train_data"]): c for c in alone["report"]["cells"]}
    assert len(r0["report"]["cells"]) == 2 and r0["report"]["cells_missing"] == []
    for c in r0["report"]["cells"]:
        mine = cells[c["defense"], c["train_data"]]
        assert [e["test_acc"] for e in c["history"]] == [e["test_acc"] for e in mine["history"]]
    assert (tmp_path / "spread" / "report.html").is_file()


# ------------------------------------------------------------------------------------ one process

def test_one_process_changes_nothing(monkeypatch):
    for var in ("TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.current() is distributed.SINGLE and distributed.is_writer()
    assert distributed.setup_device("cpu") == torch.device("cpu") and not dist.is_initialized()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    monkeypatch.setenv("WORLD_SIZE", "1")                   # torchrun with one process: no group either
    assert distributed.setup_device("cpu") == torch.device("cpu") and not dist.is_initialized()
    t = torch.arange(4.0)
    ctx = distributed.SINGLE
    assert ctx.all_reduce_sum(t) is t and ctx.gather_rows(t, [(0, 4)]) is t and ctx.share(5) == 5
    assert ctx.row_ranges(100, 32) == [(0, 100)] and ctx.split(7) == (0, 7)


def test_rows_are_shared_in_whole_batches():
    for world in (2, 3, 5):
        ranges = [distributed.Context(r, world).row_ranges(100, 8)[r] for r in range(world)]
        assert ranges[0][0] == 0 and ranges[-1][1] == 100
        assert all(a[1] == b[0] and a[1] % 8 == 0 for a, b in zip(ranges, ranges[1:]))


def test_python_dash_m_unlearnable_runs_the_app(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["unlearnable", "--version"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module("unlearnable", run_name="__main__")
    assert e.value.code == 0 and "unlearnable" in capsys.readouterr().out
