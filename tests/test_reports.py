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
from reports.tables import TINY_DISCLAIMER, final_table, format_cells, steps_to_markdown, to_latex, to_markdown

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
    """Markdown table rows keyed by their first cell; the rows of one key in successive tables (the column
    groups) are joined, so the cells come in the layout's column order."""
    lines = [line for line in md.splitlines() if line.startswith("|")]
    out: dict[str, list[str]] = {}
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        out.setdefault(cells[0], []).extend(cells[1:])
    return out


def test_markdown_marks_best_and_second_by_direction(tmp_path: Path) -> None:
    table, _ = _table(make_run(tmp_path, _three_methods()))
    assert table.methods == ["base", "sft", "dpo"] and table.metrics == METRICS
    md = to_markdown(table, preset="tiny", num_videos=4)
    rows = _md_rows(md)
    assert rows["Method"] == ["subject consistency ↑", "fvd ↓", "mystery score"]
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
    assert rows["Method"] == ["subject consistency", "fvd ↑", "mystery score"]
    assert rows["sft"] == ["0.900", "<u>250.0</u>", "3.000"] and rows["base"][1] == "**300.0**"


def test_latex_booktabs_escaped(tmp_path: Path) -> None:
    table, _ = _table(make_run(tmp_path, _three_methods()))
    tex = to_latex(table, preset="tiny", num_videos=4)
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}{lrr}", r"\begin{tabular}{lr}"):
        assert rule in tex
    assert r"subject\\consistency $\uparrow$" in tex and r"fvd $\downarrow$" in tex  # header on two lines
    assert r"sft & \textbf{0.900} & \underline{250.0} \\" in tex and r"sft & 3.000 \\" in tex
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
    md = (run_dir / "report" / "table.md").read_text(encoding="utf-8")
    assert _md_rows(md)["base"] == ["0.800", "300.0", "1.000"]


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


def test_a_method_short_of_its_scheduled_last_step_is_left_out_of_final_comparisons(tmp_path: Path) -> None:
    """An interrupted run: dpo was evaluated at step 50 of its 100 and sft's seed 1 at 50 of 100. The highest
    stored step (50 for dpo) must not read as final: the main table leaves them out and says so, while the
    per-step table still lists every checkpoint."""
    values = _three_methods()
    values["dpo"][0] = {50: {**FINAL["dpo"], UP: 0.99}}
    values["sft"][1] = {50: {**FINAL["sft"], UP: 0.1}}
    run_dir = make_run(tmp_path, values)
    meta = json.loads((run_dir / "run.json").read_text())
    meta["methods"] = {"sft": {"steps": 100, "eval_every": 50}, "dpo": {"steps": 100, "eval_every": 50}}
    (run_dir / "run.json").write_text(json.dumps(meta))
    render_report(run_dir)
    md = (run_dir / "report" / "table.md").read_text(encoding="utf-8")
    rows = _md_rows(md)
    assert "dpo" not in rows and rows["sft"][0] == "**0.900**"  # seed 1's 0.1 at step 50 is not averaged in
    assert ("Unfinished, left out of the final tables and claims: dpo seed 0 (evaluated to step 50 of 100); "
            "sft seed 1 (evaluated to step 50 of 100)") in md
    assert "sft: step 100 (1 of 2 seeds reached it)" in md
    assert "Unfinished, left out" in (run_dir / "report" / "index.html").read_text(encoding="utf-8")
    assert "| dpo | 0 | 50 |" in (run_dir / "report" / "steps.md").read_text(encoding="utf-8").replace("  ", " ")
    # without a recorded schedule (an older run.json), the highest stored step is final, as before
    with ResultStore(run_dir / "results.sqlite") as store:
        assert final_table(store.aggregates("run1"), ["sft", "dpo"], METRICS).mean.at["dpo", UP] == 0.99


# ---- paper layout: groups, LaTeX structure, HTML group headers ---------------------------------------------

QUALITY = ["subject_consistency[features=tiny]", "background_consistency[features=tiny]",
           "motion_smoothness[interp=flowinterp-dis]", "dynamic_degree[flow=dis]", "temporal_flickering[flow=dis]"]
I2V = ["i2v_subject[features=tiny]", "i2v_background[features=tiny]"]
ROLLUPS = ["rollup:vbench_i2v_partial_quality[tiny]", "rollup:vbench_i2v_partial_total[tiny]",
           "rollup:vbench_i2v_partial_i2v[tiny]"]
SHIFT_ROLLUPS = ["rollup:shift_appearance[tiny]", "rollup:shift_overall[tiny]"]
FVD = "fvd[features=tiny-clip,gen=4,n_ref=512]"
EXTRA = ["motion_score[flow=dis,stat=mean]", "distortion_rate[judge=oracle]",
         "rollup:shift_motion_minus_appearance[tiny]", "latent_reward[model=b85d55c9a947f847]",
         "gamma[beta=100,pairs=4,set=heldout-eval-100000,stat=positive_share]", UNKNOWN]
# Stored in an order unlike the papers': the layout must put them in their groups.
LAYOUT_METRICS = [*EXTRA[:2], FVD, *SHIFT_ROLLUPS, *QUALITY, *ROLLUPS, *EXTRA[2:], *I2V]


def _layout_table(tmp_path: Path, metrics: list[str], methods: tuple[str, ...] = ("base", "sft", "dpo")):
    values = {m: {0: {0 if m == "base" else 100: {x: 0.5 + 0.01 * i + 0.1 * j for j, x in enumerate(metrics)}}}
              for i, m in enumerate(methods)}
    run_dir = make_run(tmp_path, values)
    with ResultStore(run_dir / "results.sqlite") as store:
        return final_table(store.aggregates("run1"), [m for m in methods if m != "base"], metrics)


def test_layout_groups_columns_as_the_papers() -> None:
    from reports.tables import EXTRA_TITLE, MAIN_TITLE, layout, metric_order

    blocks = layout(LAYOUT_METRICS)
    assert [b.title for b in blocks] == [MAIN_TITLE, EXTRA_TITLE]
    main, extra = ([(g.title, list(cols)) for g, cols in b.groups] for b in blocks)
    assert main == [("VBench-I2V quality", QUALITY), ("I2V and camera motion", I2V), ("VBench-I2V roll-up", ROLLUPS),
                    ("SHIFT roll-up", SHIFT_ROLLUPS), ("Distribution", [FVD])]
    assert extra == [("Motion", EXTRA[:1]), ("Hacking diagnostics", EXTRA[1:3]), ("Training judges", EXTRA[3:4]),
                     ("Training probes", EXTRA[4:5]), ("Other", [UNKNOWN])]
    assert layout([UNKNOWN])[0].title == EXTRA_TITLE  # no main table without a main column
    # the tables' column order: VBench-I2V's dimensions in its suite's order, whatever the run's order
    assert metric_order(LAYOUT_METRICS[::-1])[:len(QUALITY) + len(I2V)] == [*QUALITY, *I2V]


def test_every_builtin_metric_declares_its_group() -> None:
    from metrics.base import MetricSpec
    from metrics.registry import list_metrics

    assert {s.name for s in list_metrics() if s.group == "other"} == set()
    with pytest.raises(ValueError, match="group 'quality' is not one of"):
        MetricSpec(name="x", version="1", higher_is_better=True, kind="per-video", aggregation="mean",
                   vbench_range=None, inputs=(), weights=(), description="", group="quality")


def test_markdown_one_table_per_group_in_order(tmp_path: Path) -> None:
    table = _layout_table(tmp_path, LAYOUT_METRICS)
    md = to_markdown(table, preset="tiny", num_videos=4)
    titles = re.findall(r"^\*\*(.+)\*\*$", md, flags=re.M)
    assert titles == ["VBench-I2V quality", "I2V and camera motion", "VBench-I2V roll-up", "SHIFT roll-up",
                      "Distribution", "Motion", "Hacking diagnostics", "Training judges", "Training probes", "Other"]
    assert md.index("### Main results") < md.index("**Distribution**") < md.index("### Method-specific")
    rows = _md_rows(md)
    assert rows["Method"][len(QUALITY) + len(I2V):][:2] == ["partial quality ↑", "partial total ↑"]
    # the same numbers as the flat table: each cell is the value of its metric, in the layout's order
    order = [*QUALITY, *I2V, *ROLLUPS, *SHIFT_ROLLUPS, FVD, *EXTRA]
    assert [re.sub(r"\*\*|</?u>", "", c) for c in rows["sft"]] == list(format_cells(table).loc["sft", order])
    assert rows["sft"][0] == "<u>1.010</u>" and rows["dpo"][0] == "**1.020**"  # marks survive the split
    assert md.index("Backends:") > md.index("**Other**")  # the backends are a footnote, below the tables


_NESTED = re.compile(r"\\begin\{tabular\}\[b\]\{@\{\}c@\{\}\}.*?\\end\{tabular\}")


def _cells(row: str) -> int:
    """Columns a row spans: its cells, a \\multicolumn{n} counting n."""
    return sum(int(m.group(1)) if (m := re.match(r"\s*\\multicolumn\{(\d+)\}", c)) else 1 for c in row.split("&"))


def check_latex(tex: str) -> list[int]:
    """Structure of ``to_latex`` output, raising AssertionError: balanced environments; in each tabular, every
    row spans the column count of its preamble; group spans and \\cmidrule ranges cover the metric columns
    exactly. Returns each tabular's column count."""
    tex = _NESTED.sub("X", tex)  # a two-line header cell is one cell
    stack: list[str] = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", tex):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack and stack.pop() == env, f"\\end{{{env}}} closes {stack[-1:] or 'nothing'}"
    assert not stack, f"unclosed environments: {stack}"
    assert tex.count("{") - tex.count(r"\{") == tex.count("}") - tex.count(r"\}"), "unbalanced braces"
    counts = []
    for spec, body in re.findall(r"\\begin\{tabular\}\{(l[rc]*)\}\n(.*?)\\end\{tabular\}", tex, flags=re.S):
        n = len(spec)
        rows = [ln.strip()[:-2] for ln in body.splitlines() if ln.strip().endswith(r"\\")]
        assert rows, "a tabular without rows"
        for row in rows:
            assert _cells(row) == n, f"row spans {_cells(row)} of {n} columns: {row[:60]}"
        spans = re.findall(r"\\multicolumn\{(\d+)\}\{c\}", body)
        if spans:  # the grouped header: the groups cover every metric column, the rules the same ranges
            assert sum(map(int, spans)) == n - 1, f"group spans {spans} do not sum to {n - 1} columns"
            ranges = [(int(a), int(b)) for a, b in re.findall(r"\\cmidrule\(lr\)\{(\d+)-(\d+)\}", body)]
            assert [b - a + 1 for a, b in ranges] == list(map(int, spans))
            assert ranges[0][0] == 2 and ranges[-1][1] == n
            assert all(b + 1 == c for (_, b), (c, _) in zip(ranges, ranges[1:], strict=False))
        counts.append(n)
    return counts


def test_latex_grouped_header_structure(tmp_path: Path) -> None:
    from reports.tables import MAX_COLUMNS, layout, transposed

    table = _layout_table(tmp_path, LAYOUT_METRICS)
    tex = to_latex(table, preset="tiny", num_videos=4)
    # main table: 13 columns > MAX_COLUMNS, transposed (methods as columns); the other one grouped
    assert len([*QUALITY, *I2V, *ROLLUPS, *SHIFT_ROLLUPS, FVD]) > MAX_COLUMNS >= len(EXTRA)
    assert check_latex(tex) == [1 + 3, 1 + len(EXTRA)]
    # transposed: each group's title is a row across the method columns, its metrics the rows below it
    assert r"\multicolumn{4}{l}{\textit{VBench-I2V quality}} \\" in tex
    assert "\\textit{Distribution}} \\\\\n    fvd $\\downarrow$ & 0.7 & " in tex
    assert r"\multicolumn{2}{c}{Hacking diagnostics}" in tex and r"\cmidrule(lr){3-4}" in tex
    assert tex.count(r"\begin{table}") == 2 and r"\label{tab:results}" in tex and r"\label{tab:results-extra}" in tex
    assert tex.count(r"\resizebox{\ifdim\width>\textwidth\textwidth\else\width\fi}{!}") == 2
    caption_end = tex.index(r"\label{tab:results}")
    assert "Backends:" not in tex[:caption_end] and r"\footnotesize\raggedright Backends: [features=tiny]" in tex
    narrow_table = _layout_table(tmp_path / "n", [*QUALITY, FVD])
    narrow = to_latex(narrow_table)
    assert check_latex(narrow) == [1 + len(QUALITY) + 1]
    # the same six columns with CIs in every cell are too wide for a page: transposed
    assert transposed(layout(narrow_table.metrics)[0], narrow_table, show_ci=True)
    assert check_latex(to_latex(narrow_table, show_ci=True)) == [1 + 3]
    assert r"\multicolumn{5}{c}{VBench-I2V quality} & \multicolumn{1}{c}{Distribution}" in narrow


@pytest.mark.parametrize("damage", [
    lambda t: t.replace(r"sft & ", "sft & 1.0 & ", 1),  # a row with one cell too many
    lambda t: t.replace(r"\multicolumn{5}{c}", r"\multicolumn{4}{c}", 1),  # group spans short of the columns
    lambda t: t.replace(r"\cmidrule(lr){2-6}", r"\cmidrule(lr){2-5}", 1),  # a rule that does not match its group
    lambda t: t.replace(r"\end{table}", "", 1),  # an unclosed environment
])
def test_latex_structure_check_catches_damage(tmp_path: Path, damage) -> None:
    tex = to_latex(_layout_table(tmp_path, [*QUALITY, FVD]))
    check_latex(tex)
    broken = damage(tex)
    assert broken != tex
    with pytest.raises(AssertionError):
        check_latex(broken)


def test_latex_compiles(tmp_path: Path) -> None:
    """Both tables typeset in a plain article: no error, and nothing wider than the page (no overfull box)."""
    import shutil
    import subprocess

    engine = shutil.which("pdflatex")
    if engine is None:
        pytest.skip("no TeX engine (pdflatex) installed; test_latex_grouped_header_structure checks the structure")
    table = _layout_table(tmp_path, LAYOUT_METRICS, ("base", "sft", "dpo", "pgdpo", "apo", "fcrm", "shift"))
    doc = tmp_path / "doc.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{graphicx}\n\\begin{document}\n"
                   + to_latex(table, preset="tiny", num_videos=4, show_ci=True) + "\\end{document}\n", encoding="utf-8")
    proc = subprocess.run([engine, "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    log = (tmp_path / "doc.log").read_text(encoding="latin-1")
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "Overfull" not in log, log[log.index("Overfull"):][:400]


def test_html_group_headers_span_their_columns(tmp_path: Path) -> None:
    from reports.tables import to_html

    page = to_html(_layout_table(tmp_path, LAYOUT_METRICS), preset="tiny", num_videos=4)
    main, extra = re.findall(r'<table class="results(?: transposed)?">(.*?)</table>', page)
    # the main table has 13 columns: transposed as in LaTeX, each group a title row over its metrics' rows
    assert re.findall(r'class="group-row">([^<]*)</th>', main) == [
        "VBench-I2V quality", "I2V and camera motion", "VBench-I2V roll-up", "SHIFT roll-up", "Distribution"]
    assert all(row.count("<td>") == 3 for row in re.findall(r"<tr><th>[^<]*</th>(.*?)</tr>", main.split("<tbody>")[1]))
    # the other one: a spanning group row over the metric headers, every body row as wide as the spans
    head1, head2 = re.findall(r"<tr>(.*?)</tr>", extra.split("<tbody>")[0])
    assert re.findall(r'class="group">([^<]*)</th>', head1) == [
        "Motion", "Hacking diagnostics", "Training judges", "Training probes", "Other"]
    spans = sum(map(int, re.findall(r'colspan="(\d+)"', head1)))
    assert spans == head2.count("<th>") == len(EXTRA)
    for row in re.findall(r"<tr>(.*?)</tr>", extra.split("<tbody>")[1]):
        assert row.count("<td") == spans
    assert page.index("Backends:") > page.rindex("</table>")


def test_report_fits_1400px_in_chromium(tmp_path: Path) -> None:
    """The rendered page of seven methods with CIs has no horizontal scroll bar at 1400 px, measured in headless
    Chromium by scripts/report_width.py; the same page at 700 px does not fit, so the measurement can fail."""
    import shutil
    import subprocess

    if not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")):
        pytest.skip("no Chromium installed; scripts/report_width.py measures a report where one is")
    methods = ("base", "sft", "dpo", "pgdpo", "apo", "fcrm", "shift")
    values = {m: {0: {0 if m == "base" else 100: {x: 0.5 + 0.01 * i + 0.1 * j for j, x in enumerate(LAYOUT_METRICS)}}}
              for i, m in enumerate(methods)}
    page = render_report(make_run(tmp_path, values), show_ci=True)
    script = Path(__file__).resolve().parents[1] / "scripts" / "report_width.py"

    def measure(width: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), str(page), "--width", str(width)], capture_output=True,
                              text=True, timeout=180)

    fits = measure(1400)
    assert fits.returncode == 0, fits.stdout[-1500:] + fits.stderr[-500:]
    assert json.loads(fits.stdout[:fits.stdout.rindex("}") + 1])["overflowing"] == []
    narrow = measure(700)
    assert narrow.returncode == 1 and "does NOT fit" in narrow.stdout


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


def test_curves_put_every_point_on_the_same_videos():
    """Checkpoints on a 16-video subset and base/last on the full set: a curve's points are recomputed on the
    shared videos from the per-video records (which reproduce the stored values), so the curve does not move
    with the subset; a metric without records keeps only its points on the full set."""
    import pandas as pd

    from reports.plots import on_shared_videos

    rng = np.random.default_rng(0)
    full, sub = [f"v{i}" for i in range(8)], [f"v{i}" for i in range(2)]
    recs, aggs = [], []
    for cid, (step, ids) in enumerate([(0, full), (1, sub), (2, full)]):
        vals = rng.random(len(ids)) + (5.0 if step == 0 else 0.0)  # the first two videos differ from the rest
        recs += [{"checkpoint_id": cid, "metric": "m", "video_id": v, "value": x, "weight": 1.0}
                 for v, x in zip(ids, vals, strict=True)]
        aggs.append({"checkpoint_id": cid, "method": "base" if step == 0 else "sft", "seed": 0, "step": step,
                     "metric": "m", "value": vals.mean(), "ci_low": None, "ci_high": None,
                     "extras": {"eval_videos": len(ids)}})
        aggs.append({"checkpoint_id": cid, "method": "base" if step == 0 else "sft", "seed": 0, "step": step,
                     "metric": "rollup:r", "value": 1.0, "ci_low": None, "ci_high": None,
                     "extras": {"eval_videos": len(ids)}})
    agg, records = pd.DataFrame(aggs), pd.DataFrame(recs)
    out, notes = on_shared_videos(agg, records)
    m = out[out["metric"] == "m"].set_index("step")["value"]
    for step in (0, 1, 2):
        r = records[(records["checkpoint_id"] == step) & records["video_id"].isin(sub)]
        assert m[step] == pytest.approx(r["value"].mean())  # the same two videos at every step
    assert notes["m"] == "all points on the same 2 eval videos (tables: 8 at base and last)"
    assert sorted(out[out["metric"] == "rollup:r"]["step"]) == [0, 2]  # no records: only the full-set points
    assert "no per-video values at 2" in notes["rollup:r"]
    bad = records.assign(value=records["value"] + (records["checkpoint_id"] == 2))  # records that disagree
    out, notes = on_shared_videos(agg, bad)
    assert sorted(out[out["metric"] == "m"]["step"]) == [0, 2]
    same = agg[agg["step"] != 1]  # one set size: returned as stored, no note
    out, notes = on_shared_videos(same, records)
    assert out.equals(same) and notes == {}


def test_step_tables_name_each_rows_eval_set_size():
    import pandas as pd

    def row(method, step, n, value):
        return {"method": method, "seed": 0, "step": step, "metric": "motion_score[flow=dis,stat=mean]",
                "value": value, "ci_low": None, "ci_high": None, "extras": {"eval_videos": n}}

    mixed = pd.DataFrame([row("base", 0, 192, 0.25), row("sft", 50, 16, 0.2), row("sft", 100, 192, 0.22)])
    lines = steps_to_markdown(mixed).splitlines()
    assert lines[0].startswith("| Method | Seed | Step | Videos |")
    assert [line.split("|")[4].strip() for line in lines[2:5]] == ["192", "16", "192"]
    one = pd.DataFrame([row("base", 0, 48, 0.25), row("sft", 100, 48, 0.22)])
    assert "Videos" not in steps_to_markdown(one)  # one set size: no column


def test_hacking_diagnostics_compare_full_set_checkpoints_only():
    """A dip at a 16-video intermediate checkpoint is the subset's noise, not a peak or a fall of the gap."""
    import pandas as pd

    from reports.hacking import hacking_table
    from reports.tables import full_set_only

    gap = "rollup:shift_motion_minus_appearance"

    def row(method, step, n, value, metric=gap):
        return {"method": method, "seed": 0, "step": step, "metric": metric, "value": value, "ci_low": None,
                "ci_high": None, "extras": {"eval_videos": n} if n else {"kind": "training-probe"}}

    agg = pd.DataFrame([row("base", 0, 192, 0.08), row("shift", 50, 16, 0.30), row("shift", 100, 192, 0.05),
                        row("shift", 50, None, 1.0, "chosen_logp_step[x]")])
    kept = full_set_only(agg)
    assert sorted(zip(kept["step"], kept["metric"], strict=True)) == [
        (0, gap), (50, "chosen_logp_step[x]"), (100, gap)]  # the probe has no set size: kept
    table = hacking_table(agg, None, ["shift"])
    assert 50 not in set(table[table["gap"].notna()]["step"])


def test_rollup_curves_are_recomputed_from_their_dimensions_on_the_shared_videos():
    import pandas as pd

    from reports.plots import on_shared_videos

    rng = np.random.default_rng(1)
    dims = ["motion_smoothness[interp=x]", "dynamic_degree[flow=x]"]
    full, sub = [f"v{i}" for i in range(6)], ["v0", "v1"]
    recs, aggs = [], []
    for cid, (step, ids) in enumerate([(0, full), (1, sub), (2, full)]):
        means = {}
        for d in dims:
            vals = rng.random(len(ids))
            recs += [{"checkpoint_id": cid, "metric": d, "video_id": v, "value": x, "weight": 1.0}
                     for v, x in zip(ids, vals, strict=True)]
            means[d] = vals.mean()
        common = {"checkpoint_id": cid, "method": "base" if step == 0 else "sft", "seed": 0, "step": step,
                  "ci_low": None, "ci_high": None, "extras": {"eval_videos": len(ids)}}
        aggs += [{**common, "metric": d, "value": means[d]} for d in dims]
        aggs.append({**common, "metric": "rollup:shift_motion[tiny]", "value": float(np.mean(list(means.values())))})
    agg, records = pd.DataFrame(aggs), pd.DataFrame(recs)
    out, notes = on_shared_videos(agg, records)
    roll = out[out["metric"] == "rollup:shift_motion[tiny]"].set_index("step")["value"]
    for step in (0, 1, 2):
        r = records[(records["checkpoint_id"] == step) & records["video_id"].isin(sub)]
        assert roll[step] == pytest.approx(r.groupby("metric")["value"].mean().mean())  # its dimensions on v0, v1
    assert notes["rollup:shift_motion[tiny]"].startswith("all points (from its dimensions) on the same 2 eval videos")
    stale = agg.assign(value=np.where(agg["metric"].str.startswith("rollup:") & (agg["step"] == 2), 9.0, agg["value"]))
    out, notes = on_shared_videos(stale, records)  # a stored roll-up its dimensions do not reproduce
    assert sorted(out[out["metric"] == "rollup:shift_motion[tiny]"]["step"]) == [0, 2]


def test_a_column_without_any_value_is_explained_under_the_table(tmp_path: Path) -> None:
    """Before: temporal flickering showed a column of '–' on the tiny preset with no word on why (its static
    filter admits no 16-px video). Now the footnote says that no method has a value and why, from the metric's
    own MetricSpec.undefined; a metric that declares no reason still gets the line."""
    flicker, other = "temporal_flickering[flow=dis]", "motion_score[flow=dis,stat=mean]"
    table = _layout_table(tmp_path, [QUALITY[0], flicker, other])
    table.mean[[flicker, other]] = np.nan
    md = to_markdown(table, preset="tiny", num_videos=4)
    (line,) = [x for x in md.splitlines() if x.startswith("–: no value for any method.")]
    assert "temporal flickering: with its static filter" in line and "static_filter=False" in line
    assert "motion score: undefined at every final checkpoint." in line
    assert "subject consistency" not in line
    table.mean[flicker] = 0.9  # one method with a value: no note for that column
    table.mean[other] = 0.5
    assert "no value for any method" not in to_markdown(table, preset="tiny", num_videos=4)
