"""`harness world`: render clips of the tiny world."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from harness.cli.common import PresetOpt, app, fail, load_cli_preset


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
        fail(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    cfg = load_cli_preset(preset, None)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "clips.jsonl", "w") as f:
        for i in range(start, start + num):
            clip = make_clip(cfg.world, split, i)
            path = write_video(out / f"{split}_{i:05d}.mp4", clip.frames, fps=cfg.world.fps)
            row = {"video": path.name, **clip.spec.to_dict(), "positions": clip.positions.round(3).tolist()}
            f.write(json.dumps(row) + "\n")
    typer.echo(f"wrote {num} clips of split '{split}' to {out}")
