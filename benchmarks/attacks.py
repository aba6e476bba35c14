"""The three attacks of issue 14 in one run, one JSON: the interaction-reduced transfer attack
(``attacks_transfer.py``), NP-Attack against NES (``attacks_blackbox.py``) and the adversarial interaction
attack on skeletons (``attacks_skeleton.py``), each with its own configuration of the same name.

Usage: ``python3 benchmarks/attacks.py --config cpu [--parts transfer,blackbox,skeleton]``. ``cpu`` is
sized for 2 cores (measured one part at a time on this project's 2-core machine while it was shared
with other jobs, load average 8-13: transfer 1,664 s, black-box 685 s, skeleton 332 s wall, 45 minutes
together; less on an idle machine); ``gpu`` is each part's paper-scale configuration (never run here).
Run the parts one after another, never beside another torch job: the figures include timings.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

PARTS = {"transfer": "attacks_transfer", "blackbox": "attacks_blackbox", "skeleton": "attacks_skeleton"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated: " + ", ".join(PARTS))
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    out: dict = {"benchmark": "attacks", "config": args.config}
    t0 = time.perf_counter()
    for part in [p.strip() for p in args.parts.split(",") if p.strip()]:
        if part not in PARTS:
            sys.exit(f"unknown part {part!r}; choose from {', '.join(PARTS)}")
        out[part] = importlib.import_module(PARTS[part]).run(args.config)
    out["wall_seconds"] = time.perf_counter() - t0
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
