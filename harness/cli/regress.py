"""`harness regress`: compare a run with a leaderboard."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from harness.cli.common import app, fail
from harness.rundir import RunDir


@app.command()
def regress(
    run_dir: Annotated[Path, typer.Argument(help="run directory to check")],
    leaderboard: Annotated[
        Path | None, typer.Option(help="leaderboard JSON (default: leaderboards/<preset>.json)")] = None,
    z: Annotated[float, typer.Option(help="noise band in standard errors; see `harness regress --help`")] = 3.0,
    update: Annotated[bool, typer.Option("--update", help="write the run as the new leaderboard (deliberately)")]
    = False,
    note: Annotated[str, typer.Option(help="with --update: why the leaderboard changes")] = "",
    show_all: Annotated[bool, typer.Option("--all", help="list every compared entry, not only those that moved")]
    = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the comparison as JSON")] = None,
) -> None:
    """Compare a run with a leaderboard metric by metric; exit 1 on a regression beyond noise.

    Noise per (method, step, metric): the seed spread of the leaderboard and the bootstrap intervals
    of both (harness/regress.py). Worse than the reference by more than z standard errors is a
    regression; metrics without a direction that move are reported, not failed.
    """
    from harness import regress as rg
    from harness.store import StoreError

    try:
        path = leaderboard or Path("leaderboards") / f"{_run_preset(run_dir)}.json"
        if update:
            try:
                old = rg.read_leaderboard(path) if path.exists() else None
            except rg.LeaderboardError as exc:
                if not exc.replaceable:  # not a leaderboard of ours: never overwrite it
                    raise
                typer.secho(f"warning: not comparing with the old leaderboard: {exc}; replacing it",
                            fg=typer.colors.YELLOW, err=True)
                old = None
            if old is not None:
                typer.echo(rg.format_comparison(rg.compare(old, run_dir, z), show_all))
            board = rg.build_leaderboard(run_dir, note)
            if warning := rg.unfinished_warning(rg.run_unfinished(run_dir)):
                typer.secho(f"warning: recording {warning}", fg=typer.colors.YELLOW, err=True)
            rg.write_leaderboard(board, path)
            typer.echo(f"leaderboard written: {path}")
            return
        cmp = rg.compare(rg.read_leaderboard(path), run_dir, z)
        unfinished = rg.unfinished_warning(rg.run_unfinished(run_dir))
    except (rg.LeaderboardError, StoreError) as exc:  # bad input: exit 2, never 1 (a regression)
        fail(str(exc))
    typer.echo(f"{run_dir} against {path} (z = {z:g})")
    if unfinished:
        typer.echo(f"note: {unfinished}")
    typer.echo(rg.format_comparison(cmp, show_all))
    if json_out:
        json_out.write_text(cmp.table.to_json(orient="records", indent=1))
    if not cmp.ok:
        raise typer.Exit(1)


def _run_preset(run_dir: Path) -> str:
    from harness.regress import run_manifest

    if not RunDir(run_dir).manifest.exists():
        fail(f"{run_dir} has no run.json; pass --leaderboard explicitly")
    preset = run_manifest(run_dir).get("preset")
    return (preset.get("name") if isinstance(preset, dict) else preset) or "tiny"
