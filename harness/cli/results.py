"""What a run's results store becomes: `harness report` (tables, plots, HTML) and `harness export` (files)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from harness.cli.common import app, fail
from harness.rundir import RunDir


@app.command("report")
def report_cmd(
    run_dir: Annotated[Path, typer.Option("--run", help="run directory")],
    ci: Annotated[bool, typer.Option("--ci", help="show 95% confidence intervals in tables")] = False,
) -> None:
    """Render tables (Markdown, LaTeX), plots and the HTML page of a run."""
    from harness.store import StoreError
    from reports.render import render_report

    if not RunDir(run_dir).results.is_file():
        fail(f"{run_dir} holds no run (no results.sqlite); run `harness run --out {run_dir}` first")
    try:
        index = render_report(run_dir, show_ci=ci)
    except StoreError as exc:
        fail(str(exc))
    typer.echo(f"report: {index}")


@app.command()
def export(
    results: Annotated[Path, typer.Option(help="a run or results directory holding results.sqlite")],
    fmt: Annotated[str, typer.Option("--format", help="csv, parquet or vbench (VBench-I2V's eval_results.json, "
                                                      "one per checkpoint, under <out>/vbench)")] = "csv",
    out: Annotated[Path | None, typer.Option(help="output directory (default: <results>/export)")] = None,
    identity: Annotated[list[str] | None, typer.Option(
        "--identity", help="with --format vbench: the stored identity to export where a checkpoint holds "
                           "several for one dimension, e.g. 'dynamic_degree[flow=raft]' (repeatable)")] = None,
) -> None:
    """Export every table of a results store to CSV or Parquet files, or its VBench dimensions as VBench JSON."""
    from harness.store import EXPORT_FORMATS, open_readonly

    formats = (*EXPORT_FORMATS, "vbench")
    if fmt not in formats:
        fail(f"unknown export format {fmt!r}; allowed: {', '.join(formats)}")
    if identity and fmt != "vbench":
        fail(f"--identity chooses what --format vbench exports; {fmt} exports every table whole, drop --identity")
    db = RunDir(results).results
    if not db.is_file():
        fail(f"no results store at {db}")
    left_out: list[str] = []
    try:
        with open_readonly(db) as store:  # StoreError is a ValueError: a bad file, like a bad --format
            if fmt == "vbench":
                from harness.vbench_export import export_vbench

                done = export_vbench(store, (out or results / "export") / "vbench", identity or ())
                paths, left_out = done.paths, done.left_out
            else:
                paths = store.export(out or results / "export", fmt)
    except ValueError as exc:
        fail(str(exc))
    typer.echo("\n".join(str(p) for p in paths))
    if left_out:
        typer.echo(f"not exported ({len(left_out)}):\n" + "\n".join(f"  {x}" for x in left_out))
