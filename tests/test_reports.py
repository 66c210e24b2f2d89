"""Reports: tables (marks, arrows, CIs, seed averaging), gallery, and the rendered report of synthetic runs.

Directions come from a monkeypatched registry, so these tests do not depend on ``metrics.registry``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.store import ResultStore
from metrics import identity
from reports.gallery import filmstrip
from reports.render import render_report
from reports.tables import TINY_DISCLAIMER, final_table, steps_to_markdown, to_latex, to_markdown

UP = "subject_consistency[features=tiny]"  # higher is better
DOWN = "fvd[features=tiny-clip]"  # lower is better, 1 decimal
UNKNOWN = "mystery_score[k=1]"  # no direction known
ROLLUP = "rollup:vbench_i2v_total[tiny]"
METRICS = [UP, DOWN, UNKNOWN]
REAL_REGISTRY = identity._registry_directions
PRESET = {"name": "tiny", "description": "synthetic sprite world", "eval": {"num_videos": 4, "seed": 1000},
          "sampler": {"kind": "ode", "num_steps": 16, "guidance_scale": 1.0},
          "world": {"seed": 0, "resolution": 16, "num_frames": 8, "fps": 8}}
PROVENANCE = {"git": {"commit": "0123abc", "dirty": False},
              "versions": {"python": "3.11", "torch": "2.13.0", "diffusers": "0.42.1"},
              "hardware": {"platform": "Linux", "processor": "x86_64", "cpu_count": 2, "cuda": None}}
# Final-step values, hand-checked: UP best sft, second dpo; DOWN best dpo, second sft.
FINAL = {"base": {UP: 0.800, DOWN: 300.0, UNKNOWN: 1.0},
         "sft": {UP: 0.900, DOWN: 250.0, UNKNOWN: 3.0},
         "dpo": {UP: 0.850, DOWN: 200.0, UNKNOWN: 2.0}}


@pytest.fixture(autouse=True)
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(identity, "_registry_directions",
                        lambda: {"subject_consistency": True, "fvd": False})


def _samples(path: Path, seed: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    frames = np.random.default_rng(seed).integers(0, 256, size=(4, 8, 16, 16, 3), dtype=np.uint8)
    np.savez_compressed(path / "samples.npz", frames=frames, seeds=np.arange(1000, 1004))


def make_run(root: Path, values: dict[str, dict[int, dict[int, dict[str, float]]]],
             ci: float = 0.02) -> Path:
    """values[method][seed][step][metric] ('base': seed 0, step 0) -> store, run.json and samples."""
    run_dir = root / "run1"
    methods = [m for m in values if m != "base"]
    seeds = sorted({s for m in methods for s in values[m]}) or [0]
    config = {"preset": PRESET, "methods": {m: {} for m in methods}, "metrics": METRICS}
    run_dir.mkdir(parents=True)
    meta = {"run_id": "run1", "options": {"methods": methods, "seeds": seeds}, **config, **PROVENANCE}
    (run_dir / "run.json").write_text(json.dumps(meta))
    with ResultStore(run_dir / "results.sqlite") as store:
        store.add_run("run1", "tiny", config, seeds, PROVENANCE)
        for method, by_seed in values.items():
            for seed, by_step in by_seed.items():
                for step, metrics in by_step.items():
                    rel = (Path("checkpoints/base") if method == "base"
                           else Path(f"checkpoints/{method}/seed{seed}")) / f"step{step:06d}"
                    cid = store.checkpoint("run1", method, seed, step, str(run_dir / rel), PRESET["sampler"])
                    for metric, v in metrics.items():
                        store.add_aggregate(cid, metric, v, 4, v - ci, v + ci)
                    _samples(run_dir / rel, seed * 1000 + step)
            if method != "base":
                for seed in by_seed:
                    store.log_train("run1", method, seed, [(s, "loss", 1.0 / s) for s in range(1, 61)])
    return run_dir


def _three_methods() -> dict:
    half = {m: v * 0.5 for m, v in FINAL["base"].items()}
    return {"base": {0: {0: FINAL["base"]}},
            "sft": {0: {50: half, 100: FINAL["sft"]}},
            "dpo": {0: {50: half, 100: FINAL["dpo"]}}}


def _table(run_dir: Path):
    with ResultStore(run_dir / "results.sqlite") as store:
        return final_table(store.aggregates("run1"), ["sft", "dpo"], METRICS), store.aggregates("run1")


def _md_rows(md: str) -> dict[str, list[str]]:
    """Markdown table rows keyed by their first cell."""
    lines = [line for line in md.splitlines() if line.startswith("|")]
    rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]
    return {r[0]: r[1:] for r in rows}


def test_markdown_marks_best_and_second_by_direction(tmp_path: Path) -> None:
    table, _ = _table(make_run(tmp_path, _three_methods()))
    assert table.methods == ["base", "sft", "dpo"] and table.metrics == METRICS
    md = to_markdown(table, preset="tiny", num_videos=4)
    rows = _md_rows(md)
    assert rows["Method"] == ["subject_consistency ↑", "fvd ↓", "mystery_score"]
    assert rows["base"] == ["0.800", "300.0", "1.000"]
    assert rows["sft"] == ["**0.900**", "<u>250.0</u>", "3.000"]
    assert rows["dpo"] == ["<u>0.850</u>", "**200.0**", "2.000"]
    assert "Preset: tiny" in md and "eval set: 4 videos" in md
    assert "[features=tiny] subject_consistency" in md and "[features=tiny-clip] fvd" in md
    assert TINY_DISCLAIMER in md


def test_no_marks_with_a_single_row_or_explicit_unknown_direction(tmp_path: Path) -> None:
    table, _ = _table(make_run(tmp_path, {"base": {0: {0: FINAL["base"]}}}))
    rows = _md_rows(to_markdown(table))
    assert rows["base"] == ["0.800", "300.0", "1.000"]
    table, _ = _table(make_run(tmp_path / "b", _three_methods()))
    rows = _md_rows(to_markdown(table, directions={UP: None, DOWN: True}))
    assert rows["Method"] == ["subject_consistency", "fvd ↑", "mystery_score"]
    assert rows["sft"] == ["0.900", "<u>250.0</u>", "3.000"] and rows["base"][1] == "**300.0**"


def test_latex_booktabs_escaped(tmp_path: Path) -> None:
    table, _ = _table(make_run(tmp_path, _three_methods()))
    tex = to_latex(table, preset="tiny", num_videos=4)
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}{lrrr}"):
        assert rule in tex
    assert r"subject\_consistency $\uparrow$" in tex and r"fvd $\downarrow$" in tex
    assert r"sft & \textbf{0.900} & \underline{250.0} & 3.000 \\" in tex
    assert re.search(r"(?<!\\)_", tex) is None  # every underscore escaped
    assert "↑" not in tex and "±" not in tex


def test_ci_mode_single_seed_shows_interval(tmp_path: Path) -> None:
    table, _ = _table(make_run(tmp_path, _three_methods()))
    rows = _md_rows(to_markdown(table, show_ci=True))
    assert rows["sft"][0] == "**0.900 [0.880, 0.920]**"
    assert rows["dpo"][1] == "**200.0 [200.0, 200.0]**"  # ci of ±0.02 rounds away at 1 decimal
    assert "95 % bootstrap CI" in to_markdown(table, show_ci=True)
    assert r"\underline{0.850 [0.830, 0.870]}" in to_latex(table, show_ci=True)


def test_multi_seed_mean_and_std(tmp_path: Path) -> None:
    values = {"base": {0: {0: FINAL["base"]}},
              "sft": {0: {50: FINAL["base"], 100: {UP: 0.9, DOWN: 250.0}},
                      1: {50: FINAL["base"], 100: {UP: 0.8, DOWN: 270.0}}}}
    table, agg = _table(make_run(tmp_path, values))
    assert table.mean.at["sft", UP] == pytest.approx(0.85)
    assert table.std.at["sft", UP] == pytest.approx(np.std([0.9, 0.8], ddof=1))
    assert table.mean.at["sft", DOWN] == pytest.approx(260.0)
    assert (table.seeds["sft"], table.step["sft"], table.seeds["base"]) == (2, 100, 1)
    assert "sft: step 100, mean of 2 seeds" in to_markdown(table)
    rows = _md_rows(to_markdown(table, show_ci=True))
    assert rows["sft"] == ["**0.850 ± 0.071**", "**260.0 ± 14.1**", "–"]
    assert rows["base"][:2] == ["<u>0.800 [0.780, 0.820]</u>", "<u>300.0 [300.0, 300.0]</u>"]
    steps = steps_to_markdown(agg, metrics=METRICS)
    assert list(_md_rows(steps)) == ["Method", "---", "base", "sft"]  # base first
    lines = [line for line in steps.splitlines() if line.startswith("| sft |")]
    assert [tuple(line.split(" | ")[1:3]) for line in lines] == [("0", "50"), ("0", "100"), ("1", "50"),
                                                                 ("1", "100")]
    assert "| sft | 1 | 100 | 0.800 | 270.0 | – |" in steps


def test_metric_direction() -> None:
    assert identity.metric_direction(UP) is True
    assert identity.metric_direction(DOWN) is False
    assert identity.metric_direction(UNKNOWN) is None
    assert identity.metric_direction(ROLLUP) is True
    assert identity.metric_name(ROLLUP) == "rollup:vbench_i2v_total"
    assert identity.metric_backend("dynamic_degree[flow=dis,upscale=4]") == "flow=dis,upscale=4"
    assert identity.metric_backend("bare") is None


def test_direction_without_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(identity, "_registry_directions", REAL_REGISTRY)
    monkeypatch.setitem(sys.modules, "metrics.registry", None)  # import fails as if not written yet
    assert identity.metric_direction(UP) is None
    assert identity.metric_direction(ROLLUP) is True


def test_filmstrip_layout() -> None:
    frames = np.random.default_rng(0).integers(0, 256, size=(5, 8, 16, 16, 3), dtype=np.uint8)
    img = filmstrip(frames, k=4)
    assert img.shape == (4 * 96 + 3, 8 * 96 + 7, 3) and img.dtype == np.uint8
    assert (img[96] == 255).all() and (img[:, 96] == 255).all()  # 1-px separators
    y, x = 97 + 6 * 3, 2 * 97 + 6 * 5  # video 1, frame 2, pixel (3, 5)
    assert (img[y:y + 6, x:x + 6] == frames[1, 2, 3, 5]).all()
    with pytest.raises(ValueError, match="uint8"):
        filmstrip(frames.astype(np.float32))


def _no_external(page: str) -> None:
    assert re.search(r"https?:", page) is None
    assert "<script" not in page and "<link" not in page
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', page))


def test_render_report_full(tmp_path: Path) -> None:
    values = _three_methods()
    values["sft"][1] = {50: FINAL["base"], 100: {**FINAL["sft"], UP: 0.7}}
    run_dir = make_run(tmp_path, values)
    with ResultStore(run_dir / "results.sqlite") as store:
        cid = store.checkpoint("run1", "dpo", 0, 100, None, PRESET["sampler"])
        store.add_skip(cid, "eval0003_seed1003", "decode failed")
        store.add_aggregate(cid, ROLLUP, 0.5, 1)
    index = render_report(run_dir, show_ci=True)
    out = run_dir / "report"
    assert index == out / "index.html"
    for name in ("table.md", "table.tex", "steps.md", "index.html"):
        assert (out / name).is_file()
    plots = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert plots == ["metric_fvd_features_tiny-clip.png", "metric_mystery_score_k_1.png",
                     "metric_rollup_vbench_i2v_total_tiny.png",
                     "metric_subject_consistency_features_tiny.png", "objectives.png", "train_loss.png"]
    objectives = (out / "objectives.md").read_text(encoding="utf-8")  # sft's loss 1/step falls on both seeds
    assert "| sft | loss (" in objectives and "| falls | ✓ improves |" in objectives
    gallery = sorted(p.name for p in (out / "gallery").glob("*.png"))
    assert gallery == ["base_step000000.png", "dpo_seed0_step000050.png", "dpo_seed0_step000100.png",
                       "sft_seed0_step000050.png", "sft_seed0_step000100.png", "sft_seed1_step000050.png",
                       "sft_seed1_step000100.png"]
    page = index.read_text(encoding="utf-8")
    _no_external(page)
    assert TINY_DISCLAIMER in page and "<dd>tiny</dd>" in page and "run1" in page
    assert "image-rendering: pixelated" in page and "0123abc" in page and "2.13.0" in page
    assert "eval0003_seed1003" in page and "decode failed" in page
    assert page.count("data:image/png;base64,") == len(plots) + len(gallery)
    assert "<strong>" in page and "<u>" in page and "↑" in page
    assert "± " in (out / "table.md").read_text(encoding="utf-8")  # sft has two seeds
    assert r"\toprule" in (out / "table.tex").read_text(encoding="utf-8")


def test_render_report_base_only(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, {"base": {0: {0: FINAL["base"]}}})
    index = render_report(run_dir)
    page = index.read_text(encoding="utf-8")
    _no_external(page)
    assert "base_step000000.png" in {p.name for p in (run_dir / "report" / "gallery").iterdir()}
    assert len(list((run_dir / "report" / "plots").glob("metric_*.png"))) == 3
    assert "| base | 0.800 | 300.0 | 1.000 |" in (run_dir / "report" / "table.md").read_text(encoding="utf-8")


def test_render_report_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        render_report(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="results.sqlite"):
        render_report(tmp_path)


def test_seed_short_of_the_final_step_is_not_averaged(tmp_path: Path) -> None:
    values = {"base": {0: {0: FINAL["base"]}},
              "sft": {0: {50: FINAL["base"], 100: FINAL["sft"]}, 1: {50: {UP: 0.1, DOWN: 900.0}}}}
    table, _ = _table(make_run(tmp_path, values))
    assert table.mean.at["sft", UP] == pytest.approx(0.9) and table.seeds["sft"] == 1
    assert "sft: step 100 (1 of 2 seeds reached it)" in to_markdown(table)


# -- the compute axis and folded training series (issue 29) ---------------------------------------
def _compute_logs(run_dir: Path) -> None:
    """sft: 6 passes a step, seeds 0 and 1 alike; dpo: 16 a step; plus series that never change."""
    with ResultStore(run_dir / "results.sqlite") as store:
        for method, per_step, seeds in (("sft", 6, (0, 1)), ("dpo", 16, (0,))):
            for seed in seeds:
                store.log_train("run1", method, seed,
                                [(s, "compute/passes", float(per_step * s)) for s in range(1, 101)]
                                + [(s, "stage", 0.0) for s in range(1, 101)]
                                + [(s, "pairs", 8.0 if method == "dpo" else 2.0) for s in range(1, 101)]
                                + [(100, "seconds", 12.5)])


def test_metric_points_place_checkpoints_at_the_passes_spent(tmp_path: Path) -> None:
    from reports.plots import metric_points

    values = _three_methods()
    values["sft"][1] = {50: FINAL["base"], 100: FINAL["sft"]}
    run_dir = make_run(tmp_path, values)
    _compute_logs(run_dir)
    with ResultStore(run_dir / "results.sqlite") as store:
        agg, logs = store.aggregates("run1"), store.train_logs("run1")
    pts = metric_points(agg, logs, UP)
    at = {(r.method, r.seed, r.step): r.passes for r in pts.itertuples()}
    assert at == {("base", 0, 0): 0.0, ("sft", 0, 0): 0.0, ("sft", 0, 50): 300.0, ("sft", 0, 100): 600.0,
                  ("sft", 1, 0): 0.0, ("sft", 1, 50): 300.0, ("sft", 1, 100): 600.0,
                  ("dpo", 0, 0): 0.0, ("dpo", 0, 50): 800.0, ("dpo", 0, 100): 1600.0}
    assert pts.set_index(["method", "seed", "step"]).at[("dpo", 0, 100), "value"] == FINAL["dpo"][UP]
    # Without pass counts (a run from before they were logged), every checkpoint has no compute position.
    bare = metric_points(agg, logs[logs["key"] != "compute/passes"], UP)
    assert bare[bare["step"] > 0]["passes"].isna().all()


def test_constant_series_are_folded_and_compute_plots_drawn(tmp_path: Path) -> None:
    from reports.plots import constant_series, folded_note

    run_dir = make_run(tmp_path, _three_methods())
    _compute_logs(run_dir)
    with ResultStore(run_dir / "results.sqlite") as store:
        logs = store.train_logs("run1")
    folded = constant_series(logs)
    # stage never changes; pairs differs between methods but never within one; seconds is logged once (kept);
    # loss and compute/passes change.
    assert folded == {"pairs": "8 (dpo), 2 (sft)", "stage": "0 (dpo, sft)"}
    assert folded_note(folded).startswith("Constant over the run, not plotted: pairs = ")
    index = render_report(run_dir)
    plots = sorted(p.name for p in (run_dir / "report" / "plots").glob("*.png"))
    assert "train_stage.png" not in plots and "train_pairs.png" not in plots
    assert {"train_loss.png", "train_compute_passes.png", "train_seconds.png"} <= set(plots)
    assert {"metric_subject_consistency_features_tiny.png",
            "metric_subject_consistency_features_tiny_vs_passes.png"} <= set(plots)
    page = index.read_text(encoding="utf-8")
    assert "Constant over the run, not plotted: " in page and "at matched compute" in page
