"""``python -m unlearnable`` and ``torchrun --nproc_per_node=N -m unlearnable ...``: the command-line app
(``unlearnable.cli``) as a module, the form torchrun starts (``unlearnable.distributed``).

Under torchrun only rank 0 talks to the terminal: the other ranks run as with ``-q`` (no progress bars;
notices and errors still show), and the commands print their results on rank 0 only.
"""
from __future__ import annotations

import os
import sys

from unlearnable.cli.main import app
from unlearnable.distributed import launched


def main() -> None:
    args = sys.argv[1:]
    if launched() and int(os.environ.get("RANK", "0")) > 0:
        args = ["-q", *args]
    app(args=args, prog_name="unlearnable")


if __name__ == "__main__":
    main()
