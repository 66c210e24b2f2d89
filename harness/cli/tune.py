"""`harness tune`: the same learning-rate sweep for every method, chosen by its own training-side judge on a
validation split (harness/tuning.py, docs/tuning.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from harness.cli.common import PresetOpt, SetOpt, app, fail, load_cli_preset, split_csv


@app.command()
def tune(
    methods: Annotated[str | None, typer.Option(
        help="comma-separated methods (default: every method section of the preset that is not a named variant; "
             "variants inherit their trainer's learning rate)")] = None,
    preset: PresetOpt = "tiny",
    out: Annotated[Path, typer.Option(help="sweep directory (one JSON per candidate; resumes)")] = Path("runs/tune"),
    steps: Annotated[int | None, typer.Option(help="training steps per candidate (default: the method's; a "
                                                   "shorter sweep is not the recorded budget)")] = None,
    record: Annotated[bool, typer.Option(
        "--record", help="write the sweep next to the preset (tuning.record, default <preset>.tuning.json), merged "
                         "with the methods recorded there; then set each method's lr to its choice")] = False,
    sets: SetOpt = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Sweep each method's learning rate (the preset's tuning section) and report the choice."""
    from harness.config import TuningConfig, tuning_record_path
    from harness.tuning import TuningError, merge_record
    from harness.tuning import tune as run_sweep

    cfg = load_cli_preset(preset, sets)
    chosen = split_csv(methods) or [m for m, s in cfg.methods.items() if not s.get("trainer")]
    if record and steps is not None:
        fail("--record keeps the preset's budget: drop --steps (a shorter sweep is not the recorded budget)")
    if record and sets:
        fail("--record writes the sweep next to the preset: drop --set, or put the change in the preset file")
    adopted = _adopted(cfg, chosen)
    if record and adopted:
        fail(f"{adopted}: a sweep centres on the preset's lr, so this would give the method a second budget; set "
             "the lr back to the recorded centre to redo the same sweep, or delete its entry from the record to "
             "start over")
    try:
        result = run_sweep(cfg, chosen, out, progress, steps)
        if record:
            tuning = cfg.tuning or TuningConfig()
            folder = Path(preset).parent if Path(preset).is_file() else None
            path = tuning_record_path(tuning.record or f"{cfg.name}.tuning.json", folder)
            result = merge_record(tuning.results, result)
            path.write_text(json.dumps(result, indent=1) + "\n")
            typer.echo(f"recorded: {path}")
    except TuningError as exc:
        fail(str(exc))
    for method, entry in result["methods"].items():
        if method not in chosen:
            continue
        cells = ", ".join(f"{c['lr']:g}: " + (c["diverged"] and "diverged" or f"{c['score']:.5g} ± {c['se']:.2g}")
                          for c in entry["candidates"])
        change = "" if entry["chosen"] == entry["center"] else f"  (preset: {entry['center']:g})"
        typer.echo(f"{method}: lr {entry['chosen']:g}{change}   [{cells}]")
    typer.echo(f"sweep: {out / 'tuning.json'}")


def _adopted(cfg, methods: list[str]) -> str:
    """The methods whose preset lr is already the recorded sweep's choice (not its centre), named."""
    swept = ((cfg.tuning.results or {}).get("methods") or {}) if cfg.tuning else {}
    out = []
    for m in methods:
        entry, lr = swept.get(m), cfg.methods.get(m, {}).get("lr")
        if entry and lr is not None and float(lr) == entry["chosen"] != entry["center"]:
            out.append(f"methods.{m}.lr ({float(lr):g}) is the recorded sweep's choice, not its centre "
                       f"({entry['center']:g})")
    return "; ".join(out)
