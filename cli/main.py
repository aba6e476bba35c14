"""The ``unlearnable`` app: global options (``--version``, ``-q``, ``-v``) and the verbs, each in its
own module of this package."""
from __future__ import annotations

import typer

from . import attack, protect, protect_dataset, train, verify
from .common import set_verbosity

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_enable=False,
                  context_settings={"max_content_width": 120, "help_option_names": ["-h", "--help"]},
                  help="Make images unlearnable with error-minimizing noise, and verify the protection.")


def _version(value: bool) -> None:
    if value:
        import torch

        from unlearnable import __version__
        typer.echo(f"unlearnable {__version__} (torch {torch.__version__})")
        raise typer.Exit()


@app.callback()
def options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="print the version and exit"),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="no progress: results, notices and errors only"),
    verbose: int = typer.Option(0, "-v", "--verbose", count=True, help="also the library's log (-vv: debug)"),
) -> None:
    """Make images unlearnable with error-minimizing noise, and verify the protection."""
    set_verbosity(quiet, verbose)


app.command("protect")(protect.protect_cmd)
app.command("protect-dataset")(protect_dataset.protect_dataset_cmd)
app.command("verify")(verify.verify_cmd)
app.command("verify-photos")(verify.verify_photos_cmd)
app.command("train")(train.train_cmd)
app.command("train-surrogate")(train.train_surrogate_cmd)
app.command("models")(train.models_cmd)
app.add_typer(attack.app, name="attack")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
