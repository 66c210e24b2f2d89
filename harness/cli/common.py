"""The typer app of the `harness` command and the options and helpers its command groups share.

The group modules (``harness/cli/<group>.py``) import this module and add their commands to ``app``;
``harness/cli/__init__.py`` imports the groups, so importing ``harness.cli`` gives the whole command.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

app = typer.Typer(
    help="Benchmark harness for post-training alignment of video diffusion models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

PresetOpt = Annotated[str, typer.Option("--preset", "-p", help="preset name or YAML file")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="override a preset field, e.g. --set pretrain.steps=100 (repeatable)"),
]


def fail(message: str) -> None:
    """Print ``message`` as an error and exit with status 2 (bad input)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def load_cli_preset(name: str, sets: list[str] | None, extra: list[dict] | None = None):
    """The preset ``name`` with the ``--set`` overrides, then ``extra``; a bad preset fails the command."""
    from harness.config import ConfigError, load_preset, parse_override

    try:
        return load_preset(name, [parse_override(s) for s in sets or []] + (extra or []))
    except ConfigError as exc:
        fail(str(exc))


def split_csv(text: str | None) -> list[str] | None:
    """The non-empty items of a comma-separated option; None when the option is not given."""
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


@app.callback()  # no docstring: typer would show it in place of the app's help
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s")
    from harness.weights import force_offline

    force_offline()  # no hub downloads at run time; `harness weights prefetch` uses plain HTTP on its own
