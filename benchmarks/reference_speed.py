"""Speed of the noise search side by side with the official code (issue 16, part 2).

Compares one round of sample-wise error-minimising noise (Huang et al., "Unlearnable Examples",
ICLR 2021, arXiv 2101.04898, Eq. 2 solved by alternation) between

- the reference: ``perturbation.py`` of HanxunH/Unlearnable-Examples (MIT, commit f347155, in
  ``../shared/reference/Unlearnable-Examples``), run unmodified as an external program; and
- this project: ``unlearnable.noise.minmin.error_minimizing_noise`` (the one engine, on a
  ``DatasetProblem``), called in this process,

on the same machine, device and CIFAR-10 images, with the paper's settings on both sides: ResNet-18
(ours: ``resnet18`` of the registry; the reference: its ``configs/cifar10/resnet18.yaml``), sample-wise,
ε = 8/255, 20 PGD steps of 0.8/255, 10 surrogate SGD steps per round (lr 0.1, momentum 0.9, weight
decay 5e-4, grad clip 5), the same batch for training, PGD and the stop test, stop at error ≤ 0.01
on the perturbed data. A round is: 10 training batches, 20 PGD steps over every image, the stop test.

Measured, per side: wall seconds of every round (ours: the engine's round log; the reference: the
time stamps of its own log lines, from "Searching Samplewise Perturbation" to each "Loss: … Acc: …"
line, which end its rounds), the surrogate's accuracy after each round, and the rounds to reach the
stop threshold, or that the round cap came first (the reference never stops by itself below the
threshold, so it is ended after the cap's last round). Reported: seconds per round (mean of all
rounds, and of rounds after the first), the ratio ours / reference (below 1: ours is faster), and
throughput in image·steps per second = images × PGD steps / seconds per round (whole rounds,
training and stop test included). The 1-minute load average is recorded at the start and the end.

GPU habits of the issue, each measured alone on one batch of random images with the full ResNet-18
(seconds per call after warm-up, images per second): ``channels_last`` against NCHW for a PGD step
(the engine's ``PGD.step``: gradient to the input, fp32) and a surrogate SGD step
(``StandardStep``); on CUDA also bf16 autocast for the training step (never for the noise search,
see ``unlearnable.noise.minmin``), larger PGD batches, and ``torch.compile`` of the PGD step
(compile time and steady speed). On CPU only ``channels_last`` is measured (``--habits all`` forces
the rest; bf16 and compilation are GPU habits, and larger batches change little on two cores).

Configurations (``--config``; every value can be overridden by its option):

- ``cpu``: 120 images (a balanced subset of the CIFAR-10 training set, 12 per class), batch 128
  (so every batch is the whole subset, on both sides), 2 rounds per side, CPU, the reference's
  loader without workers. Sized for about 15 minutes on two uncontended cores for both sides'
  rounds and the habit check: a round of the full ResNet-18 is 120 × 20 PGD image-steps plus
  10 × 120 training images (measured on this 2-core machine while shared, load average about 10:
  10-15 s per PGD or training step of 128 images, i.e. about 6 minutes a round; on the quiet
  machine, measured: 46-57 s a round on either side). Two rounds because the first carries one-off costs (allocator growth,
  oneDNN kernel choice) on both sides; 256-512 images would not fit the budget. The stop threshold
  is out of reach in two rounds: "rounds to threshold" reads null.
- ``gpu``: all 50,000 training images, the paper's batch 512 (its experiment script's default), 3
  rounds per side, CUDA, 8 loader workers for the reference (its default), habits at batch 512.
  Three rounds of both sides plus the habits should fit one 10-minute call on an H200 (an
  estimate: no device has run it yet). CIFAR-10 (178 MB) does not fit the 64 MiB that travels to
  a lent device, so the device command below searches a 16,000-image balanced subset exported
  beforehand with ``--export-data``, for 5 rounds (a round there is 16/50 of a full round's work;
  the throughput, not the seconds per round, is the comparable figure). The JSON is rewritten
  after every phase, so a call cut at its limit still returns what was measured.

Setting up the reference's python (once; torch and torchvision come from the system)::

    python3 -m venv --system-site-packages /work/refspeed-venv
    /work/refspeed-venv/bin/pip install mlconfig==0.1.0 pandas scikit-learn tqdm

(``mlconfig`` must be 0.1.0: later versions lack the ``set_immutable`` the reference calls.) The
reference is started with ``benchmarks/reference_harness`` first on its ``PYTHONPATH``; its
``sitecustomize.py`` skips torchvision's md5 check of the CIFAR-10 files (the subset has other
bytes) and replaces the reference's ``util.accuracy``, which fails on current torch, by the same
computation with ``reshape``. Nothing else of the reference is changed or copied.

Usage::

    python3 benchmarks/reference_speed.py --config cpu --reference-python /work/refspeed-venv/bin/python \
        --out benchmarks/results/reference-speed-cpu.json

GPU, as one device call: ``benchmarks/device_session.sh`` (``prepare`` here, then ``run`` on the
device with ``carry=[".whl"]``). ``.whl/`` is git-ignored; in it travel mlconfig (a 5 kB pure-python
wheel), a 16,000-image balanced subset with 2,000 test images (exported with ``--export-data``) and a
copy of the reference (2.8 MB; ``../shared`` does not travel), under the 64 MiB limit with the tree.
The package is copied onto ``PYTHONPATH``, since the device's python has no editable install.

Prints one JSON object (also written to ``--out`` after every phase, so a killed run keeps what it
measured). Deviations from the paper's protocol, on purpose: a round cap on both sides (the
reference would loop until the threshold); a CIFAR-10 subset on CPU; the reference's model is
initialised from torch's unseeded CPU generator (its ``--seed`` seeds CUDA and NumPy only), ours
from ``--seed``: the two surrogates differ, their speed does not.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import pickle
import platform
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from unlearnable.attacks.pgd import PGD
from unlearnable.data.datasets import ImageTensors, balanced_subset, load_dataset
from unlearnable.data.storage import write_atomic
from unlearnable.device import resolve_device
from unlearnable.noise.minmin import MinMinConfig, error_minimizing_noise
from unlearnable.train.loop import StandardStep, build_model

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference" / "Unlearnable-Examples"
HARNESS = Path(__file__).resolve().parent / "reference_harness"

# The paper's sample-wise setting (scripts/cifar10/min-min-noise/samplewise-noise/exp_setting.sh and
# perturbation.py's defaults), shared by both sides.
EPS_255, STEP_255, STEPS, TRAIN_STEPS, STOP_ERROR = 8, 0.8, 20, 10, 0.01

CONFIGS = {
    "cpu": {"images": 120, "batch_size": 128, "rounds": 2, "device": "cpu", "reference_workers": 0,
            "habit_batch": 128, "reference_timeout": 3600.0},
    "gpu": {"images": 50000, "batch_size": 512, "rounds": 3, "device": "cuda", "reference_workers": 8,
            "habit_batch": 512, "reference_timeout": 300.0},
}
TEST_IMAGES = 100   # the reference builds a test loader it never uses in the sample-wise search

_LOSS_LINE = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) Loss: (\S+) Acc: (\S+)%")
_START_LINE = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) =+Searching Samplewise Perturbation")


def select_images(root: str | None, n: int, seed: int) -> ImageTensors:
    """``n`` CIFAR-10 training images: all of them if ``n`` covers the set, else a balanced subset
    (``balanced_subset``, seeded), in index order. uint8 (n, 3, 32, 32)."""
    full = load_dataset("cifar10", "train", root)
    if n >= len(full):
        return full
    return full.subset(balanced_subset(full.labels, n, seed))


def write_cifar_layout(train: ImageTensors, test: ImageTensors, dest: Path) -> Path:
    """Write ``train`` (in its order, over the five batch files) and ``test`` as
    ``dest/cifar-10-batches-py``, the python layout torchvision's ``CIFAR10`` and this package read.
    Benchmark data in a temp or export folder, not a package output."""
    base = dest / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)

    def dump(name: str, images: torch.Tensor, labels: torch.Tensor) -> None:
        rows = images.cpu().numpy().reshape(len(images), -1)          # CHW per row, as the originals
        with open(base / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": rows, "labels": labels.cpu().tolist(),
                         "filenames": [f"{name}_{i}.png" for i in range(len(rows))]}, f)

    chunks = np.array_split(np.arange(len(train)), 5)
    for i, idx in enumerate(chunks, 1):
        t = torch.from_numpy(idx)
        dump(f"data_batch_{i}", train.images[t], train.labels[t])
    dump("test_batch", test.images, test.labels)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(train.classes), "num_cases_per_batch": 10000, "num_vis": 3072}, f)
    return base


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def run_ours(train: ImageTensors, batch_size: int, rounds: int, steps: int, train_steps: int,
             device: torch.device, seed: int) -> dict:
    """The project's engine on ``train``: per-round seconds, accuracy, rounds to the threshold."""
    t0 = time.perf_counter()
    model = build_model("resnet18", train.num_classes, 3, seed, device)
    cfg = MinMinConfig(mode="samplewise", eps=EPS_255 / 255, step_size=STEP_255 / 255, steps=steps,
                       train_steps=train_steps, batch_size=batch_size, stop_accuracy=1 - STOP_ERROR,
                       max_rounds=rounds, seed=seed)
    result = error_minimizing_noise(model, train, cfg)
    _sync(device)
    return {"round_seconds": [h.seconds for h in result.history],
            "round_accuracy": [h.surrogate_acc for h in result.history],
            "rounds_run": result.rounds,
            "rounds_to_threshold": result.rounds if result.converged else None,
            "wall_seconds_with_setup": time.perf_counter() - t0}


def reference_versions(python: str) -> dict:
    """Versions of the reference's python and packages; raises SystemExit with the set-up steps
    when a package the reference needs is missing."""
    code = ("import json, sys, torch, torchvision, mlconfig, pandas, sklearn, tqdm; "
            "from importlib.metadata import version; "
            "print(json.dumps({'python': sys.version.split()[0], 'torch': torch.__version__, "
            "'torchvision': torchvision.__version__, 'mlconfig': version('mlconfig')}))")
    r = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"the reference's python {python} lacks a package it needs:\n{r.stderr.strip()}\n"
                         "set it up as this script's docstring says (mlconfig==0.1.0 pandas scikit-learn tqdm)")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _stamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _reader(stream, lines: queue.Queue, log) -> None:
    """Put (arrival time, text) of every line of ``stream`` on ``lines`` (tqdm's carriage-return
    updates split too), copy the bytes to ``log``; None at the end."""
    for raw in iter(stream.readline, b""):
        log.write(raw)
        now = time.time()
        for part in raw.decode("utf-8", "replace").replace("\r", "\n").splitlines():
            lines.put((now, part))
    lines.put(None)


def _end(proc: subprocess.Popen) -> None:
    """Stop the reference's process group (it was started in its own session)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_reference(python: str, ref_dir: Path, data_root: Path, work: Path, n: int, batch_size: int,
                  rounds: int, steps: int, train_steps: int, workers: int, device: torch.device,
                  seed: int, timeout: float) -> dict:
    """``perturbation.py`` on the data at ``data_root``: ended after ``rounds`` rounds (or ``timeout``
    seconds), unless it reaches the stop threshold first and exits by itself."""
    cmd = [python, "-u", "perturbation.py", "--config_path", "configs/cifar10", "--version", "resnet18",
           "--exp_name", str(work / "reference-exp"), "--train_data_type", "CIFAR10",
           "--test_data_type", "CIFAR10", "--train_data_path", str(data_root), "--test_data_path", str(data_root),
           "--noise_shape", str(n), "3", "32", "32", "--epsilon", str(EPS_255), "--num_steps", str(steps),
           "--step_size", str(STEP_255), "--attack_type", "min-min", "--perturb_type", "samplewise",
           "--universal_stop_error", str(STOP_ERROR), "--train_step", str(train_steps),
           "--train_batch_size", str(batch_size), "--eval_batch_size", str(batch_size),
           "--num_of_workers", str(workers), "--seed", str(seed)]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(HARNESS), os.environ.get("PYTHONPATH")) if p))
    if device.type != "cuda":
        env["CUDA_VISIBLE_DEVICES"] = ""     # the reference takes the GPU whenever it sees one
    elif device.index is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(device.index)
    log_path = work / "reference.log"
    t0 = time.time()
    start, ends, accs, losses, arrivals, tail = None, [], [], [], [], []
    timed_out = False
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ref_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        lines: queue.Queue = queue.Queue()
        reader = threading.Thread(target=_reader, args=(proc.stdout, lines, log), daemon=True)
        reader.start()
        try:
            while True:
                left = timeout - (time.time() - t0)
                if left <= 0:
                    timed_out = True
                    break
                try:
                    item = lines.get(timeout=min(left, 5.0))
                except queue.Empty:
                    continue
                if item is None:
                    break
                now, text = item
                tail = (tail + [text])[-40:]
                m = _START_LINE.search(text)
                if m and start is None:
                    start = _stamp(m.group(1))
                m = _LOSS_LINE.search(text)
                if m:
                    ends.append(_stamp(m.group(1)))
                    arrivals.append(now)
                    losses.append(float(m.group(2)))
                    accs.append(float(m.group(3)) / 100)
                    if len(ends) >= rounds:
                        if accs[-1] >= 1 - STOP_ERROR:   # at the threshold: let it finish by itself
                            try:
                                proc.wait(120)
                            except subprocess.TimeoutExpired:
                                pass
                        break
        finally:
            _end(proc)
            reader.join(10)
    exited = proc.returncode
    # Converged: it left the loop by itself (exit 0) after its last round, which it does only then.
    converged = exited == 0 and bool(ends)
    marks = [start] + ends if start is not None else []
    seconds = [b - a for a, b in zip(marks, marks[1:])]
    out = {"round_seconds": seconds, "round_accuracy": accs, "round_loss": losses, "rounds_run": len(ends),
           "rounds_to_threshold": len(ends) if converged else None,
           "wall_seconds_with_setup": time.time() - t0, "timed_out": timed_out,
           "ended_by_benchmark": exited != 0 or timed_out,
           "arrival_minus_log_stamp_s": [a - e for a, e in zip(arrivals, ends)], "command": cmd[1:]}
    if not seconds:
        out["log_tail"] = tail
    return out


def _time_call(fn, device: torch.device, warmup: int, reps: int) -> float:
    """Seconds per call of ``fn`` after ``warmup`` calls (device synchronised)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync(device)
    return (time.perf_counter() - t) / reps


def habits(device: torch.device, batch: int, which: str, seed: int) -> dict:
    """Each GPU habit of the issue alone, on one batch of random images and the full ResNet-18."""
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(batch, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    base = build_model("resnet18", 10, 3, seed, device)
    warmup, reps = (1, 2) if device.type == "cpu" else (3, 10)
    out: dict = {"batch": batch, "warmup_calls": warmup, "timed_calls": reps}

    def pgd_call(model, x):
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        pgd = PGD(model, eps=EPS_255 / 255, alpha=STEP_255 / 255, steps=1, minimize=True, amp=False)
        d = torch.zeros_like(x)
        return lambda: pgd.step(x, y, d)

    def train_call(model, x, amp):
        model.train()
        for p in model.parameters():
            p.requires_grad_(True)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        step = StandardStep(grad_clip=5.0, amp=amp)
        return lambda: step(model, opt, x, y)

    def rate(seconds: float, n: int = batch) -> dict:
        return {"seconds_per_call": seconds, "images_per_second": n / seconds}

    fmt = {}
    for name, mf in (("channels_last", torch.channels_last), ("nchw", torch.contiguous_format)):
        model = copy.deepcopy(base).to(memory_format=mf)
        x = x0.contiguous(memory_format=mf)
        fmt[name] = {"pgd_step": rate(_time_call(pgd_call(model, x), device, warmup, reps)),
                     "train_step": rate(_time_call(train_call(model, x, False), device, warmup, reps))}
    fmt["speedup_channels_last_pgd"] = (fmt["nchw"]["pgd_step"]["seconds_per_call"]
                                        / fmt["channels_last"]["pgd_step"]["seconds_per_call"])
    fmt["speedup_channels_last_train"] = (fmt["nchw"]["train_step"]["seconds_per_call"]
                                          / fmt["channels_last"]["train_step"]["seconds_per_call"])
    out["channels_last"] = fmt
    if which == "auto" and device.type != "cuda":
        note = "GPU habit: not measured on CPU (--habits all forces it)"
        out.update(bf16_training=note, large_pgd_batches=note, torch_compile=note)
        return out
    x = x0.contiguous(memory_format=torch.channels_last)
    fp32 = _time_call(train_call(copy.deepcopy(base), x, False), device, warmup, reps)
    bf16 = _time_call(train_call(copy.deepcopy(base), x, True), device, warmup, reps)
    note = "surrogate/victim training step only; the noise search stays fp32"
    if device.type != "cuda":
        note += "; autocast is a no-op off CUDA (unlearnable.device.autocast): both runs are fp32 here"
    out["bf16_training"] = {"fp32": rate(fp32), "bf16_autocast": rate(bf16), "speedup": fp32 / bf16, "note": note}
    sizes = {}
    for b in (batch, 2 * batch, 4 * batch, 8 * batch):
        xb = torch.rand(b, 3, 32, 32, generator=gen).to(device).contiguous(memory_format=torch.channels_last)
        yb = torch.randint(0, 10, (b,), generator=gen).to(device)
        model = copy.deepcopy(base)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        pgd = PGD(model, eps=EPS_255 / 255, alpha=STEP_255 / 255, steps=1, minimize=True, amp=False)
        d = torch.zeros_like(xb)
        try:
            sizes[str(b)] = rate(_time_call(lambda: pgd.step(xb, yb, d), device, warmup, reps), b)
        except torch.OutOfMemoryError as e:
            sizes[str(b)] = {"error": f"out of memory: {e}".splitlines()[0]}
            break
    out["large_pgd_batches"] = sizes
    try:
        model = copy.deepcopy(base)
        compiled = torch.compile(model)
        call = pgd_call(compiled, x)
        _sync(device)
        t = time.perf_counter()
        call()
        _sync(device)
        first = time.perf_counter() - t
        eager = out["channels_last"]["channels_last"]["pgd_step"]["seconds_per_call"]
        steady = _time_call(call, device, warmup, reps)
        out["torch_compile"] = {"first_call_seconds": first, "pgd_step": rate(steady), "speedup": eager / steady}
    except Exception as e:   # no compiler tool chain, unsupported backend: recorded, not fatal
        out["torch_compile"] = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
    return out


def summarise(ours: dict | None, ref: dict | None, n: int, steps: int) -> dict:
    """Seconds per round (all rounds, and after the first), throughput and the ratio ours / reference."""
    def side(r: dict | None) -> dict | None:
        if not r or not r["round_seconds"]:
            return None
        s = r["round_seconds"]
        after = s[1:]
        return {"seconds_per_round": _mean(s), "seconds_per_round_after_first": _mean(after),
                "image_steps_per_second": n * steps / _mean(s),
                "image_steps_per_second_after_first": n * steps / _mean(after) if after else None}
    a, b = side(ours), side(ref)
    out = {"ours": a, "reference": b}
    if a and b:
        out["ratio_seconds_per_round_ours_over_reference"] = a["seconds_per_round"] / b["seconds_per_round"]
        out["throughput_ratio_ours_over_reference"] = a["image_steps_per_second"] / b["image_steps_per_second"]
        if a["seconds_per_round_after_first"] and b["seconds_per_round_after_first"]:
            out["ratio_seconds_per_round_after_first_ours_over_reference"] = (
                a["seconds_per_round_after_first"] / b["seconds_per_round_after_first"])
    return out


def machine(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    p.add_argument("--images", type=int, help="CIFAR-10 training images (balanced subset; 50000 = all)")
    p.add_argument("--batch-size", type=int, help="training, PGD and stop-test batch, both sides")
    p.add_argument("--rounds", type=int, help="round cap, both sides")
    p.add_argument("--device", help="cpu, cuda or cuda:N (both sides)")
    p.add_argument("--steps", type=int, default=STEPS, help="PGD steps per round (the paper's 20; lower only "
                   "to dry-run this script)")
    p.add_argument("--train-steps", type=int, default=TRAIN_STEPS, help="surrogate steps per round (paper: 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", help="where cifar-10-batches-py is (default: the package's data root)")
    p.add_argument("--reference-python", default=sys.executable,
                   help="python with the reference's packages (default: this python); see the docstring")
    p.add_argument("--reference-dir", default=str(REFERENCE))
    p.add_argument("--reference-workers", type=int, help="the reference's data-loader workers")
    p.add_argument("--reference-timeout", type=float, help="seconds before the reference is ended")
    p.add_argument("--habit-batch", type=int)
    p.add_argument("--habits", choices=["auto", "all", "none"], default="auto",
                   help="auto: channels_last on CPU, every habit on CUDA")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--order", choices=["ours-first", "reference-first"], default="ours-first",
                   help="which side runs first (on a shared machine, run both orders)")
    p.add_argument("--out", help="also write the JSON here (after every phase)")
    p.add_argument("--test-images", type=int, default=TEST_IMAGES, help="test images kept (first N; the "
                   "search never uses them, an exported set for benchmarks/effectiveness.py does)")
    p.add_argument("--export-data", metavar="DIR", help="only write the selected images as "
                   "DIR/cifar-10-batches-py (to carry a subset to a device) and exit")
    args = p.parse_args()
    cfg = dict(CONFIGS[args.config])
    for key in cfg:
        if getattr(args, key, None) is not None:
            cfg[key] = getattr(args, key)
    n = cfg["images"]
    train = select_images(args.data_root, n, args.seed)
    n = len(train)
    test = load_dataset("cifar10", "test", args.data_root)
    test = test.subset(torch.arange(min(args.test_images, len(test))))
    if args.export_data:
        base = write_cifar_layout(train, test, Path(args.export_data))
        print(json.dumps({"exported": str(base), "images": n}))
        return 0
    device = resolve_device(cfg["device"])
    result: dict = {
        "benchmark": "reference_speed", "config": args.config,
        "settings": {**cfg, "images": n, "order": args.order, "arch": "resnet18", "mode": "samplewise", "eps_255": EPS_255,
                     "step_size_255": STEP_255, "steps": args.steps, "train_steps": args.train_steps,
                     "stop_error": STOP_ERROR, "seed": args.seed,
                     "data": f"CIFAR-10 train, {'all' if n == 50000 else 'balanced subset'} ({n} images)"},
        "machine": machine(device), "load_average_1min_start": os.getloadavg()[0],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

    def save() -> None:
        if args.out:
            write_atomic(Path(args.out), (json.dumps(result, indent=2) + "\n").encode())

    if not args.skip_reference:
        result["reference_environment"] = reference_versions(args.reference_python)
    save()

    def ours() -> None:
        result["ours"] = run_ours(train, cfg["batch_size"], cfg["rounds"], args.steps, args.train_steps, device,
                                  args.seed)
        result["load_average_1min_after_ours"] = os.getloadavg()[0]
        save()

    def reference() -> None:
        if args.skip_reference:
            return
        work = Path(tempfile.mkdtemp(prefix="reference-speed-"))
        try:
            write_cifar_layout(train, test, work / "data")
            result["reference"] = run_reference(
                args.reference_python, Path(args.reference_dir), work / "data", work, n, cfg["batch_size"],
                cfg["rounds"], args.steps, args.train_steps, cfg["reference_workers"], device, args.seed,
                cfg["reference_timeout"])
        finally:
            shutil.rmtree(work, ignore_errors=True)
        result["load_average_1min_after_reference"] = os.getloadavg()[0]
        save()

    for side in ((ours, reference) if args.order == "ours-first" else (reference, ours)):
        side()
    result["summary"] = summarise(result["ours"], result.get("reference"), n, args.steps)
    save()
    if args.habits != "none":
        result["habits"] = habits(device, cfg["habit_batch"], args.habits, args.seed)
    result["load_average_1min_end"] = os.getloadavg()[0]
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    save()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
