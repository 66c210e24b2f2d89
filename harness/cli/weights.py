"""`harness weights`: the local weight cache of the metric backends."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from harness.cli.common import app, fail

weights_app = typer.Typer(help="The local weight cache of the metric backends (the only network access).",
                          no_args_is_help=True)
app.add_typer(weights_app, name="weights")


@weights_app.command("status")
def weights_status() -> None:
    """Every manifest file: present, missing or corrupt, and whether it is upstream or random-init."""
    from harness.weights import cache_root, status

    typer.echo(f"cache: {cache_root()} (set $HARNESS_WEIGHTS to move it)")
    rows = status()
    for r in rows:
        colour = {"ok": typer.colors.GREEN, "missing": typer.colors.YELLOW}.get(r["state"], typer.colors.RED)
        origin = f" [{r['origin']}]" if r["origin"] else ""
        typer.secho(f"{r['state']:8s}{origin:20s} {r['name']:22s} {r['path']:45s} used by {r['used_by']}", fg=colour)
        if r.get("detail"):
            typer.echo(f"          {r['detail']}")
    missing = [r["name"] for r in rows if r["state"] != "ok"]
    if missing:
        typer.echo(f"fetch with: harness weights prefetch {' '.join(missing)}")


@weights_app.command("prefetch")
def weights_prefetch(
    names: Annotated[list[str] | None, typer.Argument(help="manifest names (default: all)")] = None,
    source: Annotated[Path | None, typer.Option("--from", help="copy from a folder of upstream files "
                                                               "instead of downloading")] = None,
) -> None:
    """Download (or copy) weight files into the cache and check their sha256."""
    from harness.weights import WeightsError, prefetch

    try:
        prefetch(names, source_dir=source, log=typer.echo)
    except (WeightsError, OSError) as exc:
        fail(str(exc))


@weights_app.command("pin")
def weights_pin(
    name: Annotated[str, typer.Argument(help="manifest name, e.g. i3d_torchscript")],
    sha256: Annotated[str, typer.Option("--sha256", help="the file's sha256, checked by you against a source "
                                                         "you trust")],
) -> None:
    """Pin the sha256 of a file whose upstream publishes none: needed before a TorchScript file
    (which can run code when loaded) is used. The cached file must have exactly this digest."""
    from harness.weights import WeightsError, pin

    try:
        pin(name, sha256, log=typer.echo)
    except WeightsError as exc:
        fail(str(exc))


@weights_app.command("init-random")
def weights_init_random(
    names: Annotated[list[str] | None, typer.Argument(help="manifest names (default: every implemented one)")] = None,
    force: Annotated[bool, typer.Option("--force", help="replace real files too")] = False,
) -> None:
    """Write random-initialised files in the upstream layouts, for dry runs without the real weights.
    Every number computed from them is stored under an identity marked random-weights."""
    from harness.weights import WeightsError, init_random

    try:
        init_random(names, force=force, log=typer.echo)
    except WeightsError as exc:
        fail(str(exc))
