"""The `harness` command line."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Benchmark harness for post-training alignment of video diffusion models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
list_app = typer.Typer(help="List registered methods, metrics or presets.", no_args_is_help=True)
app.add_typer(list_app, name="list")
weights_app = typer.Typer(help="The local weight cache of the metric backends (the only network access).",
                          no_args_is_help=True)
app.add_typer(weights_app, name="weights")

PresetOpt = Annotated[str, typer.Option("--preset", "-p", help="preset name or YAML file")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="override a preset field, e.g. --set pretrain.steps=100 (repeatable)"),
]


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _preset(name: str, sets: list[str] | None, extra: list[dict] | None = None):
    from harness.config import ConfigError, load_preset, parse_override

    try:
        return load_preset(name, [parse_override(s) for s in sets or []] + (extra or []))
    except ConfigError as exc:
        _fail(str(exc))


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s")
    from harness.weights import force_offline

    force_offline()  # no hub downloads at run time; `harness weights prefetch` uses plain HTTP on its own


@app.command()
def pretrain(
    preset: PresetOpt = "tiny",
    out: Annotated[Path, typer.Option(help="output directory for the checkpoint")] = Path("runs/pretrain"),
    steps: Annotated[int | None, typer.Option(help="training steps (default: the preset's)")] = None,
    sets: SetOpt = None,
    force: Annotated[bool, typer.Option("--force", help="replace an existing checkpoint in --out")] = False,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    init_from: Annotated[
        Path | None, typer.Option(help="warm-start from a saved model (continues on clips it has not seen)")
    ] = None,
) -> None:
    """Pretrain the tiny base model on the world's `pretrain` split."""
    from harness.build.base import OutputExistsError, TrainingDivergedError
    from harness.build.base import pretrain as run_pretrain

    cfg = _preset(preset, sets, [{"pretrain": {"steps": steps}}] if steps else None)
    try:
        record = run_pretrain(cfg, out, force=force, show_progress=progress, init_from=init_from)
    except (OutputExistsError, PermissionError, TrainingDivergedError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps({"out": str(out), "train_seconds": record["train_seconds"],
                           "final_loss": record["loss_curve"][-1]["loss"],
                           "oracle_at_end": record["oracle_at_end"]}, indent=2))


@app.command("train-features")
def train_features_cmd(
    preset: PresetOpt = "tiny",
    out: Annotated[Path, typer.Option(help="output directory")] = Path("runs/features"),
    steps: Annotated[int, typer.Option(help="steps per extractor")] = 1500,
    force: Annotated[bool, typer.Option("--force", help="replace existing weights in --out")] = False,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Train the tiny world's feature extractors (frame encoder, clip classifier) used by the metrics."""
    from harness.build.features import train_features

    if (out / "frame_encoder.safetensors").exists() and not force:
        _fail(f"feature weights already exist in {out}; pass --force to replace them")
    cfg = _preset(preset, None)
    record = train_features(cfg.world, out, steps=steps, show_progress=progress)
    typer.echo(json.dumps({"out": str(out), "train_seconds": record["train_seconds"],
                           "held_out": record["held_out"]}, indent=2))


@app.command("train-reward")
def train_reward_cmd(
    preset: PresetOpt = "tiny",
    out: Annotated[Path, typer.Option(help="output directory")] = Path("runs/reward"),
    pairs: Annotated[str | None, typer.Option(
        help="fit to preference pairs (Bradley-Terry), as a real family needs: footage[:SPLIT] (a real clip chosen "
             "over a base sample), rollouts[:SPLIT] (tiny world) or file:PATH (labelled pairs); default: the tiny "
             "world's rater labels")] = None,
    target: Annotated[str, typer.Option(
        help="tiny world without --pairs: what the head is fitted to: rater (partial, noisy labels; the default "
             "training judge) or oracle (the evaluation judge's own scores: a judge that is an evaluation metric)")
    ] = "rater",
    steps: Annotated[int | None, typer.Option(help="head training steps (default: 1500; with --pairs 300)")] = None,
    conditions: Annotated[int, typer.Option(help="conditions to build the data from (with --pairs: pairs)")] = 384,
    force: Annotated[bool, typer.Option("--force", help="replace existing weights in --out")] = False,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Train the latent reward model's head (FCRM's default reward) on the preset's frozen base model."""
    from harness.build.latent_rm import train_reward_model, train_reward_on_pairs
    from harness.data.preferences import PairsError
    from harness.scorers.errors import RewardError
    from harness.scorers.latent_rm import HEAD_FILE

    if (out / HEAD_FILE).exists() and not force:
        _fail(f"reward model weights already exist in {out}; pass --force to replace them")
    cfg = _preset(preset, None)
    if pairs is None and cfg.adapter is not None:
        _fail(f"preset {cfg.name!r} has no oracle to score its videos; fit the reward model to preference pairs: "
              f"--pairs footage (real clips over base samples) or --pairs file:PATH")
    try:
        if pairs is None:
            record = train_reward_model(cfg, out, conditions=conditions, steps=steps or 1500, target=target,
                                        show_progress=progress)
        else:
            record = train_reward_on_pairs(cfg, pairs, out, conditions=conditions, steps=steps or 300,
                                           show_progress=progress)
    except (RewardError, PairsError, ValueError) as e:
        _fail(str(e))
    typer.echo(json.dumps({"out": str(out), "data": record["data"], "held_out": record["held_out"]}, indent=2))


@app.command("train-motion-reward")
def train_motion_reward_cmd(
    preset: PresetOpt = "tiny",
    out: Annotated[Path, typer.Option(help="output directory (one sub-directory per kind)")] = Path(
        "runs/motion_reward"),
    kinds: Annotated[str, typer.Option(help="comma-separated: imr, lmr")] = "imr,lmr",
    clips: Annotated[int, typer.Option(help="real clips (each with 4 base samples)")] = 192,
    steps: Annotated[int, typer.Option(help="discriminator training steps")] = 400,
    split: Annotated[str | None, typer.Option(help="split of the real clips (default: the preset's "
                                                   "methods.shift.real.split, else prompts)")] = None,
    map_size: Annotated[str | None, typer.Option(help="HxW the motion features are computed at (default: "
                                                      "native up to 32 px on the shorter side, else scaled to it)")]
    = None,
    force: Annotated[bool, typer.Option("--force", help="replace existing weights in --out")] = False,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Pre-train SHIFT's pixel-motion discriminators (IMR, LMR): real clips vs base samples."""
    from harness.build.motion_rm import train_motion_rewards
    from harness.scorers.errors import RewardError
    from harness.scorers.motion_rm import KINDS, WEIGHTS_FILE

    names = _csv(kinds) or []
    unknown = sorted(set(names) - set(KINDS))
    if unknown or not names:
        _fail(f"unknown motion reward kind(s) {unknown or kinds!r}; allowed: {', '.join(KINDS)}")
    existing = [str(out / k / WEIGHTS_FILE) for k in names if (out / k / WEIGHTS_FILE).exists()]
    if existing and not force:
        _fail(f"motion reward weights already exist ({', '.join(existing)}); pass --force to replace them")
    cfg = _preset(preset, None)
    split = split or (cfg.methods.get("shift", {}).get("real") or {}).get("split", "prompts")
    try:
        hw = [int(v) for v in map_size.lower().split("x")] if map_size else None
        if hw is not None and (len(hw) != 2 or min(hw) < 4):
            raise ValueError
    except ValueError:
        _fail(f"--map-size {map_size!r}: expected HxW with both sides >= 4, e.g. 32x56")
    try:
        records = train_motion_rewards(cfg, out, names, clips=clips, steps=steps, split=split, map_size=hw,
                                       show_progress=progress)
    except RewardError as exc:
        _fail(str(exc))
    typer.echo(json.dumps({k: {"out": str(out / k), "held_out": r["held_out"]} for k, r in records.items()},
                          indent=2))


@app.command("distill-fewstep")
def distill_fewstep_cmd(
    preset: PresetOpt = "tiny",
    out: Annotated[Path, typer.Option(help="output model directory")] = Path("runs/fewstep"),
    steps: Annotated[int, typer.Option(help="distillation steps")] = 1200,
    force: Annotated[bool, typer.Option("--force", help="replace an existing model in --out")] = False,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Distil the base model into a 3-step generator (timesteps 1000, 757, 522) for FCRM's few-step mode."""
    from harness.build.fewstep import distill_fewstep

    try:
        record = distill_fewstep(_preset(preset, None), out, steps=steps, force=force, show_progress=progress)
    except FileExistsError as exc:
        _fail(str(exc))
    typer.echo(json.dumps({"out": str(out), "train": record["train"],
                           "judged_on_eval": {k: v["samples"] for k, v in record["judged_on_eval"].items()}},
                          indent=2))


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

    cfg = _preset(preset, sets)
    try:
        summary = sample_and_judge(cfg, out, checkpoint=checkpoint, num=num)
    except (FileNotFoundError, PermissionError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def world(
    split: Annotated[str, typer.Option(help="pretrain | finetune | eval")] = "eval",
    num: Annotated[int, typer.Option("--num", "-n", help="clips to render")] = 8,
    start: Annotated[int, typer.Option(help="first clip index")] = 0,
    preset: PresetOpt = "tiny",
    out: Annotated[Path, typer.Option(help="output directory")] = Path("runs/world"),
) -> None:
    """Render clips of the tiny world to mp4 with their captions and ground truth (JSONL)."""
    from harness.data.video_io import write_video
    from harness.data.world import SPLITS, make_clip

    if split not in SPLITS:
        _fail(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    cfg = _preset(preset, None)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "clips.jsonl", "w") as f:
        for i in range(start, start + num):
            clip = make_clip(cfg.world, split, i)
            path = write_video(out / f"{split}_{i:05d}.mp4", clip.frames, fps=cfg.world.fps)
            row = {"video": path.name, **clip.spec.to_dict(), "positions": clip.positions.round(3).tolist()}
            f.write(json.dumps(row) + "\n")
    typer.echo(f"wrote {num} clips of split '{split}' to {out}")


def _csv(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _safe_names(option: str, names: list[str]) -> list[str]:
    """Names that become path parts (methods): refused before any work unless they match the safe pattern."""
    from harness.names import UnsafeNameError, check_name

    try:
        return [check_name(f"{option} name", n) for n in names]
    except UnsafeNameError as exc:
        _fail(str(exc))


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
    adopt: Annotated[bool, typer.Option("--adopt", help="continue a run directory that was copied or moved to "
                                                        "--out (its run id is kept)")] = False,
) -> None:
    """Train each method from the base model, evaluate every checkpoint, store every number."""
    from harness.config import parse_override
    from harness.runner import RunError, RunOptions, method_config
    from harness.runner import run as run_loop
    from harness.smoke import apply_smoke
    from trainers.registry import available_methods

    chosen = _safe_names("--methods", _csv(methods) or [])
    try:
        seed_list = [int(s) for s in seeds.split(",")]
    except ValueError:
        _fail(f"--seeds must be comma-separated integers >= 0, got {seeds!r}")
    user_cfg = _preset(preset, sets)  # the user's values are checked before --smoke shrinks anything
    variants = [m for m, section in user_cfg.methods.items() if section.get("trainer")]
    unknown = [m for m in chosen if m not in available_methods() and m not in variants]
    if unknown:
        _fail(f"unknown method(s) {', '.join(unknown)}; registered: {', '.join(available_methods())}; "
              f"variants in preset {user_cfg.name!r}: {', '.join(variants) or 'none'}")
    try:
        opts = RunOptions(methods=chosen, seeds=seed_list, steps=steps, eval_every=eval_every,
                          metrics=_csv(metrics), resume=resume, show_progress=progress,
                          extend_seeds=extend_seeds, adopt=adopt)
        for m in chosen:
            method_config(user_cfg, m, opts)
    except RunError as exc:
        _fail(str(exc))
    cfg = user_cfg
    if smoke:
        user = [parse_override(s) for s in sets or []]
        shrink, made, kept = apply_smoke(user_cfg, chosen, user, with_steps=steps is None and eval_every is None)
        cfg = _preset(preset, sets, shrink)
        log = logging.getLogger(__name__)
        log.info("--smoke set %s", ", ".join(made) or "nothing")
        if kept:
            log.info("--smoke kept your values of %s", ", ".join(k.split("=")[0] for k in kept))
    from harness.data.folder import VideoDataError
    from harness.distributed import DistributedConfigError, init_from_env
    from harness.extras import MissingExtraError

    try:
        main = init_from_env().is_main  # launched by accelerate / torchrun: join the group
        run_loop(cfg, out, opts)
    except (RunError, KeyError, FileNotFoundError, DistributedConfigError, VideoDataError,
            MissingExtraError) as exc:
        _fail(str(exc).strip("'\""))
    if not main:
        return
    typer.echo(f"results: {out / 'results.sqlite'}")
    if report:
        from reports.render import render_report

        logging.getLogger(__name__).info("rendering the report")
        typer.echo(f"report: {render_report(out)}")


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
) -> None:
    """Evaluate a checkpoint, a run, or a folder of videos with the metric registry.

    Metric groups expand to their members with upstream backends, e.g. ``--metrics vbench-i2v,fvd``."""
    from harness.evaluate import evaluate_checkpoint, evaluate_run, evaluate_videos
    from harness.rundir import RunDirError

    chosen = [x for x in (checkpoint, run_dir, videos) if x is not None]
    if len(chosen) != 1:
        _fail("give exactly one of --checkpoint, --run, --videos")
    if conditions is not None and videos is None:
        _fail("--conditions maps the videos of --videos to their images; give --videos too")
    names = _csv(metrics)
    if names:
        from metrics.registry import METRIC_GROUPS, list_metrics

        known = {s.name for s in list_metrics()} | set(METRIC_GROUPS)
        unknown = [n for n in names if n not in known]
        if unknown:
            _fail(f"unknown metric(s) {', '.join(unknown)}; registered: {', '.join(sorted(known))}")
    fvd_sets = [] if fvd_ref is None else [{"eval": {"backends": {"fvd": {"features": "i3d", "ref": str(fvd_ref)}}}}]
    cfg = _preset(preset, sets, fvd_sets)
    try:
        if run_dir is not None:
            if not (run_dir / "run.json").is_file():
                _fail(f"{run_dir} holds no run (no run.json)")
            typer.echo(f"results: {evaluate_run(run_dir, names)}")
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
        _fail(str(exc))


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
        _fail(f"unknown export format {fmt!r}; allowed: {', '.join(formats)}")
    if identity and fmt != "vbench":
        _fail(f"--identity chooses what --format vbench exports; {fmt} exports every table whole, drop --identity")
    db = results / "results.sqlite"
    if not db.is_file():
        _fail(f"no results store at {db}")
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
        _fail(str(exc))
    typer.echo("\n".join(str(p) for p in paths))
    if left_out:
        typer.echo(f"not exported ({len(left_out)}):\n" + "\n".join(f"  {x}" for x in left_out))


@app.command("report")
def report_cmd(
    run_dir: Annotated[Path, typer.Option("--run", help="run directory")],
    ci: Annotated[bool, typer.Option("--ci", help="show 95% confidence intervals in tables")] = False,
) -> None:
    """Render tables (Markdown, LaTeX), plots and the HTML page of a run."""
    from harness.store import StoreError
    from reports.render import render_report

    if not (run_dir / "results.sqlite").is_file():
        _fail(f"{run_dir} holds no run (no results.sqlite); run `harness run --out {run_dir}` first")
    try:
        index = render_report(run_dir, show_ci=ci)
    except StoreError as exc:
        _fail(str(exc))
    typer.echo(f"report: {index}")


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
            rg.write_leaderboard(rg.build_leaderboard(run_dir, note), path)
            typer.echo(f"leaderboard written: {path}")
            return
        cmp = rg.compare(rg.read_leaderboard(path), run_dir, z)
    except (rg.LeaderboardError, StoreError) as exc:  # bad input: exit 2, never 1 (a regression)
        _fail(str(exc))
    typer.echo(f"{run_dir} against {path} (z = {z:g})")
    typer.echo(rg.format_comparison(cmp, show_all))
    if json_out:
        json_out.write_text(cmp.table.to_json(orient="records", indent=1))
    if not cmp.ok:
        raise typer.Exit(1)


def _run_preset(run_dir: Path) -> str:
    from harness.regress import run_manifest

    if not (run_dir / "run.json").exists():
        _fail(f"{run_dir} has no run.json; pass --leaderboard explicitly")
    preset = run_manifest(run_dir).get("preset")
    return (preset.get("name") if isinstance(preset, dict) else preset) or "tiny"


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
        _fail(str(exc).strip("'\""))
    typer.echo(f"re-ran {run_dir} into {target}")
    typer.echo(format_diff(diff))
    if not diff.identical:
        raise typer.Exit(1)


@list_app.command("methods")
def list_methods(preset: PresetOpt = "tiny") -> None:
    """Registered alignment methods, and the preset's named variants of them."""
    from trainers.registry import available_methods, get_trainer

    for name in available_methods():
        typer.echo(f"{name}\t{get_trainer(name).description}")
    for name, section in _preset(preset, None).methods.items():
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
        _fail(str(exc))


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
        _fail(str(exc))


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
        _fail(str(exc))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
