"""`harness run` (train and evaluate methods) and `harness reproduce` (re-run a run, diff its numbers)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from harness.cli.common import PresetOpt, SetOpt, app, fail, load_cli_preset, split_csv


def _safe_names(option: str, names: list[str]) -> list[str]:
    """Names that become path parts (methods): refused before any work unless they match the safe pattern."""
    from harness.names import UnsafeNameError, check_name

    try:
        return [check_name(f"{option} name", n) for n in names]
    except UnsafeNameError as exc:
        fail(str(exc))


@app.command()
def run(
    methods: Annotated[str, typer.Option(help="comma-separated methods, e.g. sft or shift,fcrm,pgdpo,apo")] = "sft",
    preset: PresetOpt = "tiny",
    out: Annotated[Path, typer.Option(help="run directory")] = Path("runs/tiny"),
    steps: Annotated[int | None, typer.Option(help="training steps per method (default: the preset's)")] = None,
    eval_every: Annotated[int | None, typer.Option(help="evaluate every N steps (default: the preset's)")] = None,
    seeds: Annotated[str, typer.Option(help="comma-separated training seeds")] = "0",
    metrics: Annotated[str | None, typer.Option(help="comma-separated metrics (default: the preset's)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out")] = False,
    smoke: Annotated[
        bool, typer.Option("--smoke", help="a run of seconds: 2 steps, 4 eval videos, 4 sampler steps, "
                                            "8 rollout conditions (only where --set does not say otherwise)"),
    ] = False,
    sets: SetOpt = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    report: Annotated[bool, typer.Option(help="render the report at the end")] = True,
    extend_seeds: Annotated[bool, typer.Option("--extend-seeds", help="add --seeds to the seeds of the run in "
                                                                      "--out (recorded with the run)")] = False,
    extend_methods: Annotated[bool, typer.Option(
        "--extend-methods", help="add --methods to the methods of the run in --out (recorded with the run; the "
                                 "recorded methods' settings must be unchanged)")] = False,
    adopt: Annotated[bool, typer.Option("--adopt", help="continue a run directory that was copied or moved to "
                                                        "--out (its run id is kept)")] = False,
    jobs: Annotated[int | None, typer.Option(
        min=1, help="method-seed units trained at once, in worker processes (default: $HARNESS_JOBS, else the "
                    "preset's jobs); changes the wall time, never a number")] = None,
    log_with: Annotated[list[str] | None, typer.Option(
        "--log-with", metavar="TRACKER[,...]",
        help="experiment trackers: tensorboard, wandb (repeat or comma-separate; default: the preset's log_with, "
             "none); files under --out/trackers, W&B offline unless WANDB_MODE=online")] = None,
) -> None:
    """Train each method from the base model, evaluate every checkpoint, store every number."""
    from harness.config import parse_override
    from harness.runner import RunError, RunOptions, method_config
    from harness.runner import run as run_loop
    from harness.smoke import apply_smoke
    from trainers.registry import available_methods

    chosen = _safe_names("--methods", split_csv(methods) or [])
    try:
        seed_list = [int(s) for s in seeds.split(",")]
    except ValueError:
        fail(f"--seeds must be comma-separated integers >= 0, got {seeds!r}")
    user_cfg = load_cli_preset(preset, sets)  # the user's values are checked before --smoke shrinks anything
    variants = [m for m, section in user_cfg.methods.items() if section.get("trainer")]
    unknown = [m for m in chosen if m not in available_methods() and m not in variants]
    if unknown:
        fail(f"unknown method(s) {', '.join(unknown)}; registered: {', '.join(available_methods())}; "
              f"variants in preset {user_cfg.name!r}: {', '.join(variants) or 'none'}")
    try:
        opts = RunOptions(methods=chosen, seeds=seed_list, steps=steps, eval_every=eval_every,
                          metrics=split_csv(metrics), resume=resume, show_progress=progress,
                          extend_seeds=extend_seeds, extend_methods=extend_methods, adopt=adopt, jobs=jobs)
        for m in chosen:
            method_config(user_cfg, m, opts)
    except RunError as exc:
        fail(str(exc))
    from harness.tracking import TrackerError, check_trackers, parse_names

    trackers = parse_names(log_with if log_with is not None else user_cfg.log_with)
    try:
        check_trackers(trackers)  # before any work: a tracker that cannot log stops the run now, not at the end
    except TrackerError as exc:
        fail(str(exc))
    cfg = user_cfg
    if smoke:
        user = [parse_override(s) for s in sets or []]
        shrink, made, kept = apply_smoke(user_cfg, chosen, user, with_steps=steps is None and eval_every is None)
        cfg = load_cli_preset(preset, sets, shrink)
        log = logging.getLogger(__name__)
        log.info("--smoke set %s", ", ".join(made) or "nothing")
        if kept:
            log.info("--smoke kept your values of %s", ", ".join(k.split("=")[0] for k in kept))
    cfg = cfg.model_copy(update={"log_with": trackers})
    from harness.data.folder import VideoDataError
    from harness.distributed import DistributedConfigError, init_from_env
    from harness.extras import MissingExtraError

    try:
        main = init_from_env().is_main  # launched by accelerate / torchrun: join the group
        run_loop(cfg, out, opts)
    except (RunError, KeyError, FileNotFoundError, DistributedConfigError, VideoDataError,
            MissingExtraError) as exc:
        fail(str(exc).strip("'\""))
    if not main:
        return
    typer.echo(f"results: {out / 'results.sqlite'}")
    if report:
        from reports.render import render_report

        logging.getLogger(__name__).info("rendering the report")
        typer.echo(f"report: {render_report(out)}")


@app.command()
def reproduce(
    run_dir: Annotated[Path, typer.Argument(help="a run directory written by `harness run`")],
    out: Annotated[Path | None, typer.Option(help="where to re-run (default: <run_dir>-reproduced)")] = None,
    atol: Annotated[float, typer.Option(help="tolerated |difference| (default 0: bit-identical)")] = 0.0,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = False,
) -> None:
    """Re-run a run from its manifest (run.json) and diff every stored number; exit 1 if any differs."""
    from harness.extras import MissingExtraError
    from harness.reproduce import format_diff
    from harness.reproduce import reproduce as rerun
    from harness.runner import RunError

    target = out or run_dir.with_name(run_dir.name + "-reproduced")
    try:
        diff = rerun(run_dir, target, progress, atol)
    except (RunError, KeyError, FileNotFoundError, MissingExtraError) as exc:
        fail(str(exc).strip("'\""))
    typer.echo(f"re-ran {run_dir} into {target}")
    typer.echo(format_diff(diff))
    if not diff.identical:
        raise typer.Exit(1)
