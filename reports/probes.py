"""The training-probe section: likelihood displacement (in the style of PG-DPO's Fig. 2), the
cross-method ``chosen_logp_step`` share, the held-out Gamma series with its share of positive steps
(pairwise preference methods only: "n/a" with the reason for the others), and the paper's own
in-training Gamma on each step's own pairs (``own_pairs/gamma``), each in its own named column."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from reports.html import plots_html
from reports.plots import method_colors, save_figure
from reports.sections import ReportInputs, SectionOutput, section
from reports.tables import markdown_grid, method_order

LD = "probe/likelihood_displacement/"
GAMMA = "probe/gamma/gamma"
STEP_COS = "probe/chosen_logp_step/cos"
OWN_GAMMA = "own_pairs/gamma"
GAMMA_NA = "n/a: not a pairwise preference loss"


def probe_logs(logs: pd.DataFrame) -> pd.DataFrame:
    """The held-out probes' logs and the preference trainers' own-pairs measurement."""
    return logs[logs["key"].str.startswith(("probe/", "own_pairs/"))] if not logs.empty else logs


def displacement_plot(logs: pd.DataFrame, out_dir: Path, methods: Sequence[str] | None = None) -> list[Path]:
    """One panel per method: change of the chosen and rejected ELBO-proxy log-likelihood
    from the reference (the start of training); below zero = displaced."""
    data = logs[logs["key"].isin([LD + "chosen_displacement", LD + "rejected_displacement"])] if len(logs) else logs
    if data.empty:
        return []
    order = method_order(data["method"], methods)
    colors = method_colors(order)
    fig = Figure(figsize=(3.2 * len(order), 3.0), layout="constrained")
    axes = fig.subplots(1, len(order), squeeze=False)[0]
    for ax, m in zip(axes, order, strict=True):
        rows = data[data["method"] == m]
        for seed, part in rows.groupby("seed"):
            for key, style, name in (("chosen", "-", "chosen"), ("rejected", "--", "rejected")):
                s = part[part["key"] == f"{LD}{key}_displacement"].sort_values("step")
                label = name if len(rows["seed"].unique()) == 1 else f"{name} seed {seed}"
                ax.plot(s["step"], s["value"], ls=style, color=colors[m], lw=1.4, label=label)
        ax.axhline(0.0, color="0.5", lw=0.8)
        ax.set_title(m, fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("log p(x) - log p_ref(x)  (ELBO proxy)")
    return [save_figure(fig, out_dir, "probe_likelihood_displacement", set())]


def gamma_plot(logs: pd.DataFrame, out_dir: Path, methods: Sequence[str] | None = None) -> list[Path]:
    data = logs[logs["key"] == GAMMA] if len(logs) else logs
    if data.empty:
        return []
    order = method_order(data["method"], methods)
    colors = method_colors(order)
    fig = Figure(figsize=(6.4, 3.2), layout="constrained")
    ax = fig.add_subplot()
    for m in order:
        for seed, s in data[data["method"] == m].groupby("seed"):
            s = s.sort_values("step")
            ax.plot(s["step"], s["value"], marker=".", color=colors[m], lw=1.0, label=f"{m} seed {seed}")
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.set_title("Gamma: first-order gain in log p(chosen) over a DPO step (> 0: better)", fontsize=10)
    ax.set_xlabel("training step")
    ax.set_ylabel("Gamma")
    ax.set_yscale("symlog", linthresh=max(1e-12, float(data["value"].abs().quantile(0.2)) or 1e-12))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return [save_figure(fig, out_dir, "probe_gamma", set())]


def probe_caption(metrics: Iterable[str]) -> str:
    """The line above the probe table: which probe set the stored probes were measured on."""
    ids = sorted({m for m in metrics if m.startswith(("likelihood_displacement[", "gamma[", "chosen_logp_step["))})
    if not ids:
        return ""
    names = ", ".join(f"`{i}`" for i in ids)
    if all("set=heldout-" in i for i in ids):
        return ("Training probes on the held-out probe set: pairs of clips no method trains on, the same for every "
                "method, with Gamma against DPO at one beta, measured for the pairwise preference methods only "
                "(docs/metrics-probes.md): " + names)
    return ("Training probes recorded without a held-out probe set (before issue #25): their pairs may be training "
            "pairs and Gamma's DPO beta may differ per method: " + names)


def probe_summary(logs: pd.DataFrame, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Per method and seed: the final chosen / rejected displacement and its minimum; the share of
    probed steps whose update raises the held-out chosen log-likelihood (``chosen_logp_step``); the
    share with held-out Gamma > 0 (as the stored checkpoint values), "n/a" with the reason for a
    method Gamma does not apply to; and the share of the paper's own-pairs Gamma > 0 in training."""
    rows = []
    if logs.empty:
        return pd.DataFrame()
    any_gamma = bool((logs["key"] == GAMMA).any())
    for (m, seed), part in logs.groupby(["method", "seed"]):
        row: dict[str, object] = {"method": m, "seed": seed}
        ch = part[part["key"] == LD + "chosen_displacement"].sort_values("step")
        rj = part[part["key"] == LD + "rejected_displacement"].sort_values("step")
        if len(ch):
            row.update({"chosen Δlog p (final)": ch["value"].iloc[-1], "chosen Δlog p (min)": ch["value"].min(),
                        "rejected Δlog p (final)": rj["value"].iloc[-1] if len(rj) else float("nan")})
        c = part[part["key"] == STEP_COS]
        if len(c):
            row["update raises held-out log p(chosen) (share)"] = float((c["value"] > 0).mean())
        g = part[part["key"] == GAMMA]
        if len(g):
            row["held-out Gamma > 0 (share)"] = float((g["value"] > 0).mean())
        elif any_gamma or len(c):  # probed, but Gamma does not apply to this method: say so, store nothing
            row["held-out Gamma > 0 (share)"] = GAMMA_NA
        own = part[part["key"] == OWN_GAMMA]
        if len(own):
            row["own-pairs Gamma > 0 (share, in training)"] = float((own["value"] > 0).mean())
        probed = part[part["key"].isin([STEP_COS, GAMMA])].groupby("key").size()
        if len(probed):
            row["probed steps"] = int(probed.max())
        rows.append(row)
    out = pd.DataFrame(rows)
    order = method_order(out["method"], methods)
    return out.set_index("method").loc[order].reset_index()


def probes_html(plots: Sequence[Path], table: pd.DataFrame | None, caption: str = "") -> list[str]:
    if not plots and (table is None or table.empty):
        return []
    parts = ["<h2>Training probes</h2>",
             '<p class="note">Likelihood displacement: the ELBO-proxy log-likelihood of the held-out probe '
             "pairs (the same for every method; no method trains on them) relative to the reference (the start "
             "of training); below zero, the chosen sample became less likely. Gamma (PG-DPO Eq. 10): the "
             "method's first-order gain in log p(chosen) over a DPO step at the probes' beta on the same pairs; "
             "a DPO run at that beta has Gamma = 0 by definition.</p>"]
    if caption:
        parts.append(f'<p class="note">{html.escape(caption)}</p>')
    if table is not None and not table.empty:
        parts.append('<div class="scroll">' + table.to_html(index=False, float_format=lambda v: f"{v:.3g}",
                                                            na_rep="–", border=0) + "</div>")
    parts.append(plots_html(plots))
    return parts


@section("probes", "Training probes")
def probes_section(run: ReportInputs) -> SectionOutput | None:
    """``probes.md`` (the summary, when any method was probed) and the page's probe plots."""
    methods = run.info.methods
    probes = probe_logs(run.logs)
    plots = displacement_plot(probes, run.plots, methods) + gamma_plot(probes, run.plots, methods)
    summary = probe_summary(probes, methods)
    caption = probe_caption(run.agg["metric"] if not run.agg.empty else [])
    text = ""
    if not summary.empty:
        cells = [[f"{v:.3g}" if isinstance(v, float) else str(v) for v in row]
                 for row in summary.itertuples(index=False)]
        text = (caption + "\n\n" if caption else "") + markdown_grid(list(summary.columns), cells)
    fragment = probes_html(plots, summary, caption)
    return SectionOutput(text, fragment) if text or fragment else None
