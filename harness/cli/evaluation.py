"""`harness eval` (the metric registry on a checkpoint, a run or videos) and `harness sample` (the oracle)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from harness.cli.common import PresetOpt, SetOpt, app, fail, load_cli_preset, split_csv
from harness.rundir import RunDir


@app.command("eval")
def eval_cmd(
    checkpoint: Annotated[Path | None, typer.Option(help="a model directory or a run checkpoint")] = None,
    run_dir: Annotated[Path | None, typer.Option("--run", help="a run directory: fill in missing metrics")] = None,
    videos: Annotated[Path | None, typer.Option(help="a folder of .mp4 files")] = None,
    conditions: Annotated[Path | None, typer.Option(help="with --videos: CSV or JSONL mapping each video to its "
                                                         "conditioning image and prompt (video, image, prompt); "
                                                         "needed by i2v_subject and i2v_background")] = None,
    metrics: Annotated[str | None, typer.Option(help="comma-separated metrics (default: the preset's)")] = None,
    out: Annotated[Path | None, typer.Option(help="results directory (not used with --run)")] = None,
    preset: PresetOpt = "tiny",
    fps: Annotated[float | None, typer.Option(help="frame rate of --videos (default: the preset's)")] = None,
    fvd_ref: Annotated[Path | None, typer.Option(help="folder of real videos: FVD with I3D features against "
                                                      "them (options: --set eval.backends.fvd.KEY=VALUE)")] = None,
    sets: SetOpt = None,
    replace: Annotated[bool, typer.Option("--replace", help="with --run and --metrics: replace the stored results "
                                                             "of those metrics under other identities (another "
                                                             "backend, set with --set eval.backends.M.KEY=VALUE)")]
    = False,
) -> None:
    """Evaluate a checkpoint, a run, or a folder of videos with the metric registry.

    Metric groups expand to their members with upstream backends, e.g. ``--metrics vbench-i2v,fvd``. With
    ``--run``, ``--set`` may only choose backends (``eval.backends.METRIC.KEY=VALUE``): the run keeps its own
    preset otherwise; ``--replace`` swaps the named metrics' stored results for the re-scored ones."""
    from harness.evaluate import evaluate_checkpoint, evaluate_run, evaluate_videos
    from harness.rundir import RunDirError

    chosen = [x for x in (checkpoint, run_dir, videos) if x is not None]
    if len(chosen) != 1:
        fail("give exactly one of --checkpoint, --run, --videos")
    if conditions is not None and videos is None:
        fail("--conditions maps the videos of --videos to their images; give --videos too")
    names = split_csv(metrics)
    if names:
        from metrics.registry import METRIC_GROUPS, list_metrics

        known = {s.name for s in list_metrics()} | set(METRIC_GROUPS)
        unknown = [n for n in names if n not in known]
        if unknown:
            fail(f"unknown metric(s) {', '.join(unknown)}; registered: {', '.join(sorted(known))}")
    if replace and run_dir is None:
        fail("--replace re-scores the metrics of a run: give --run")
    fvd_sets = [] if fvd_ref is None else [{"eval": {"backends": {"fvd": {"features": "i3d", "ref": str(fvd_ref)}}}}]
    if run_dir is not None:
        backends = _run_backends(sets)
    else:
        cfg = load_cli_preset(preset, sets, fvd_sets)
    try:
        if run_dir is not None:
            if not RunDir(run_dir).manifest.is_file():
                fail(f"{run_dir} holds no run (no run.json)")
            typer.echo(f"results: {evaluate_run(run_dir, names, backends=backends, replace=replace)}")
        elif checkpoint is not None:
            typer.echo(f"results: {evaluate_checkpoint(cfg, checkpoint, out or checkpoint / 'eval', names)}")
        else:
            db, skipped = evaluate_videos(cfg, videos, out or Path("runs/eval-videos"), names, fps,
                                          conditions=conditions)
            if skipped:
                typer.secho(f"skipped {len(skipped)} unreadable video(s): {', '.join(skipped)}",
                            fg=typer.colors.YELLOW, err=True)
            typer.echo(f"results: {db}")
    except (FileNotFoundError, ValueError, RunDirError) as exc:
        fail(str(exc))


def _run_backends(sets: list[str] | None) -> dict[str, dict]:
    """The metric backends of ``--set eval.backends.METRIC.KEY=VALUE`` for ``harness eval --run``; any other
    field fails: a run is evaluated with the preset it recorded."""
    from harness.config import ConfigError, parse_override

    out: dict[str, dict] = {}
    for text in sets or []:
        try:
            tree = parse_override(text)
        except ConfigError as exc:
            fail(str(exc))
        backends = (tree.get("eval") or {}).get("backends") if isinstance(tree.get("eval"), dict) else None
        if list(tree) != ["eval"] or list(tree["eval"]) != ["backends"] or not isinstance(backends, dict) or \
                not all(isinstance(v, dict) for v in backends.values()):
            fail(f"--set {text}: with --run only a metric's backend can be set (eval.backends.METRIC.KEY=VALUE); "
                 "the run keeps the rest of the preset it recorded")
        for name, opts in backends.items():
            out[name] = {**out.get(name, {}), **opts}
    return out


@app.command()
def sample(
    preset: PresetOpt = "tiny",
    out: Annotated[Path, typer.Option(help="where videos and scores go")] = Path("runs/samples"),
    checkpoint: Annotated[Path | None, typer.Option(help="model directory (default: the preset's base)")] = None,
    num: Annotated[int | None, typer.Option("--num", "-n", help="eval conditions (default: preset eval size)")] = None,
    sets: SetOpt = None,
) -> None:
    """Sample the fixed eval conditions, write mp4s, and judge them with the world's oracle."""
    from harness.sample_eval import sample_and_judge

    cfg = load_cli_preset(preset, sets)
    try:
        summary = sample_and_judge(cfg, out, checkpoint=checkpoint, num=num)
    except (FileNotFoundError, PermissionError) as exc:
        fail(str(exc))
    typer.echo(json.dumps(summary, indent=2))
