"""``render_report``: a run directory in, ``run_dir/report/`` out (tables, plots, gallery, one HTML page).

Only reads the run (results.sqlite, run.json, samples.npz); everything it writes lives under
``report/``, and the plot and gallery folders are rebuilt each time so no stale image survives.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from harness.store import open_readonly
from metrics.identity import directions_for
from metrics.judges import overlaps
from reports.claims import RunData, check_claims, claims_markdown
from reports.distortion import distortion_markdown, distortion_table
from reports.fcrm import fcrm_checks, fcrm_markdown, fcrm_table
from reports.gallery import build_gallery, eval_captions
from reports.hacking import hacking_markdown, hacking_table
from reports.html import build_page
from reports.plots import metric_curves, training_curves
from reports.probes import displacement_plot, gamma_plot, probe_caption, probe_logs, probe_summary
from reports.run_info import load_run_info
from reports.shift import shift_checks, shift_markdown, shift_methods, shift_table
from reports.tables import (
    final_table,
    is_tiny,
    markdown_grid,
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
    db = run_dir / "results.sqlite"
    if not db.is_file():
        raise FileNotFoundError(f"no results store in the run directory: {db} does not exist")
    with open_readonly(db) as store:  # never creates tables; a bad file raises StoreError
        info = load_run_info(run_dir, store)
        agg = store.aggregates(info.run_id)
        logs = store.train_logs(info.run_id)
        skips = store.skips()
        reward_ids = sorted({m for m in agg["metric"] if m.startswith("latent_reward[")}) if not agg.empty else []
        records = pd.concat([store.records(metric=m, run_id=info.run_id) for m in reward_ids]) if reward_ids \
            else None
        all_records = store.records(run_id=info.run_id)
    skips = skips[skips["run_id"] == info.run_id]

    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    table = final_table(agg, info.methods, info.metrics)
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
    metric_plots = metric_curves(agg, out / "plots", info.methods, info.metrics, dirs)
    plain_logs = logs[~logs["key"].str.startswith("probe/")] if not logs.empty else logs
    train_plots = training_curves(plain_logs, out / "plots", info.methods)
    probes = probe_logs(logs)
    probe_plots = (displacement_plot(probes, out / "plots", info.methods)
                   + gamma_plot(probes, out / "plots", info.methods))
    summary = probe_summary(probes, info.methods)
    caption = probe_caption(agg["metric"] if not agg.empty else [])
    if not summary.empty:
        cells = [[f"{v:.3g}" if isinstance(v, float) else str(v) for v in row]
                 for row in summary.itertuples(index=False)]
        (out / "probes.md").write_text((caption + "\n\n" if caption else "")
                                       + markdown_grid(list(summary.columns), cells), encoding="utf-8")
    distortion = distortion_table(agg, info.method_configs, info.methods)
    if not distortion.empty:
        (out / "distortion.md").write_text(distortion_markdown(distortion, info.num_videos), encoding="utf-8")
    fcrm = fcrm_table(agg, info.method_configs, logs, records)
    fcrm_text = fcrm_markdown(fcrm, fcrm_checks(fcrm))
    if fcrm_text:
        (out / "fcrm.md").write_text(fcrm_text, encoding="utf-8")
    shift_records = all_records if shift_methods(info.method_configs) else None
    shift = shift_table(agg, shift_records, info.method_configs, logs)
    shift_text = shift_markdown(shift, shift_checks(shift_records, shift_methods(info.method_configs)))
    if shift_text:
        (out / "shift.md").write_text(shift_text, encoding="utf-8")
    claims_text = claims_markdown(check_claims(RunData(all_records, logs), signals=info.training_signals),
                                  info.preset_name)
    if claims_text:
        (out / "claims.md").write_text(claims_text, encoding="utf-8")
    hacking_text = hacking_markdown(hacking_table(agg, logs, info.methods, overlap))
    if hacking_text:
        (out / "hacking.md").write_text(hacking_text, encoding="utf-8")
    gallery = build_gallery(run_dir, out / "gallery", GALLERY_VIDEOS, methods=info.methods,
                            captions=eval_captions(info.preset, GALLERY_VIDEOS))

    page = build_page(info, table_html=to_html(table, **opts), steps_html=steps_to_html(agg, **order),
                      metric_plots=metric_plots, train_plots=train_plots, gallery=gallery, skips=skips,
                      probe_plots=probe_plots, probe_table=summary, distortion=distortion, fcrm_md=fcrm_text,
                      shift_md=shift_text, hacking_md=hacking_text, claims_md=claims_text, probe_caption=caption,
                      tiny=is_tiny(info.preset_name, table.metrics))
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
