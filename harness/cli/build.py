"""`harness build`: the assets the methods and metrics start from, each with its training record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from harness.cli.common import PresetOpt, SetOpt, app, fail, load_cli_preset, split_csv

build_app = typer.Typer(help="Build an asset: the base model, the tiny feature extractors, the latent reward model, "
                             "SHIFT's motion rewards or the few-step generator.", no_args_is_help=True)
app.add_typer(build_app, name="build")


@build_app.command("base")
def build_base(
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

    cfg = load_cli_preset(preset, sets, [{"pretrain": {"steps": steps}}] if steps else None)
    try:
        record = run_pretrain(cfg, out, force=force, show_progress=progress, init_from=init_from)
    except (OutputExistsError, PermissionError, TrainingDivergedError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    typer.echo(json.dumps({"out": str(out), "train_seconds": record["train_seconds"],
                           "final_loss": record["loss_curve"][-1]["loss"],
                           "oracle_at_end": record["oracle_at_end"]}, indent=2))


@build_app.command("features")
def build_features(
    preset: PresetOpt = "tiny",
    out: Annotated[Path, typer.Option(help="output directory")] = Path("runs/features"),
    steps: Annotated[int, typer.Option(help="steps per extractor")] = 1500,
    force: Annotated[bool, typer.Option("--force", help="replace existing weights in --out")] = False,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Train the tiny world's feature extractors (frame encoder, clip classifier) used by the metrics."""
    from harness.build.features import train_features

    if (out / "frame_encoder.safetensors").exists() and not force:
        fail(f"feature weights already exist in {out}; pass --force to replace them")
    cfg = load_cli_preset(preset, None)
    record = train_features(cfg.world, out, steps=steps, show_progress=progress)
    typer.echo(json.dumps({"out": str(out), "train_seconds": record["train_seconds"],
                           "held_out": record["held_out"]}, indent=2))


@build_app.command("latent-rm")
def build_latent_rm(
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
        fail(f"reward model weights already exist in {out}; pass --force to replace them")
    cfg = load_cli_preset(preset, None)
    if pairs is None and cfg.adapter is not None:
        fail(f"preset {cfg.name!r} has no oracle to score its videos; fit the reward model to preference pairs: "
              f"--pairs footage (real clips over base samples) or --pairs file:PATH")
    try:
        if pairs is None:
            record = train_reward_model(cfg, out, conditions=conditions, steps=steps or 1500, target=target,
                                        show_progress=progress)
        else:
            record = train_reward_on_pairs(cfg, pairs, out, conditions=conditions, steps=steps or 300,
                                           show_progress=progress)
    except (RewardError, PairsError, ValueError) as e:
        fail(str(e))
    typer.echo(json.dumps({"out": str(out), "data": record["data"], "held_out": record["held_out"]}, indent=2))


@build_app.command("motion-rm")
def build_motion_rm(
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

    names = split_csv(kinds) or []
    unknown = sorted(set(names) - set(KINDS))
    if unknown or not names:
        fail(f"unknown motion reward kind(s) {unknown or kinds!r}; allowed: {', '.join(KINDS)}")
    existing = [str(out / k / WEIGHTS_FILE) for k in names if (out / k / WEIGHTS_FILE).exists()]
    if existing and not force:
        fail(f"motion reward weights already exist ({', '.join(existing)}); pass --force to replace them")
    cfg = load_cli_preset(preset, None)
    split = split or (cfg.methods.get("shift", {}).get("real") or {}).get("split", "prompts")
    try:
        hw = [int(v) for v in map_size.lower().split("x")] if map_size else None
        if hw is not None and (len(hw) != 2 or min(hw) < 4):
            raise ValueError
    except ValueError:
        fail(f"--map-size {map_size!r}: expected HxW with both sides >= 4, e.g. 32x56")
    try:
        records = train_motion_rewards(cfg, out, names, clips=clips, steps=steps, split=split, map_size=hw,
                                       show_progress=progress)
    except RewardError as exc:
        fail(str(exc))
    typer.echo(json.dumps({k: {"out": str(out / k), "held_out": r["held_out"]} for k, r in records.items()},
                          indent=2))


@build_app.command("fewstep")
def build_fewstep(
    preset: PresetOpt = "tiny",
    out: Annotated[Path, typer.Option(help="output model directory")] = Path("runs/fewstep"),
    steps: Annotated[int, typer.Option(help="distillation steps")] = 1200,
    force: Annotated[bool, typer.Option("--force", help="replace an existing model in --out")] = False,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Distil the base model into a 3-step generator (timesteps 1000, 757, 522) for FCRM's few-step mode."""
    from harness.build.fewstep import distill_fewstep

    try:
        record = distill_fewstep(load_cli_preset(preset, None), out, steps=steps, force=force, show_progress=progress)
    except FileExistsError as exc:
        fail(str(exc))
    typer.echo(json.dumps({"out": str(out), "train": record["train"],
                           "judged_on_eval": {k: v["samples"] for k, v in record["judged_on_eval"].items()}},
                          indent=2))
