"""The paper-style results table and the per-step appendix table, as frames and as Markdown/LaTeX/HTML.

The main table has one row per method (the base model first) at its final checkpoint and one column
per metric. Numbers are computed once (:func:`final_table`); the three renderers share the formatting
and the best/second-best marking, so the Markdown, LaTeX and HTML versions never disagree.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from metrics.identity import directions_for, is_rollup, metric_backend
from metrics.judges import MARK
from reports.identity import arrow, backend_summary, column_labels, decimals_for, format_number

BASE = "base"
TINY_DISCLAIMER = ("Numbers from the tiny preset are about the synthetic tiny world; they are not VBench "
                   "or FVD of a real model.")
_KEY = ["method", "seed", "step"]
Directions = Mapping[str, bool | None] | None  # by identity or bare name; None: ask the metric registry
# {method: {metric identity: [judges it shares with the method's training]}} (metrics.judges.overlaps)
Overlap = Mapping[str, Mapping[str, Sequence[str]]] | None
_NUMERIC = ["value", "ci_low", "ci_high"]


@dataclass
class FinalTable:
    """Numbers of the main table: frames indexed by method, columns by metric identity."""

    mean: pd.DataFrame  # mean over seeds at the final step
    std: pd.DataFrame  # std over seeds (ddof=1); NaN with one seed
    ci_low: pd.DataFrame  # 95 % CI over videos, meaningful with one seed
    ci_high: pd.DataFrame
    seeds: pd.Series  # number of seeds averaged (those that reached the final step), per method
    step: pd.Series  # the final step, per method
    seeds_run: pd.Series  # number of seeds with any evaluated checkpoint, per method

    @property
    def methods(self) -> list[str]:
        return list(self.mean.index)

    @property
    def metrics(self) -> list[str]:
        return list(self.mean.columns)


def _ordered(items: Iterable[str], preferred: Sequence[str] | None = None,
             first: Sequence[str] = ()) -> list[str]:
    present = list(dict.fromkeys(items))
    head = list(dict.fromkeys(x for x in (*first, *(preferred or ())) if x in present))
    return head + [x for x in present if x not in head]


def method_order(methods: Iterable[str], preferred: Sequence[str] | None = None) -> list[str]:
    """Base first, then the run's order, then anything else in order of appearance."""
    return _ordered(methods, preferred, first=(BASE,))


def metric_order(metrics: Iterable[str], preferred: Sequence[str] | None = None) -> list[str]:
    """The run's metric order, then other metrics, roll-ups last."""
    return sorted(_ordered(metrics, preferred), key=is_rollup)  # sort is stable


def clean_aggregates(agg: pd.DataFrame) -> pd.DataFrame:
    """The columns the reports use, with NULL numbers as NaN floats (SQLite NULLs arrive as None)."""
    cols = [*_KEY, "metric", *_NUMERIC]
    out = agg.reindex(columns=cols).copy()
    for col in _NUMERIC:
        out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    return out


def final_table(agg: pd.DataFrame, methods: Sequence[str] | None = None,
                metrics: Sequence[str] | None = None) -> FinalTable:
    """Each method's highest step; seeds that reached it are averaged (std over them kept for ± display)."""
    agg = clean_aggregates(agg)
    at = agg[agg["step"] == agg.groupby("method")["step"].transform("max")]
    rows = method_order(at["method"], methods)
    cols = metric_order(at["metric"], metrics)
    by = at.groupby(["method", "metric"])

    def grid(series: pd.Series) -> pd.DataFrame:
        frame = series.unstack("metric") if len(series) else pd.DataFrame()
        return frame.reindex(index=rows, columns=cols).astype(float)

    per_method = at.groupby("method")
    return FinalTable(
        mean=grid(by["value"].mean()), std=grid(by["value"].std(ddof=1)),
        ci_low=grid(by["ci_low"].mean()), ci_high=grid(by["ci_high"].mean()),
        seeds=per_method["seed"].nunique().reindex(rows).fillna(0).astype(int),
        step=per_method["step"].max().reindex(rows).fillna(0).astype(int),
        seeds_run=agg.groupby("method")["seed"].nunique().reindex(rows).fillna(0).astype(int),
    )


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def format_cells(table: FinalTable, show_ci: bool = False, pm: str = "±") -> pd.DataFrame:
    """Cell text: the value, plus '± std' (several seeds) or '[lo, hi]' (one seed) when ``show_ci``."""
    out = pd.DataFrame("", index=table.mean.index, columns=table.mean.columns, dtype=object)
    for col in table.metrics:
        d = decimals_for(col, table.mean[col])
        for m in table.methods:
            v = table.mean.at[m, col]
            text = format_number(v, d)
            if show_ci and _finite(v):
                std, lo, hi = table.std.at[m, col], table.ci_low.at[m, col], table.ci_high.at[m, col]
                if table.seeds[m] > 1 and _finite(std):
                    text += f" {pm} {format_number(std, d)}"
                elif table.seeds[m] == 1 and _finite(lo) and _finite(hi):
                    text += f" [{format_number(lo, d)}, {format_number(hi, d)}]"
            out.at[m, col] = text
    return out


def rank_marks(table: FinalTable, directions: Mapping[str, bool | None]) -> pd.DataFrame:
    """'best' / 'second' / '' per cell, judged on the displayed (rounded) means.

    No marks where the direction is unknown, fewer than two rows have a value, or all values tie.
    """
    out = pd.DataFrame("", index=table.mean.index, columns=table.mean.columns, dtype=object)
    for col in table.metrics:
        higher = directions.get(col)
        values = table.mean[col].dropna()
        if higher is None or len(values) < 2:
            continue
        shown = values.round(decimals_for(col, values))
        distinct = sorted(set(shown), reverse=higher)
        if len(distinct) < 2:
            continue
        out.loc[shown.index[shown == distinct[0]], col] = "best"
        out.loc[shown.index[shown == distinct[1]], col] = "second"
    return out


def is_tiny(preset: str | None, metrics: Iterable[str]) -> bool:
    """Whether the tiny-world disclaimer applies: the tiny preset or a tiny feature backend."""
    tiny_backend = any("tiny" in (metric_backend(m) or "") for m in metrics)
    return bool(preset and "tiny" in preset.lower()) or tiny_backend


def _seed_note(used: int, run: int) -> str:
    note = f", mean of {used} seeds" if used > 1 else ""
    return note + (f" ({used} of {run} seeds reached it)" if used < run else "")


def overlap_line(overlap: Overlap, methods: Iterable[str], metrics: Iterable[str]) -> str | None:
    """The footnote of the overlap mark: which methods trained on which metrics' judges."""
    metrics = set(metrics)
    parts = []
    for m in methods:
        hits = {i: j for i, j in (overlap or {}).get(m, {}).items() if i in metrics}
        if hits:
            judges = sorted({x for j in hits.values() for x in j})
            names = sorted({i.split("[", 1)[0] for i in hits})
            parts.append(f"{m} trained on the {', '.join(judges)} judge ({', '.join(names)})")
    if not parts:
        return None
    return (f"{MARK}: the method trained on this metric's judge, so the number is not a held-out measurement of "
            "it: " + "; ".join(parts) + ".")


def _marked(overlap: Overlap, method: str, identity: str) -> bool:
    return bool((overlap or {}).get(method, {}).get(identity))


def caption_lines(table: FinalTable, preset: str | None, num_videos: int | None,
                  show_ci: bool = False, overlap: Overlap = None) -> list[str]:
    """Plain-text caption: what was evaluated, with which backends, what a cell is, and the disclaimer."""
    size = f"{num_videos} videos" if num_videos else "size unknown"
    lines = [f"Preset: {preset or 'unknown'}; eval set: {size}; backends: "
             f"{backend_summary(table.metrics) or 'none'}."]
    finals = "; ".join(f"{m}: step {table.step[m]}" + _seed_note(table.seeds[m], table.seeds_run[m])
                       for m in table.methods)
    cell = f"Each cell: the value at the method's final checkpoint ({finals or 'none evaluated'})."
    if show_ci:
        cell += " Several seeds: mean ± std over seeds; one seed: value [95 % bootstrap CI over videos]."
    lines.append(cell + " Bold: best, underlined: second best, in the direction of the arrow.")
    if note := overlap_line(overlap, table.methods, table.metrics):
        lines.append(note)
    if is_tiny(preset, table.metrics):
        lines.append(TINY_DISCLAIMER)
    return lines


# ---- renderers ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Style:
    escape: Callable[[str], str]
    bold: str
    under: str
    pm: str
    up: str
    down: str
    mark: str = "†"


def _md_escape(text: str) -> str:
    return text.replace("|", r"\|")


_LATEX_CHARS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                "±": r"$\pm$", "–": "--", "↑": r"$\uparrow$", "↓": r"$\downarrow$"}


def latex_escape(text: str) -> str:
    """Escape LaTeX specials (underscores above all) and map the few non-ASCII symbols used here."""
    return "".join(_LATEX_CHARS.get(c, c) for c in text)


MARKDOWN = _Style(_md_escape, "**{}**", "<u>{}</u>", "±", "↑", "↓")
LATEX = _Style(latex_escape, r"\textbf{{{}}}", r"\underline{{{}}}", r"$\pm$", r"$\uparrow$", r"$\downarrow$",
               r"$^\dagger$")
HTML = _Style(html.escape, "<strong>{}</strong>", "<u>{}</u>", "±", "↑", "↓",
              '<sup class="overlap" title="trained on this metric\'s judge">†</sup>')


def _styled(table: FinalTable, style: _Style, show_ci: bool,
            directions: Mapping[str, bool | None] | None, overlap: Overlap = None) -> tuple[list[str], list[list[str]]]:
    """Escaped header and body cells with arrows and marks applied."""
    dirs = directions_for(table.metrics, directions)
    labels = column_labels(table.metrics)
    headers = ["Method"] + [
        style.escape(labels[c]) + (f" {arrow(dirs[c], style.up, style.down)}" if dirs[c] is not None else "")
        for c in table.metrics]
    cells = format_cells(table, show_ci, pm="\0")  # placeholder survives escaping, then becomes pm
    marks = rank_marks(table, dirs)
    body = []
    for m in table.methods:
        row = [style.escape(m)]
        for c in table.metrics:
            text = style.escape(cells.at[m, c]).replace("\0", style.pm)
            mark = marks.at[m, c]
            text = (style.bold.format(text) if mark == "best" else
                    style.under.format(text) if mark == "second" else text)
            row.append(text + (style.mark if _marked(overlap, m, c) else ""))
        body.append(row)
    return headers, body


def markdown_grid(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    align = ["---"] + ["---:"] * (len(headers) - 1)
    lines = ["| " + " | ".join(r) + " |" for r in (headers, align, *rows)]
    return "\n".join(lines) + "\n"


def to_markdown(table: FinalTable, *, show_ci: bool = False, directions: Directions = None,
                preset: str | None = None, num_videos: int | None = None, overlap: Overlap = None) -> str:
    """Caption paragraphs then a GitHub table (bold best, <u>second</u>, ↑/↓ headers, † overlap)."""
    caption = "\n\n".join(_md_escape(line) for line in caption_lines(table, preset, num_videos, show_ci, overlap))
    if not table.metrics:
        return caption + "\n\n_No results stored for this run._\n"
    return caption + "\n\n" + markdown_grid(*_styled(table, MARKDOWN, show_ci, directions, overlap))


def to_latex(table: FinalTable, *, show_ci: bool = False, directions: Directions = None,
             preset: str | None = None, num_videos: int | None = None, label: str = "tab:results",
             overlap: Overlap = None) -> str:
    """A booktabs ``table`` environment (needs only ``\\usepackage{booktabs}``)."""
    caption = " ".join(latex_escape(line) for line in caption_lines(table, preset, num_videos, show_ci, overlap))
    caption = caption.replace(latex_escape(MARK), r"$^\dagger$")
    headers, body = _styled(table, LATEX, show_ci, directions, overlap)
    lines = ["% requires \\usepackage{booktabs}", r"\begin{table}[t]", r"  \centering",
             f"  \\caption{{{caption}}}", f"  \\label{{{label}}}",
             f"  \\begin{{tabular}}{{l{'r' * len(table.metrics)}}}", r"    \toprule",
             "    " + " & ".join(headers) + r" \\", r"    \midrule",
             *("    " + " & ".join(row) + r" \\" for row in body),
             r"    \bottomrule", r"  \end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_html(table: FinalTable, *, show_ci: bool = False, directions: Directions = None,
            preset: str | None = None, num_videos: int | None = None, overlap: Overlap = None) -> str:
    """A ``<table>`` with the same marks; the caption lines become its ``<caption>``."""
    caption = "<br>".join(html.escape(line) for line in caption_lines(table, preset, num_videos, show_ci, overlap))
    if not table.metrics:
        return f'<p class="caption">{caption}</p><p>No results stored for this run.</p>'
    headers, body = _styled(table, HTML, show_ci, directions, overlap)
    head = "".join(f"<th>{h}</th>" for h in headers)
    rows = "".join("<tr><th>" + row[0] + "</th>" + "".join(f"<td>{c}</td>" for c in row[1:]) + "</tr>"
                   for row in body)
    return (f'<table class="results"><caption>{caption}</caption><thead><tr>{head}</tr></thead>'
            f"<tbody>{rows}</tbody></table>")


# ---- per-step appendix table ---------------------------------------------------------------------------

def step_table(agg: pd.DataFrame, methods: Sequence[str] | None = None,
               metrics: Sequence[str] | None = None, column: str = "value") -> pd.DataFrame:
    """One row per (method, seed, step), one numeric column per metric (``column``: value, ci_low, ...)."""
    agg = clean_aggregates(agg)
    rows = method_order(agg["method"], methods)
    cols = metric_order(agg["metric"], metrics)
    if agg.empty:
        return pd.DataFrame(columns=[*_KEY, *cols])
    wide = agg.set_index([*_KEY, "metric"])[column].unstack("metric").reindex(columns=cols).reset_index()
    wide["_rank"] = wide["method"].map({m: i for i, m in enumerate(rows)})
    wide = wide.sort_values(["_rank", "seed", "step"]).drop(columns="_rank").reset_index(drop=True)
    wide.columns.name = None
    return wide


def _step_grid(agg: pd.DataFrame, escape: Callable[[str], str], show_ci: bool, methods: Sequence[str] | None,
               metrics: Sequence[str] | None, overlap: Overlap = None,
               mark: str = MARK) -> tuple[list[str], list[list[str]]]:
    values = step_table(agg, methods, metrics)
    cols = [c for c in values.columns if c not in _KEY]
    lows, highs = step_table(agg, methods, metrics, "ci_low"), step_table(agg, methods, metrics, "ci_high")
    labels = column_labels(cols)
    decimals = {c: decimals_for(c, values[c]) for c in cols}
    body = []
    for i in range(len(values)):
        cells = [escape(str(values.at[i, "method"])), str(int(values.at[i, "seed"])),
                 str(int(values.at[i, "step"]))]
        for c in cols:
            v, lo, hi, d = values.at[i, c], lows.at[i, c], highs.at[i, c], decimals[c]
            text = format_number(v, d)
            if show_ci and _finite(v) and _finite(lo) and _finite(hi):
                text += f" [{format_number(lo, d)}, {format_number(hi, d)}]"
            cells.append(escape(text) + (mark if _marked(overlap, str(values.at[i, "method"]), c) else ""))
        body.append(cells)
    return ["Method", "Seed", "Step", *(escape(labels[c]) for c in cols)], body


def steps_to_markdown(agg: pd.DataFrame, *, show_ci: bool = False, methods: Sequence[str] | None = None,
                      metrics: Sequence[str] | None = None, overlap: Overlap = None) -> str:
    """The appendix table: every evaluated checkpoint, values (and CIs with ``show_ci``) per metric."""
    if agg.empty:
        return "_No results stored for this run._\n"
    grid = markdown_grid(*_step_grid(agg, _md_escape, show_ci, methods, metrics, overlap))
    note = overlap_line(overlap, method_order(agg["method"], methods), agg["metric"].unique())
    return grid + (f"\n{_md_escape(note)}\n" if note else "")


def steps_to_html(agg: pd.DataFrame, *, show_ci: bool = False, methods: Sequence[str] | None = None,
                  metrics: Sequence[str] | None = None, overlap: Overlap = None) -> str:
    if agg.empty:
        return "<p>No results stored for this run.</p>"
    headers, body = _step_grid(agg, html.escape, show_ci, methods, metrics, overlap, HTML.mark)
    head = "".join(f"<th>{h}</th>" for h in headers)
    rows = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body)
    note = overlap_line(overlap, method_order(agg["method"], methods), agg["metric"].unique())
    foot = f'<p class="caption">{html.escape(note)}</p>' if note else ""
    return f'<table class="steps"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>{foot}'
