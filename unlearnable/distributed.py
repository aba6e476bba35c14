"""Several processes, one run: ``torchrun`` (``torch.distributed``) for the min-min engine, ``protect-dataset``
and the ``verify`` matrix, across GPUs of one machine or across machines.

Launch with torchrun, never a launcher of ours::

    torchrun --nproc_per_node=4 -m unlearnable protect-dataset cifar10 -o out/
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29400 -m unlearnable ...

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous; :func:`setup_device` reads them
(``torch.distributed.is_torchelastic_launched``), joins the process group (NCCL on CUDA, gloo on the CPU)
and gives each process ``cuda:LOCAL_RANK`` under ``--device auto`` (or ``cuda``). Not launched, or launched
with one process, nothing is initialised and :func:`current` is the single-process context, whose
helpers return their inputs: the one-process path runs no extra op and draws no extra random number.
When a default process group is already initialised (a user's own script, the tests), it is used as is.

What each part does with N ranks (``unlearnable.noise.minmin`` calls the helpers below):

- Surrogate: DistributedDataParallel. Every rank draws the *same* global batch from the engine's
  seeded generator (same seed everywhere) and trains on its contiguous 1/N slice; the loss of a slice
  is its summed cross-entropy times N / B, so DDP's gradient mean is the gradient of the global batch's
  mean loss, and gradient clipping (after DDP's all-reduce) sees the global gradient. Batch-norm
  layers normalise each slice with its own statistics; their running statistics are averaged over the
  ranks after every step (so every rank holds the same surrogate; the running mean then equals one
  process's, the running variance misses the spread between slices).
- Sample-wise δ: sharded by index. Each rank holds and searches only its contiguous rows of δ, made
  of whole PGD batches (``row_ranges``), so each batch is the one a single process would step. A
  training batch's δ rows are summed over the ranks (each fills the rows it holds, zeros elsewhere: an
  exact gather of that batch only). The stop test's correct counts and loss sums are all-reduced.
  At the end δ is gathered once, on rank 0 only.
- Class-wise δ: every rank steps its slice of the same global batch; the per-class sums and counts of
  the stepped copies are all-reduced, so every rank holds the same δ.
- Checkpoint (``save_checkpoint``): sample-wise, each rank writes its rows of round r to
  ``checkpoint.pt.round-<r>.rows-<a>-<b>``, all wait at a barrier, then rank 0 atomically replaces
  ``checkpoint.pt`` (surrogate, optimizer, generator, batch stream, round log and the list of shard
  files) and removes the shards it no longer names. A rank killed at any point leaves a checkpoint
  naming a complete set of shards: round r once all shards of r exist, else round r − 1, whose shards
  are only removed after the new checkpoint is in place. Class-wise δ is small and the same on every
  rank: rank 0 writes it inside the checkpoint. Every write goes through ``data.storage.write_atomic``.
- Another world size resumes the same checkpoint: shards are named by their rows, so each rank reads
  the shards that overlap its new rows (one process reads them all; a sharded run reads its rows of a
  one-process checkpoint). Whether every rank could read and validate its rows is agreed on by all
  ranks before any state is loaded; otherwise all start over together, with a warning.
- Outputs (images, manifest, perturbation.npy) are written by rank 0 alone; the other ranks wait and
  return the same manifest. A failed check of the output folder on rank 0 is raised on every rank.
- Verify matrix: cells are independent; cell i is trained on rank i mod N (no DDP inside a cell), each
  rank writes its own cell files (atomic), and rank 0 assembles report.json / report.html once.

Refused with more than one rank, because they draw random numbers per batch inside the search (the
ranks' draws would differ from one process's): ``MinMinConfig.interaction``, ``MinMinConfig.robust``;
the photo and face problems (their random scraper views) and any other problem that does not declare
itself ``shardable`` (the defense-aware search's random defense views, for one): they search in one process.

Same seed, same result, within this tolerance (``tests/test_distributed.py``; figures measured on its
settings: 64 images of 16 × 16, 4 classes, 3 rounds, 2 gloo CPU ranks against one process). N ranks
differ from one process by
(1) the order of floating-point sums (a gradient is summed over slices, then over ranks; class sums
likewise), which moves the surrogate's weights in their last bits and so, over rounds, may flip the
sign of a few near-zero noise gradients. Without batch norm: ≥ 99 % of δ's entries equal to one
process's, the others a few PGD steps away at most, the same stop-test accuracy every round (measured:
sample-wise all entries equal; class-wise 99.8 %, the others off by 2·10⁻⁷/255, rounding of the means);
(2) batch-norm statistics per rank: each rank normalises its own slice while the surrogate trains.
With batch norm, N ranks equal, within (1), one process whose batch-norm layers normalise each rank's
slice apart ("ghost" batch norm; measured: 99.98 % and 100 % of entries equal). Against a plain
one-process run this is a real change of the surrogate's training, and δ is another draw of the same
method, not the same tensor (measured: 42 % of sample-wise and 6 % of class-wise entries equal); the
smaller each rank's slice (16 images there), the larger the change.
Two runs with the same world size are bit-for-bit equal on the CPU, also across a kill and a resume
(tested with 2 ranks; with more, DDP re-forms its gradient buckets after a restart, which may change
the summation order in the last bits).

Not tested here: NCCL on GPUs (the code path is written: backend, device per LOCAL_RANK); the tests run
gloo with 2 CPU processes. Multi-node runs need the output folder on a file system every node sees
(the checkpoint shards and outputs are files) and the dataset on every node. A rank that dies makes
torchrun stop the others; rerun the same command to resume.
"""
from __future__ import annotations

import atexit
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from inspect import signature
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .data.storage import TEMP_PATTERN, describe, write_atomic
from .device import resolve_device
from .errors import UnlearnableError

logger = logging.getLogger(__name__)

SHARD_FORMAT = "unlearnable-minmin-shard/1"
# Test hook: called as ``_fault(stage, round)`` at 'shard' (this rank's rows of round r are written) and
# 'state' (rank 0 wrote the checkpoint naming round r); a test sets it in one rank to kill it there.
_fault: Callable[[str, int], None] | None = None


class WriterFailed(UnlearnableError):
    """Rank 0 failed a step the other ranks waited for (its message is repeated on every rank)."""


@dataclass(frozen=True)
class Context:
    """This process's place in the run: ``rank`` in [0, ``world_size``), ``local_rank`` on its machine.
    The default, ``Context()``, is one process: every helper returns its input unchanged."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes the outputs, the checkpoint and the report."""
        return self.rank == 0

    # ---------------------------------------------------------------------------------- shares
    def split(self, n: int, rank: int | None = None) -> tuple[int, int]:
        """[lo, hi): ``rank``'s (default: this rank's) contiguous share of ``n`` items, sizes differing by ≤ 1."""
        r = self.rank if rank is None else rank
        return r * n // self.world_size, (r + 1) * n // self.world_size

    def row_ranges(self, n: int, batch_size: int) -> list[tuple[int, int]]:
        """Every rank's [lo, hi) of ``n`` rows in whole batches of ``batch_size`` (the last one may be
        short), contiguous and in rank order: the batches a single process would visit, shared out."""
        batches = -(-n // batch_size)
        return [(min(a * batch_size, n), min(b * batch_size, n))
                for a, b in (self.split(batches, r) for r in range(self.world_size))]

    def owns(self, i: int) -> bool:
        """Whether item ``i`` of a list spread round-robin over the ranks is this rank's (i mod N)."""
        return i % self.world_size == self.rank

    # ----------------------------------------------------------------------------- collectives
    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the ranks, in place (every rank gets the same values); one process: ``t``."""
        if self.active:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        """Wait until every rank is here."""
        if self.active:
            dist.barrier()

    def agree(self, ok: bool) -> bool:
        """True on every rank if ``ok`` is true on every rank."""
        if not self.active:
            return ok
        flag = torch.tensor([0 if ok else 1], dtype=torch.int32, device=_collective_device())
        dist.all_reduce(flag, op=dist.ReduceOp.SUM)
        return int(flag) == 0

    def share(self, value: object = None, error: BaseException | None = None) -> object:
        """Rank 0's ``value`` on every rank, or, when rank 0 passes ``error``, :class:`WriterFailed` with its
        message raised on the other ranks (rank 0 itself returns; its caller re-raises)."""
        if not self.active:
            return value
        box = [None if error is not None else value, None if error is None else describe(error)]
        dist.broadcast_object_list(box, src=0, device=_collective_device())
        if box[1] is not None and not self.is_writer:
            raise WriterFailed(f"rank 0 failed: {box[1]}")
        return box[0]

    def follow(self) -> object:
        """The other ranks' side of :meth:`share` / :meth:`leading` (returns rank 0's value or raises)."""
        return self.share()

    @contextmanager
    def leading(self) -> Iterator["_Lead"]:
        """Rank 0's side of a run the other ranks follow at two points (``protect_dataset``): ``ready()``
        once its checks pass (they then start the search), ``writing()`` once the search is over; on
        leaving, success or the error is shared with them. An error between ``ready()`` and ``writing()``
        is not shared (the others are then inside the search's collectives: torchrun stops them)."""
        lead = _Lead(self)
        try:
            yield lead
        except BaseException as e:
            if self.active and lead.phase != "search":
                self.share(error=e)
            raise
        if self.active and lead.phase == "writing":
            self.share()

    def gather_rows(self, rows: torch.Tensor, ranges: list[tuple[int, int]]) -> torch.Tensor:
        """The whole tensor on rank 0 from every rank's ``rows`` (rank r holds ``ranges[r]``); on the other
        ranks an empty tensor of the same trailing shape. One process: ``rows``."""
        if not self.active:
            return rows
        longest = max(b - a for a, b in ranges)
        buf = torch.zeros((longest,) + tuple(rows.shape[1:]), dtype=rows.dtype, device=rows.device)
        buf[:len(rows)] = rows
        parts = [torch.empty_like(buf) for _ in ranges] if self.is_writer else None
        dist.gather(buf, parts, dst=0)
        if not self.is_writer:
            return rows.new_zeros((0,) + tuple(rows.shape[1:]))
        return torch.cat([p[:b - a] for p, (a, b) in zip(parts, ranges)])

    def take_rows(self, rows: torch.Tensor, idx: torch.Tensor, lo: int) -> torch.Tensor:
        """Rows ``idx`` (global indices) of a tensor whose rows [lo, lo + len(rows)) this rank holds and the
        others hold the rest: each rank fills the rows it holds, zeros elsewhere, summed over the ranks
        (exact: every row has one non-zero contributor)."""
        mine = (idx >= lo) & (idx < lo + len(rows))
        out = rows.new_zeros((len(idx),) + tuple(rows.shape[1:]))
        out[mine] = rows[idx[mine] - lo]
        return self.all_reduce_sum(out)

    def average_buffers(self, model: nn.Module) -> None:
        """Average ``model``'s floating-point buffers (batch-norm running statistics) over the ranks."""
        bufs = [b for b in model.buffers() if b.is_floating_point()]
        if not self.active or not bufs:
            return
        flat = self.all_reduce_sum(torch.cat([b.detach().reshape(-1) for b in bufs]))
        flat /= self.world_size
        offset = 0
        for b in bufs:
            b.copy_(flat[offset:offset + b.numel()].view_as(b))
            offset += b.numel()


class _Lead:
    """Where rank 0 is in a run the other ranks follow (see :meth:`Context.leading`)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx, self.phase = ctx, "checks"

    def ready(self) -> None:
        self.ctx.share()
        self.phase = "search"

    def writing(self) -> None:
        self.phase = "writing"


SINGLE = Context()


def launched() -> bool:
    """Whether torchrun (torchelastic) started this process."""
    return dist.is_available() and dist.is_torchelastic_launched()


def current() -> Context:
    """The context of the initialised default process group, else the single-process one."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    rank = dist.get_rank()
    return Context(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)))


def is_writer() -> bool:
    """Whether this process writes the outputs and talks to the user (rank 0, or not distributed)."""
    return current().is_writer


def setup_device(spec: str | torch.device = "auto") -> torch.device:
    """This process's device. Under torchrun with more than one process, ``auto`` and ``cuda`` mean
    ``cuda:LOCAL_RANK`` (``auto`` is the CPU without CUDA), and the default process group is joined
    (NCCL on CUDA, gloo on the CPU; left at exit) unless already initialised. Otherwise
    :func:`unlearnable.device.resolve_device`."""
    world = int(os.environ.get("WORLD_SIZE", "1")) if launched() else 1
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return resolve_device(spec)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    name = str(spec)
    if name == "auto" and not torch.cuda.is_available():
        dev = resolve_device("cpu")
    elif name in ("auto", "cuda"):
        resolve_device("cuda")                  # the usual message when there is no CUDA
        if local >= torch.cuda.device_count():
            raise UnlearnableError(f"this process is local rank {local} but only {torch.cuda.device_count()} "
                                   "CUDA GPU(s) are visible: start at most that many processes per machine")
        dev = resolve_device(f"cuda:{local}")
    else:
        dev = resolve_device(spec)
        if dev.type == "mps" or (dev.type == "cuda" and dev.index is not None and world > 1):
            raise UnlearnableError(f"--device {name} cannot be shared by the processes of a torchrun run: "
                                   "give --device auto (each process takes cuda:LOCAL_RANK) or cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        atexit.register(destroy)
    return dev


def destroy() -> None:
    """Leave the default process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    """Where small control tensors go: the current GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------------------
# the min-min engine's share


def check_search(ctx: Context, config, problem, batch_size: int) -> None:
    """Refuse (UnlearnableError) a search that cannot run on ``ctx.world_size`` > 1 ranks as one process would."""
    if getattr(config, "interaction", None) is not None or getattr(config, "robust", None) is not None:
        raise UnlearnableError("the interaction penalty and robust (REM) noise draw random numbers for every "
                               "batch of the search; they run in one process, not under torchrun")
    if not getattr(problem, "shardable", False):
        raise UnlearnableError(f"{type(problem).__name__} searches in one process (random views per batch); "
                               "run it without torchrun")
    if min(batch_size, len(problem)) < ctx.world_size:
        raise UnlearnableError(f"a batch of {min(batch_size, len(problem))} images cannot be shared by "
                               f"{ctx.world_size} processes: use a larger batch or fewer processes")


class SurrogateStep:
    """One surrogate SGD step of a distributed search (see the module docstring): ``x``, ``y`` are the
    global batch (the same on every rank); this rank trains on its slice through DDP."""

    def __init__(self, ctx: Context, model: nn.Module, grad_clip: float | None) -> None:
        from torch.nn.parallel import DistributedDataParallel

        from .train.loop import StandardStep

        self.ctx = ctx
        # no buffer broadcast in forward: the running statistics are averaged after each step instead
        newer = "forward_sync_buffers" in signature(DistributedDataParallel).parameters   # newer torch; the old name warns
        quiet = {"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}
        self.ddp = DistributedDataParallel(model, **quiet)
        self.step = StandardStep(grad_clip=grad_clip, amp=False)   # fp32, as the engine's own step

    def __call__(self, model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                 y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.ctx.split(len(x))
        self.step.loss_fn = partial(_scaled_cross_entropy, scale=self.ctx.world_size / len(x))
        out = self.step(self.ddp, optimizer, x[lo:hi], y[lo:hi])
        self.ctx.average_buffers(self.ddp.module)
        return out


def _scaled_cross_entropy(logits: torch.Tensor, y: torch.Tensor, scale: float) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="sum") * scale


def shared_score(ctx: Context, problem, model: nn.Module, delta_of, pool: torch.Tensor, batch_size: int,
                 gen: torch.Generator) -> tuple[float, float]:
    """The stop test over every rank's share ``pool`` of the search data: (accuracy, mean loss) of all of it."""
    acc, loss = problem.score(model, delta_of, pool, batch_size, gen) if len(pool) else (0.0, 0.0)
    sums = torch.tensor([round(acc * len(pool)), loss * len(pool), len(pool)], dtype=torch.float64,
                        device=_collective_device())
    correct, loss_sum, n = ctx.all_reduce_sum(sums).tolist()
    return correct / n, loss_sum / n


def _shard_name(path: Path, round_: int, lo: int, hi: int) -> str:
    return f"{path.name}.round-{round_:05d}.rows-{lo}-{hi}"


def _shard_pattern(path: Path) -> re.Pattern:
    return re.compile(re.escape(path.name) + r"\.round-(\d+)\.rows-(\d+)-(\d+)")


def _save(obj: dict, path: Path) -> None:
    write_atomic(path, lambda f: torch.save(obj, f), verify=False)


def save_checkpoint(ctx: Context, state: dict, path: Path, ranges: list[tuple[int, int]] | None,
                    write: Callable[[dict, Path], None] = _save) -> None:
    """Save the engine's ``state`` (its ``delta``: this rank's rows of ``ranges``, or the whole δ when
    ``ranges`` is None) at ``path``: rows as shards then the checkpoint naming them, as the module
    docstring says; whole δ: inside the checkpoint, written by rank 0. Shards the checkpoint no longer
    names are removed afterwards."""
    path = Path(path)
    if ranges is not None:
        rnd = len(state["history"])
        lo, hi = ranges[ctx.rank]
        _save({"format": SHARD_FORMAT, "fingerprint": state["fingerprint"], "round": rnd, "rows": [lo, hi],
               "delta": state["delta"]}, path.parent / _shard_name(path, rnd, lo, hi))
        if _fault:
            _fault("shard", rnd)
        ctx.barrier()
        files = [_shard_name(path, rnd, a, b) for a, b in ranges]
        state = {k: v for k, v in state.items() if k != "delta"}
        state["delta_shards"] = {"round": rnd, "rows": [list(r) for r in ranges], "files": files}
    else:
        files = []
    if ctx.is_writer:
        write(state, path)
        if _fault:
            _fault("state", len(state["history"]))
        _remove_shards(path, keep=set(files))


def _remove_shards(path: Path, keep: set[str] = frozenset()) -> None:
    """Delete the shard files of the checkpoint ``path`` not in ``keep``, and temp files of shard writes."""
    pattern = _shard_pattern(path)
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for e in entries:
        ours = (pattern.fullmatch(e.name) and e.name not in keep) or (
            TEMP_PATTERN.fullmatch(e.name) and e.name.startswith(f".{path.name}.round-"[:41]))
        if ours:
            try:
                os.unlink(e.path)
            except OSError:
                pass


def remove_checkpoint(path: str | os.PathLike) -> None:
    """Delete a checkpoint and its shard files (a finished run's)."""
    path = Path(path)
    path.unlink(missing_ok=True)
    _remove_shards(path)


def load_rows(ctx: Context, state: dict, path: Path, rows: tuple[int, int], shape: tuple[int, ...],
              eps: float) -> dict | None:
    """``state`` (a checkpoint read on every rank) with ``state["delta"]`` set to this rank's ``rows`` of δ,
    read from the shards it names or cut from its whole δ, each checked (finite, float32, ‖δ‖∞ ≤ ε,
    shape ``shape``). Collective: None on every rank (with a warning) unless every rank got its rows;
    then rank 0 removes the shard files the checkpoint does not name (left by a killed round)."""
    lo, hi = rows
    named: set[str] = set()
    try:
        if "delta_shards" in state:
            state = dict(state)
            desc = state.pop("delta_shards")
            named = set(desc["files"])
            state["delta"] = _read_shards(desc, state, path, lo, hi, shape[1:])
        else:
            whole = state.get("delta")
            if not isinstance(whole, torch.Tensor) or whole.dim() != len(shape) or len(whole) < hi:
                raise ValueError("δ does not have the rows of this run")
            state = {**state, "delta": whole[lo:hi].clone()}
        _check_rows(state["delta"], shape, eps)
        why = None
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError) as e:
        why = describe(e)
    if not ctx.agree(why is None):
        logger.warning("%s cannot be used (%s); starting the noise search over", path,
                       why or "another process could not read its share of δ")
        return None
    if ctx.is_writer:                   # every rank has read its rows: shards of killed rounds can go
        _remove_shards(path, keep=named)
    return state


def _read_shards(desc: dict, state: dict, path: Path, lo: int, hi: int, item: tuple[int, ...]) -> torch.Tensor:
    """Rows [lo, hi) of δ from the shard files named by ``desc`` (the checkpoint's ``delta_shards``)."""
    rnd, ranges, files = desc["round"], desc["rows"], desc["files"]
    if rnd != len(state["history"]) or len(ranges) != len(files) or not ranges:
        raise ValueError("the shard list does not match the round log")
    if ranges[0][0] != 0 or any(a[1] != b[0] for a, b in zip(ranges, ranges[1:])) or ranges[-1][1] < hi:
        raise ValueError("the shards do not cover δ")
    out = torch.empty((hi - lo,) + tuple(item))
    for (a, b), name in zip(ranges, files):
        if b <= lo or a >= hi or a == b:
            continue
        if name != _shard_name(path, rnd, a, b):
            raise ValueError(f"unexpected shard name {name!r}")
        shard = torch.load(path.parent / name, map_location="cpu", weights_only=True)
        if (not isinstance(shard, dict) or shard.get("format") != SHARD_FORMAT or shard.get("round") != rnd
                or shard.get("rows") != [a, b] or shard.get("fingerprint") != state.get("fingerprint")):
            raise ValueError(f"{name} is not the shard the checkpoint names")
        d = shard.get("delta")
        _check_rows(d, (b - a,) + tuple(item), float("inf"))
        s, e = max(a, lo), min(b, hi)
        out[s - lo:e - lo] = d[s - a:e - a]
    return out


def _check_rows(d: object, shape: tuple[int, ...], eps: float) -> None:
    if not isinstance(d, torch.Tensor) or tuple(d.shape) != tuple(shape) or d.dtype != torch.float32:
        raise ValueError(f"δ is not a float32 tensor of shape {tuple(shape)}")
    if not bool(torch.isfinite(d).all()):
        raise ValueError("δ holds NaN or infinite values")
    if d.numel() and float(d.abs().max()) > eps + 1e-6:
        raise ValueError(f"δ exceeds the budget ε = {eps * 255:.3g}/255")


__all__ = ["Context", "SINGLE", "WriterFailed", "current", "destroy", "is_writer", "launched", "setup_device",
           "check_search", "SurrogateStep", "shared_score", "save_checkpoint", "load_rows", "remove_checkpoint"]
