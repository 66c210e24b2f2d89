"""``render_report``: a run directory in, ``run_dir/report/`` out (tables, plots, gallery, one HTML page).

The main tables, curves and gallery are written here; every other part of the report is a section
registered in reports/sections.py, rendered in turn from the same inputs.

Only reads the run (results.sqlite, run.json, samples.npz); everything it writes lives under
``report/``, and the plot and gallery folders are rebuilt each time so no stale image survives.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from harness.rundir import RunDir
from harness.store import open_readonly
from metrics.identity import directions_for
from metrics.judges import overlaps
from reports.gallery import build_gallery, eval_captions
from reports.html import build_page
from reports.plots import constant_series, folded_note, metric_curves, training_curves
from reports.run_info import load_run_info
from reports.sections import ReportInputs, page_fragment, registered_sections
from reports.tables import (
    drop_unfinished,
    final_table,
    is_tiny,
    steps_to_html,
    steps_to_markdown,
    to_html,
    to_latex,
    to_markdown,
)

GALLERY_VIDEOS = 4


def render_report(run_dir: Path, show_ci: bool = False) -> Path:
    """Write the report of one run and return the path of its ``index.html``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    db = RunDir(run_dir).results
    if not db.is_file():
        raise FileNotFoundError(f"no results store in the run directory: {db} does not exist")
    with open_readonly(db) as store:  # never creates tables; a bad file raises StoreError
        info = load_run_info(run_dir, store)
        agg = store.aggregates(info.run_id)
        logs = store.train_logs(info.run_id)
        skips = store.skips()
        records = store.records(run_id=info.run_id)
    skips = skips[skips["run_id"] == info.run_id]

    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    # Final comparisons (the main table, every section) read only seeds evaluated at their scheduled last step;
    # the per-step table and the curves keep every checkpoint, an unfinished seed's included.
    table = final_table(agg, info.methods, info.metrics, schedule=info.scheduled_steps)
    done = {"agg": drop_unfinished(agg, table.unfinished), "records": drop_unfinished(records, table.unfinished),
            "logs": drop_unfinished(logs, table.unfinished)}
    dirs = directions_for(table.metrics)
    overlap = overlaps(info.training_signals, agg["metric"].unique() if not agg.empty else [])
    opts = {"show_ci": show_ci, "directions": dirs, "preset": info.preset_name, "num_videos": info.num_videos,
            "overlap": overlap}
    order = {"show_ci": show_ci, "methods": info.methods, "metrics": info.metrics, "overlap": overlap}
    (out / "table.md").write_text(to_markdown(table, **opts), encoding="utf-8")
    (out / "table.tex").write_text(to_latex(table, **opts), encoding="utf-8")
    (out / "steps.md").write_text(steps_to_markdown(agg, **order), encoding="utf-8")

    for sub in ("plots", "gallery"):
        shutil.rmtree(out / sub, ignore_errors=True)
    metric_plots = metric_curves(agg, out / "plots", info.methods, info.metrics, dirs, logs=logs,
                                 records=records)
    plain_logs = logs[~logs["key"].str.startswith("probe/")] if not logs.empty else logs
    train_plots = training_curves(plain_logs, out / "plots", info.methods)
    train_note = folded_note(constant_series(plain_logs))
    run = ReportInputs(info=info, **done, overlap=overlap, plots=out / "plots", unfinished=table.unfinished)
    fragments: list[str] = []
    for sec in registered_sections():  # each section writes its <name>.md and adds its part of the page
        output = sec.render(run)
        if output is None:
            continue
        if output.markdown:
            (out / f"{sec.name}.md").write_text(output.markdown, encoding="utf-8")
        fragments += page_fragment(sec, output)
    gallery = build_gallery(run_dir, out / "gallery", GALLERY_VIDEOS, methods=info.methods,
                            captions=eval_captions(info.preset, GALLERY_VIDEOS))

    page = build_page(info, table_html=to_html(table, **opts), steps_html=steps_to_html(agg, **order),
                      metric_plots=metric_plots, train_plots=train_plots, train_note=train_note, gallery=gallery,
                      skips=skips, sections=fragments, tiny=is_tiny(info.preset_name, table.metrics))
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
