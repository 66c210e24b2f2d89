"""The paper-style results tables and the per-step appendix table, as frames and as Markdown/LaTeX/HTML.

The results have one row per method (the base model first) at its final checkpoint and one column per
metric, laid out as the papers do (:func:`layout`): a main table of VBench-I2V quality, I2V and camera
motion, roll-ups and FVD, and a second one of method-specific and training metrics, each with its columns
grouped under the titles of metrics/groups.py. Numbers are computed once (:func:`final_table`); the three
renderers share the formatting and the best/second-best marking, so the Markdown, LaTeX and HTML versions
never disagree.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from harness.store import Unfinished, drop_unfinished, unfinished_seeds
from metrics.groups import BY_KEY, GROUPS, OTHER, MetricGroup, group_rank
from metrics.identity import (
    directions_for,
    groups_for,
    is_rollup,
    metric_backend,
    metric_name,
    undefined_notes,
)
from metrics.judges import MARK
from reports.identity import arrow, backend_summary, column_labels, decimals_for, format_number, header_labels

BASE = "base"
TINY_DISCLAIMER = ("Numbers from the tiny preset are about the synthetic tiny world; they are not VBench "
                   "or FVD of a real model.")
_KEY = ["method", "seed", "step"]
Directions = Mapping[str, bool | None] | None  # by identity or bare name; None: ask the metric registry
# {method: {metric identity: [judges it shares with the method's training]}} (metrics.judges.overlaps)
Overlap = Mapping[str, Mapping[str, Sequence[str]]] | None
_NUMERIC = ["value", "ci_low", "ci_high"]


def unfinished_line(unfinished: Iterable[Unfinished]) -> str | None:
    """The note that names the seeds left out of final comparisons, and how to finish them."""
    parts = [str(u) for u in unfinished]
    if not parts:
        return None
    return ("Unfinished, left out of the final tables and claims: " + "; ".join(parts)
            + ". `harness run --resume` finishes them.")


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
    unfinished: tuple[Unfinished, ...] = ()  # seeds left out: evaluated only before their scheduled last step

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


def _suite_order() -> list[str]:
    """VBench-I2V's dimensions in the order of its suite (metrics.registry.METRIC_GROUPS), the papers' column
    order; empty when the registry cannot be imported (the run's order then stands)."""
    try:
        from metrics.registry import METRIC_GROUPS
    except Exception:  # noqa: BLE001  (order only: see metrics.identity._registry_directions)
        return []
    return list(METRIC_GROUPS.get("vbench-i2v", {}))


def metric_order(metrics: Iterable[str], preferred: Sequence[str] | None = None) -> list[str]:
    """In the paper layout's group order (metrics/groups.py); within a group VBench-I2V's dimensions in its
    suite's order, then the run's metric order, then other metrics, roll-ups last."""
    ordered = sorted(_ordered(metrics, preferred), key=is_rollup)  # sort is stable
    groups, suite = groups_for(ordered), _suite_order()

    def key(m: str) -> tuple[int, int]:
        name = metric_name(m)
        return group_rank(groups[m]), suite.index(name) if name in suite else len(suite)

    return sorted(ordered, key=key)


def clean_aggregates(agg: pd.DataFrame) -> pd.DataFrame:
    """The columns the reports use, with NULL numbers as NaN floats (SQLite NULLs arrive as None)."""
    cols = [*_KEY, "metric", *_NUMERIC]
    out = agg.reindex(columns=cols).copy()
    for col in _NUMERIC:
        out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    return out


def final_table(agg: pd.DataFrame, methods: Sequence[str] | None = None,
                metrics: Sequence[str] | None = None, schedule: Mapping[str, int] | None = None) -> FinalTable:
    """Each method's highest step; seeds that reached it are averaged (std over them kept for ± display).

    ``schedule`` (method -> scheduled steps): seeds evaluated only before their method's last step are left
    out (``FinalTable.unfinished``), so an interrupted method never reads as finished; without it, the
    highest stored step is taken as final."""
    agg = clean_aggregates(agg)
    unfinished = unfinished_seeds(agg, schedule)
    seeds_run = agg.groupby("method")["seed"].nunique()
    agg = drop_unfinished(agg, unfinished)
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
        seeds_run=seeds_run.reindex(rows).fillna(0).astype(int), unfinished=unfinished,
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
                  show_ci: bool = False) -> list[str]:
    """Plain-text caption above a table: what was evaluated and what a cell is."""
    size = f"{num_videos} videos" if num_videos else "size unknown"
    finals = "; ".join(f"{m}: step {table.step[m]}" + _seed_note(table.seeds[m], table.seeds_run[m])
                       for m in table.methods)
    cell = f"Each cell: the value at the method's final checkpoint ({finals or 'none evaluated'})."
    if show_ci:
        cell += " Several seeds: mean ± std over seeds; one seed: value [95 % bootstrap CI over videos]."
    return [f"Preset: {preset or 'unknown'}; eval set: {size}.",
            cell + " Bold: best, underlined: second best, in the direction of the arrow."]


def footnote_lines(table: FinalTable, preset: str | None, overlap: Overlap = None,
                   metrics: Sequence[str] | None = None) -> list[str]:
    """Plain-text notes below a table, as papers put them: the backends, the judge-overlap mark, the disclaimer.

    ``metrics``: the columns the table shows (default: all of ``table``)."""
    metrics = list(table.metrics if metrics is None else metrics)
    lines = [f"Backends: {backend_summary(metrics) or 'none'}."]
    empty = [m for m in metrics if m in table.mean.columns and table.mean[m].isna().all()]
    if empty:
        notes, labels = undefined_notes(empty), header_labels(empty)
        lines.append("–: no value for any method. " + " ".join(
            f"{labels[m]}: {notes[m] or 'undefined at every final checkpoint'}." for m in empty))
    if note := overlap_line(overlap, table.methods, metrics):
        lines.append(note)
    if note := unfinished_line(table.unfinished):
        lines.append(note)
    if is_tiny(preset, table.metrics):
        lines.append(TINY_DISCLAIMER)
    return lines


# ---- paper layout: column groups -----------------------------------------------------------------------

MAIN_TITLE = "Main results"
EXTRA_TITLE = "Method-specific and training metrics"
# A block is transposed (methods as columns, metrics as rows under their group's title) when it has more metric
# columns than MAX_COLUMNS, or when its cells and headers' longest words add up to more characters than fit:
# HTML_MAX_CHARS on the 1320-px report page without a scroll bar, LATEX_MAX_CHARS on a page's \textwidth at no
# less than about 3/4 of the font size (CIs widen every cell).
MAX_COLUMNS = 12
HTML_MAX_CHARS = 130
LATEX_MAX_CHARS = 80


@dataclass(frozen=True)
class Block:
    """One table of the paper layout: its title and its column groups, each (group, metric identities)."""

    title: str
    groups: tuple[tuple[MetricGroup, tuple[str, ...]], ...]

    @property
    def metrics(self) -> list[str]:
        return [m for _, cols in self.groups for m in cols]


def column_groups(metrics: Sequence[str]) -> list[tuple[MetricGroup, tuple[str, ...]]]:
    """The non-empty groups in table order (metrics/groups.py), metrics in their given order within each."""
    keys = groups_for(metrics)
    out = []
    for group in GROUPS:
        cols = tuple(m for m in metrics if (keys[m] if keys[m] in BY_KEY else OTHER) == group.key)
        if cols:
            out.append((group, cols))
    return out


def transposed(block: Block, table: FinalTable, show_ci: bool = False, max_chars: int = HTML_MAX_CHARS) -> bool:
    """Whether ``block`` is too wide to lay out with one column per metric (see ``MAX_COLUMNS``)."""
    if len(block.metrics) > MAX_COLUMNS:
        return True
    labels, cells = header_labels(block.metrics), format_cells(table, show_ci)
    widths = [max(max(map(len, (labels[c] + " ↑").split())), *(len(cells.at[m, c]) for m in table.methods)) + 2
              for c in block.metrics]
    return sum(widths) + max(map(len, ["Method", *table.methods])) > max_chars


def layout(metrics: Sequence[str]) -> list[Block]:
    """The main table (VBench-I2V quality, I2V, roll-ups, FVD) and the method-specific and training table;
    only those with a column."""
    groups = column_groups(metrics)
    blocks = [Block(MAIN_TITLE, tuple(g for g in groups if g[0].main)),
              Block(EXTRA_TITLE, tuple(g for g in groups if not g[0].main))]
    return [b for b in blocks if b.groups]


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


@dataclass(frozen=True)
class _Cells:
    """Escaped, marked text of every header and cell, looked up by metric identity."""

    headers: dict[str, str]
    rows: dict[str, dict[str, str]]  # method -> identity -> cell
    methods: dict[str, str]  # method -> escaped name

    def header_row(self, metrics: Sequence[str]) -> list[str]:
        return [self.headers[c] for c in metrics]

    def body(self, metrics: Sequence[str]) -> list[list[str]]:
        return [[name, *(self.rows[m][c] for c in metrics)] for m, name in self.methods.items()]


def _styled(table: FinalTable, style: _Style, show_ci: bool,
            directions: Mapping[str, bool | None] | None, overlap: Overlap = None) -> _Cells:
    """Escaped header and body cells with arrows and marks applied."""
    dirs = directions_for(table.metrics, directions)
    labels = header_labels(table.metrics)
    headers = {c: style.escape(labels[c]) + (f" {arrow(dirs[c], style.up, style.down)}" if dirs[c] is not None
                                             else "")
               for c in table.metrics}
    cells = format_cells(table, show_ci, pm="\0")  # placeholder survives escaping, then becomes pm
    marks = rank_marks(table, dirs)
    rows: dict[str, dict[str, str]] = {}
    for m in table.methods:
        rows[m] = {}
        for c in table.metrics:
            text = style.escape(cells.at[m, c]).replace("\0", style.pm)
            mark = marks.at[m, c]
            text = (style.bold.format(text) if mark == "best" else
                    style.under.format(text) if mark == "second" else text)
            rows[m][c] = text + (style.mark if _marked(overlap, m, c) else "")
    return _Cells(headers, rows, {m: style.escape(m) for m in table.methods})


def markdown_grid(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    align = ["---"] + ["---:"] * (len(headers) - 1)
    lines = ["| " + " | ".join(r) + " |" for r in (headers, align, *rows)]
    return "\n".join(lines) + "\n"


def to_markdown(table: FinalTable, *, show_ci: bool = False, directions: Directions = None,
                preset: str | None = None, num_videos: int | None = None, overlap: Overlap = None) -> str:
    """Caption, then each table of the paper layout as one GitHub table per column group (Markdown has no
    spanning header cells) under the group's title, then the footnotes (backends, † overlap, disclaimer)."""
    caption = "\n\n".join(_md_escape(line) for line in caption_lines(table, preset, num_videos, show_ci))
    if not table.metrics:
        return caption + "\n\n_No results stored for this run._\n"
    cells = _styled(table, MARKDOWN, show_ci, directions, overlap)
    parts = [caption]
    for block in layout(table.metrics):
        parts.append(f"### {block.title}")
        for group, cols in block.groups:
            parts.append(f"**{_md_escape(group.title)}**\n\n"
                         + markdown_grid(["Method", *cells.header_row(cols)], cells.body(cols)).rstrip("\n"))
    parts += [_md_escape(line) for line in footnote_lines(table, preset, overlap)]
    return "\n\n".join(parts) + "\n"


def _latex_header(text: str) -> str:
    """A header cell on two lines at its last space before the arrow (``subject`` / ``consistency ↑``): narrow
    columns, in a plain nested tabular (no package beyond booktabs)."""
    words = text.split(" ")
    if len(words) < 2 or (len(words) == 2 and words[1].startswith("$")):
        return text
    arrow_part = words[-1] if words[-1].startswith("$") else ""
    words = words[:-1] if arrow_part else words
    cut = max(1, len(words) // 2)
    top, bottom = " ".join(words[:cut]), " ".join(words[cut:] + ([arrow_part] if arrow_part else []))
    return rf"\begin{{tabular}}[b]{{@{{}}c@{{}}}}{top}\\{bottom}\end{{tabular}}"


def _latex_tabular(block: Block, cells: _Cells) -> list[str]:
    """The block's columns side by side: a \\multicolumn group row with \\cmidrule under each group."""
    n = len(block.metrics)
    spans, rules, col = [], [], 2
    for group, cols in block.groups:
        spans.append(rf"\multicolumn{{{len(cols)}}}{{c}}{{{latex_escape(group.title)}}}")
        rules.append(rf"\cmidrule(lr){{{col}-{col + len(cols) - 1}}}")
        col += len(cols)
    return [f"    \\begin{{tabular}}{{l{'r' * n}}}", r"    \toprule",
            "    & " + " & ".join(spans) + r" \\", "    " + " ".join(rules),
            "    Method & " + " & ".join(_latex_header(h) for h in cells.header_row(block.metrics)) + r" \\",
            r"    \midrule", *("    " + " & ".join(row) + r" \\" for row in cells.body(block.metrics)),
            r"    \bottomrule", r"    \end{tabular}"]


def _latex_transposed(block: Block, cells: _Cells) -> list[str]:
    """Methods as columns, metrics as rows under their group's title: for blocks too wide for a page."""
    methods = list(cells.methods.values())
    k = len(methods) + 1
    lines = [f"    \\begin{{tabular}}{{l{'r' * len(methods)}}}", r"    \toprule",
             "    Metric & " + " & ".join(methods) + r" \\"]
    for group, cols in block.groups:
        lines += [r"    \midrule", rf"    \multicolumn{{{k}}}{{l}}{{\textit{{{latex_escape(group.title)}}}}} \\"]
        for c in cols:
            lines.append("    " + " & ".join([cells.headers[c], *(cells.rows[m][c] for m in cells.methods)])
                         + r" \\")
    return [*lines, r"    \bottomrule", r"    \end{tabular}"]


def to_latex(table: FinalTable, *, show_ci: bool = False, directions: Directions = None,
             preset: str | None = None, num_videos: int | None = None, label: str = "tab:results",
             overlap: Overlap = None) -> str:
    """One booktabs ``table`` per block of the paper layout (labels ``label`` and ``label``-extra).

    Column groups are ``\\multicolumn`` headers over ``\\cmidrule``; a block too wide for that
    (:func:`transposed`) has methods as columns and its groups as row blocks; either way it is shrunk to
    ``\\textwidth`` only when wider (``\\resizebox``). The backends, the † overlap note and the disclaimer are a
    ``\\footnotesize`` note below the table. Needs ``\\usepackage{booktabs}`` and ``\\usepackage{graphicx}``."""
    caption = " ".join(latex_escape(line) for line in caption_lines(table, preset, num_videos, show_ci))
    head = ["% requires \\usepackage{booktabs} and \\usepackage{graphicx}"]
    if not table.metrics:
        return "\n".join([*head, rf"% {caption}", "% No results stored for this run."]) + "\n"
    cells = _styled(table, LATEX, show_ci, directions, overlap)
    out = head
    for i, block in enumerate(layout(table.metrics)):
        notes = " ".join(latex_escape(line) for line in footnote_lines(table, preset, overlap, block.metrics))
        notes = notes.replace(latex_escape(MARK), r"$^\dagger$")
        body = (_latex_transposed(block, cells) if transposed(block, table, show_ci, LATEX_MAX_CHARS)
                else _latex_tabular(block, cells))
        out += [r"\begin{table}[t]", r"  \centering",
                f"  \\caption{{{latex_escape(block.title)}. {caption}}}",
                f"  \\label{{{label if i == 0 else label + '-extra'}}}",
                r"  \resizebox{\ifdim\width>\textwidth\textwidth\else\width\fi}{!}{%",
                *body[:-1], body[-1] + "}%",
                r"  \par\smallskip", f"  \\parbox{{\\textwidth}}{{\\footnotesize\\raggedright {notes}}}",
                r"\end{table}"]
    return "\n".join(out) + "\n"


def _html_columns(block: Block, cells: _Cells) -> str:
    """One column per metric under a spanning group header row, a rule left of each group."""
    spans = "".join(f'<th colspan="{len(cols)}" class="group">{html.escape(group.title)}</th>'
                    for group, cols in block.groups)
    head = "".join(f"<th>{h}</th>" for h in cells.header_row(block.metrics))
    starts = {cols[0] for _, cols in block.groups}
    rows = "".join("<tr><th>" + row[0] + "</th>"
                   + "".join(('<td class="start">' if c in starts else "<td>") + f"{text}</td>"
                             for c, text in zip(block.metrics, row[1:], strict=True)) + "</tr>"
                   for row in cells.body(block.metrics))
    return (f'<thead><tr><th rowspan="2">Method</th>{spans}</tr><tr>{head}</tr></thead>'
            f"<tbody>{rows}</tbody>")


def _html_transposed(block: Block, cells: _Cells) -> str:
    """Methods as columns, metrics as rows under a row with their group's title (a block too wide for the page)."""
    head = "".join(f"<th>{name}</th>" for name in cells.methods.values())

    def cell(text: str) -> str:  # may wrap before its interval (class "transposed"), never inside it
        return text.replace(", ", ",&nbsp;").replace(" ± ", " ±&nbsp;")

    rows = []
    for group, cols in block.groups:
        rows.append(f'<tr><th colspan="{len(cells.methods) + 1}" class="group-row">{html.escape(group.title)}'
                    "</th></tr>")
        rows += [f"<tr><th>{cells.headers[c]}</th>"
                 + "".join(f"<td>{cell(cells.rows[m][c])}</td>" for m in cells.methods) + "</tr>" for c in cols]
    return f'<thead><tr><th>Metric</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody>'


def to_html(table: FinalTable, *, show_ci: bool = False, directions: Directions = None,
            preset: str | None = None, num_videos: int | None = None, overlap: Overlap = None) -> str:
    """Each block of the paper layout as a ``<table>``: a spanning group header row over the metric headers, or
    transposed as in LaTeX when too wide; the caption lines above the first, the footnotes below the last."""
    caption = "<br>".join(html.escape(line) for line in caption_lines(table, preset, num_videos, show_ci))
    if not table.metrics:
        return f'<p class="caption">{caption}</p><p>No results stored for this run.</p>'
    cells = _styled(table, HTML, show_ci, directions, overlap)
    parts = [f'<p class="caption">{caption}</p>']
    for block in layout(table.metrics):
        wide = transposed(block, table, show_ci)
        inner = _html_transposed(block, cells) if wide else _html_columns(block, cells)
        parts.append(f'<table class="results{" transposed" if wide else ""}"><caption>{html.escape(block.title)}'
                     f"</caption>{inner}</table>")
    notes = "<br>".join(html.escape(line) for line in footnote_lines(table, preset, overlap))
    parts.append(f'<p class="caption footnote">{notes}</p>')
    return "".join(parts)


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


def eval_set_size(agg: pd.DataFrame) -> pd.Series:
    """Each aggregate's eval-set size (``extras.eval_videos``), NaN where it records none (a training probe)."""
    if "extras" not in agg.columns:
        return pd.Series(float("nan"), index=agg.index)
    return agg["extras"].map(lambda e: e.get("eval_videos") if isinstance(e, dict) else None).astype(float)


def full_set_only(agg: pd.DataFrame) -> pd.DataFrame:
    """For each metric, only its rows on the largest eval set (rows that record no set size, such as the training
    probes, are kept): what a diagnostic comparing steps may join, so that the sampling noise of a smaller
    intermediate set is never read as a change over training."""
    if agg.empty:
        return agg
    size = eval_set_size(agg)
    largest = size.groupby(agg["metric"]).transform("max")
    return agg[size.isna() | (size == largest)]


def eval_set_sizes(agg: pd.DataFrame) -> dict[tuple[str, int, int], str]:
    """(method, seed, step) -> the number of eval videos its metrics were computed on, when the run's checkpoints
    differ in it (a smaller intermediate set); empty when they are all evaluated on one set size."""
    if agg.empty:
        return {}
    size = eval_set_size(agg)
    known = agg.assign(size=size).dropna(subset=["size"])
    if known["size"].nunique() < 2:
        return {}
    return {(str(m), int(sd), int(st)): "/".join(str(int(x)) for x in sorted(g["size"].unique()))
            for (m, sd, st), g in known.groupby(_KEY)}


def _step_grid(agg: pd.DataFrame, escape: Callable[[str], str], show_ci: bool, methods: Sequence[str] | None,
               metrics: Sequence[str] | None, overlap: Overlap = None,
               mark: str = MARK) -> tuple[list[str], list[list[str]]]:
    sizes = eval_set_sizes(agg)  # a column of its own where checkpoints differ in eval-set size
    values = step_table(agg, methods, metrics)
    cols = [c for c in values.columns if c not in _KEY]
    lows, highs = step_table(agg, methods, metrics, "ci_low"), step_table(agg, methods, metrics, "ci_high")
    labels = column_labels(cols)
    decimals = {c: decimals_for(c, values[c]) for c in cols}
    body = []
    for i in range(len(values)):
        key = (str(values.at[i, "method"]), int(values.at[i, "seed"]), int(values.at[i, "step"]))
        cells = [escape(key[0]), str(key[1]), str(key[2]), *([sizes.get(key, "")] if sizes else [])]
        for c in cols:
            v, lo, hi, d = values.at[i, c], lows.at[i, c], highs.at[i, c], decimals[c]
            text = format_number(v, d)
            if show_ci and _finite(v) and _finite(lo) and _finite(hi):
                text += f" [{format_number(lo, d)}, {format_number(hi, d)}]"
            cells.append(escape(text) + (mark if _marked(overlap, str(values.at[i, "method"]), c) else ""))
        body.append(cells)
    return ["Method", "Seed", "Step", *(["Videos"] if sizes else []), *(escape(labels[c]) for c in cols)], body


def steps_to_markdown(agg: pd.DataFrame, *, show_ci: bool = False, methods: Sequence[str] | None = None,
                      metrics: Sequence[str] | None = None, overlap: Overlap = None) -> str:
    """The appendix table: every evaluated checkpoint, values (and CIs with ``show_ci``) per metric, and the
    number of eval videos each row rests on where checkpoints differ in it (``Videos``)."""
    if agg.empty:
        return "_No results stored for this run._\n"
    grid = markdown_grid(*_step_grid(agg, _md_escape, show_ci, methods, metrics, overlap))
    note = overlap_line(overlap, method_order(agg["method"], methods), agg["metric"].unique())
    return grid + (f"\n{_md_escape(note)}\n" if note else "")


def steps_to_html(agg: pd.DataFrame, *, show_ci: bool = False, methods: Sequence[str] | None = None,
                  metrics: Sequence[str] | None = None, overlap: Overlap = None) -> str:
    """The appendix as one table per column group (as the Markdown of the main table): every checkpoint times
    every metric in one table is far wider than a page."""
    if agg.empty:
        return "<p>No results stored for this run.</p>"
    parts = []
    for group, cols in column_groups(metric_order(agg["metric"].unique(), metrics)):
        headers, body = _step_grid(agg[agg["metric"].isin(cols)], html.escape, show_ci, methods, cols, overlap,
                                   HTML.mark)
        head = "".join(f"<th>{h}</th>" for h in headers)
        rows = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body)
        parts.append(f'<table class="steps"><caption>{html.escape(group.title)}</caption><thead><tr>{head}</tr>'
                     f"</thead><tbody>{rows}</tbody></table>")
    note = overlap_line(overlap, method_order(agg["method"], methods), agg["metric"].unique())
    foot = f'<p class="caption">{html.escape(note)}</p>' if note else ""
    return "".join(parts) + foot
