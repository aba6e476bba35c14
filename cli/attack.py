"""``unlearnable attack``: the attacks of the attack layer run on a model and data, as stress tests, with
their figures as JSON; one sub-command per attack, each in its own module."""
from __future__ import annotations

import typer

from . import attack_blackbox, attack_skeleton, attack_transfer

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Run an attack on a model and data and report what it achieves (JSON with -o).")

app.command("transfer")(attack_transfer.transfer_cmd)
app.command("black-box")(attack_blackbox.blackbox_cmd)
app.command("skeleton")(attack_skeleton.skeleton_cmd)
