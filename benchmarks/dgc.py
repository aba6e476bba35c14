"""DGC benchmark (Wang et al., NeurIPS 2021, arXiv 2102.10739). Prints one JSON object on stdout;
progress goes to stderr.

    python benchmarks/dgc.py                                  # both parts
    python benchmarks/dgc.py --parts planetoid                # the citation graphs only (about a minute on 2 cores)
    python benchmarks/dgc.py --parts victim --subset 2000     # the graph learner as a victim of protected CIFAR-10

planetoid: Cora and Citeseer, standard split. DGC at the official settings (run_citation.sh: Cora
    T 5.27 K 250, Citeseer T 3.78 K 300) and SGC with its own recipe (K = 2, tuned weight decay),
    ``--seeds`` classifier seeds each (mean ± population std, as the official script prints); a K
    sweep (SGC with T = K; DGC at the paper's T); propagation seconds (once per setting) and mean
    training seconds per seed. Paper: DGC 83.3 / 73.3, SGC 81.0 / 71.9.
victim: a balanced ``--subset`` of CIFAR-10 train protected by ``protect_dataset`` (SmallCNN
    surrogate, ε 8/255, at most ``--max-rounds`` rounds) sample-wise and class-wise; the graph victim
    (``unlearnable.graph.victim``) trained on the protected and on the same clean images, tested on a
    balanced ``--test-size`` subset of CIFAR-10 test, with raw-pixel and shipped-surrogate features,
    at its default T and at T = 0 (a linear probe, no graph). For reference, a SmallCNN trained by
    SGD (``--cnn-epochs``, the standard recipe) on the same images. "recovered" = (protected − chance)
    / (clean − chance), the project's measure; ≥ 0.5 counts as broken.
    Caveat: the shipped surrogate was trained on the clean CIFAR-10 training split, so its features
    have seen clean versions of these training images (not the test images).

Planetoid files: ``--root``, else ``../shared/data/planetoid`` beside this clone when it exists, else
the library's default (``$UNLEARNABLE_DATA_ROOT/planetoid``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from common import log

from unlearnable.data.datasets import balanced_subset, load_dataset
from unlearnable.data.protected import load_protected
from unlearnable.device import resolve_device
from unlearnable.graph.dgc import PAPER, PAPER_ACCURACY, SGC, SGC_PAPER_ACCURACY, DGCConfig, run_dgc
from unlearnable.graph.planetoid import load_planetoid
from unlearnable.graph.victim import GraphVictimConfig, graph_victim
from unlearnable.noise.minmin import MinMinConfig
from unlearnable.protect.dataset import protect_dataset
from unlearnable.train.loop import TrainConfig, build_model, train
from unlearnable.train.surrogate import load_surrogate

SWEEP_K = [1, 2, 4, 8, 16, 32, 64, 128, 256]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "planetoid"


def _short(r: dict) -> dict:
    keep = ("T", "K", "lr", "weight_decay", "epochs", "test_mean", "test_std", "test_acc", "val_acc",
            "propagate_seconds", "train_seconds_mean")
    return {k: r[k] for k in keep}


def planetoid_part(root: str | None, seeds: list[int], dev: torch.device) -> dict:
    out = {}
    for name in ("cora", "citeseer"):
        g = load_planetoid(name, root)
        res = {"nodes": g.num_nodes, "edges": g.num_edges, "self_loops": g.num_self_loops,
               "features": int(g.features.shape[1]), "classes": g.num_classes,
               "split": [len(g.train), len(g.val), len(g.test)],
               "paper": {"dgc": PAPER_ACCURACY[name], "sgc": SGC_PAPER_ACCURACY[name]}}
        res["dgc"] = _short(run_dgc(g, PAPER[name], seeds, dev))
        log(f"{name} DGC {res['dgc']['test_mean']:.4f} ± {res['dgc']['test_std']:.4f}")
        res["sgc"] = _short(run_dgc(g, SGC[name], seeds, dev))
        log(f"{name} SGC {res['sgc']['test_mean']:.4f} ± {res['sgc']['test_std']:.4f}")
        sweep = {"sgc": [], "dgc": []}
        for k in SWEEP_K:
            s = SGC[name]
            r = run_dgc(g, DGCConfig(T=float(k), K=k, lr=s.lr, weight_decay=s.weight_decay, epochs=s.epochs),
                        seeds, dev)
            sweep["sgc"].append(_short(r))
            p = PAPER[name]
            r2 = run_dgc(g, DGCConfig(T=p.T, K=k, lr=p.lr, weight_decay=p.weight_decay, epochs=p.epochs), seeds, dev)
            sweep["dgc"].append(_short(r2))
            log(f"{name} K={k}: SGC {r['test_mean']:.4f}  DGC(T={p.T}) {r2['test_mean']:.4f}")
        res["k_sweep"] = sweep
        out[name] = res
    return out


def _recovered(clean: float, protected: float, chance: float) -> float | None:
    return (protected - chance) / (clean - chance) if clean - chance > 1e-9 else None


def victim_part(args: argparse.Namespace, dev: torch.device) -> dict:
    work = Path(args.out or tempfile.mkdtemp(prefix="unlearnable-dgc-victim-"))
    train_all = load_dataset("cifar10", "train", args.data_root)
    test_all = load_dataset("cifar10", "test", args.data_root)
    test = test_all.subset(balanced_subset(test_all.labels, args.test_size, seed=0))
    chance = 1.0 / test.num_classes
    surrogate, _ = load_surrogate(device=dev)
    extractors = {"pixels": None, "surrogate": surrogate}
    base = GraphVictimConfig()
    settings = {"graph": base, "probe": GraphVictimConfig(T=0.0, K=0)}

    def graph_runs(images: torch.Tensor, labels: torch.Tensor) -> dict:
        out = {}
        for ename, ext in extractors.items():
            for sname, cfg in settings.items():
                r = graph_victim(images, labels, test.images, test.labels, ext, cfg, dev)
                out[f"{ename}/{sname}"] = {k: r[k] for k in ("test_acc", "train_acc", "homophily", "cross_edges",
                                                            "edges", "seconds")}
                log(f"  {ename}/{sname}: test {r['test_acc']:.4f} train {r['train_acc']:.4f} "
                    f"homophily {r['homophily']:.3f}")
        return out

    def cnn_run(data) -> dict | None:
        if args.cnn_epochs <= 0:
            return None
        model = build_model("smallcnn", data.num_classes, data.images.shape[1], 0, dev)
        hist = train(model, data, test, TrainConfig(epochs=args.cnn_epochs))
        accs = [h.test_acc for h in hist]
        log(f"  smallcnn/sgd: final {accs[-1]:.4f} peak {max(accs):.4f}")
        return {"final_test_acc": accs[-1], "peak_test_acc": max(accs), "epochs": args.cnn_epochs}

    result: dict = {"subset": args.subset, "test_size": len(test), "max_rounds": args.max_rounds,
                    "graph_config": asdict(base), "work": str(work),
                    "protected": {}}
    clean_indices = None
    for mode in args.modes:
        t0 = time.perf_counter()
        cfg = MinMinConfig(mode=mode, max_rounds=args.max_rounds)
        manifest = protect_dataset("cifar10", work / mode, cfg, "smallcnn", args.subset, args.data_root, str(dev),
                                   on_event=lambda kind, info: log(f"{mode} round {info['round']}: surrogate acc "
                                                                   f"{info['surrogate_acc']:.4f}")
                                   if kind == "round" else None)
        prot, _ = load_protected(work / mode)
        idx = torch.from_numpy(prot.meta["indices"]).long()
        if not torch.equal(prot.labels, train_all.labels[idx]):
            raise AssertionError("protected labels do not match the source subset")
        if clean_indices is None:
            clean_indices = idx
            clean = train_all.subset(idx)
            log("clean")
            result["clean"] = {"graph": graph_runs(clean.images, clean.labels), "cnn": cnn_run(clean)}
        elif not torch.equal(clean_indices, idx):
            raise AssertionError("the two modes protected different subsets")
        log(mode)
        entry = {"rounds": manifest["rounds"], "converged": manifest["converged"],
                 "final_surrogate_acc": manifest["final_surrogate_acc"],
                 "generation_seconds": manifest["generation_seconds"], "linf_levels": manifest["linf_levels"],
                 "graph": graph_runs(prot.images, prot.labels), "cnn": cnn_run(prot),
                 "wall_seconds": time.perf_counter() - t0}
        entry["recovered"] = {k: _recovered(result["clean"]["graph"][k]["test_acc"], v["test_acc"], chance)
                              for k, v in entry["graph"].items()}
        if entry["cnn"]:
            entry["recovered"]["smallcnn/sgd(final)"] = _recovered(result["clean"]["cnn"]["final_test_acc"],
                                                                   entry["cnn"]["final_test_acc"], chance)
        result["protected"][mode] = entry
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="planetoid,victim", help="comma-separated: planetoid, victim")
    p.add_argument("--root", default=None, help="Planetoid folder (holding raw/)")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--data-root", default=None, help="CIFAR-10 data root (default: the library's)")
    p.add_argument("--subset", type=int, default=2000, help="protected CIFAR-10 training images (balanced)")
    p.add_argument("--test-size", type=int, default=1000, help="clean CIFAR-10 test images (balanced)")
    p.add_argument("--max-rounds", type=int, default=30, help="cap on the min-min rounds")
    p.add_argument("--modes", default="samplewise,classwise")
    p.add_argument("--cnn-epochs", type=int, default=20, help="reference SmallCNN victim; 0 skips it")
    p.add_argument("--out", default=None, help="work folder for the protected sets (default: a temporary one)")
    args = p.parse_args()
    args.modes = args.modes.split(",")
    parts = args.parts.split(",")
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    root = args.root or (str(SHARED) if SHARED.exists() else None)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    result = {"benchmark": "dgc", "device": str(dev), "device_name": name,
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "load_average_1min": {"start": os.getloadavg()[0]}}
    t0 = time.perf_counter()
    if "planetoid" in parts:
        t = time.perf_counter()
        result["planetoid"] = planetoid_part(root, list(range(args.seeds)), dev)
        result["planetoid_seconds"] = time.perf_counter() - t
    if "victim" in parts:
        t = time.perf_counter()
        result["victim"] = victim_part(args, dev)
        result["victim_seconds"] = time.perf_counter() - t
    result["total_seconds"] = time.perf_counter() - t0
    result["load_average_1min"]["end"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
