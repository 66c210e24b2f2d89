"""`harness list`: registered methods, metrics and presets."""

from __future__ import annotations

import typer

from harness.cli.common import PresetOpt, app, fail, load_cli_preset

list_app = typer.Typer(help="List registered methods, metrics or presets.", no_args_is_help=True)
app.add_typer(list_app, name="list")


@list_app.command("methods")
def list_methods(preset: PresetOpt = "tiny") -> None:
    """Registered alignment methods, and the preset's named variants of them."""
    from trainers.registry import MethodLoadError, available_methods, get_trainer

    try:
        names = available_methods()
    except MethodLoadError as exc:  # a broken method module is named, not left out of the list
        fail(str(exc))
    for name in names:
        typer.echo(f"{name}\t{get_trainer(name).description}")
    for name, section in load_cli_preset(preset, None).methods.items():
        if section.get("trainer"):
            changes = ", ".join(f"{k}={v}" for k, v in section.items() if k != "trainer")
            typer.echo(f"{name}\tvariant of {section['trainer']}: {changes}")


@list_app.command("metrics")
def list_metrics_cmd() -> None:
    """Registered metrics with direction, kind and needed weights."""
    from metrics.registry import list_metrics

    for spec in list_metrics():
        arrow = "higher" if spec.higher_is_better else "lower"
        weights = ", ".join(spec.weights) or "none"
        typer.echo(f"{spec.name}\t{spec.kind}\t{arrow} is better\tweights: {weights}\t{spec.description}")


@list_app.command("presets")
def list_presets() -> None:
    """Presets shipped with the harness."""
    from harness.config import available_presets, load_preset

    for name in available_presets():
        typer.echo(f"{name}\t{load_preset(name).description}")
