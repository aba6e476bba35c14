"""What the benchmark scripts share: progress on stderr, where a figure was measured, and the
``--config NAME`` main that runs one configuration and prints its JSON record (with the wall time) on
stdout. Scripts run as ``python benchmarks/X.py`` find this module next to them."""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Callable

import torch


def log(msg: str) -> None:
    """Progress goes to stderr, so stdout stays one JSON object."""
    print(msg, file=sys.stderr, flush=True)


def runtime(dev: torch.device) -> dict:
    """Where a figure was measured: the device, its name, CPU threads and torch version."""
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.machine()
    return {"device": str(dev), "device_name": name, "threads": torch.get_num_threads(), "torch": torch.__version__}


def config_main(doc: str, configs: dict[str, dict], run: Callable[[dict], dict], default: str) -> None:
    """Parse ``--config`` (one of ``configs``), run it, print ``{"config": name, **record, "total_seconds"}``."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--config", choices=sorted(configs), default=default)
    args = p.parse_args()
    t0 = time.perf_counter()
    rec = {"config": args.config, **run(configs[args.config])}
    rec["total_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(rec, indent=2))
