"""One self-contained HTML page per run: CSS inline, images as base64 data URIs, no scripts.

A single file with no external resources can be archived, mailed or opened offline and still show
exactly what was measured, on what, and with which code.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from reports.gallery import GalleryItem
from reports.run_info import RunInfo
from reports.tables import BASE, TINY_DISCLAIMER

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1320px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
.note { background: #fff6d9; border-left: 4px solid #e0b000; padding: .6em 1em; }
dl.prov { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; }
dl.prov dt { font-weight: 600; } dl.prov dd { margin: 0; font-family: monospace; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 1em 0; font-size: .92em; }
th, td { padding: .25em .55em; border-bottom: 1px solid #ddd; text-align: right; }
thead th { vertical-align: bottom; }
table.results td, table.steps td { white-space: nowrap; }
table.results.transposed td { white-space: normal; }
table.results.transposed thead th { text-align: right; }
table.results.transposed thead th:first-child { text-align: left; }
tbody th, td:first-child { text-align: left; }
caption { caption-side: top; text-align: left; font-size: .9em; color: #444; padding-bottom: .5em; }
p.caption { font-size: .9em; color: #444; }
table.results caption { font-weight: 600; color: #222; }
table.results thead th { white-space: normal; vertical-align: bottom; text-align: center; min-width: 4em; }
table.results th.group { border-bottom: 1px solid #888; vertical-align: middle; }
table.results th.group, table.results td.start { border-left: 1px solid #ccc; }
table.results th.group-row { text-align: left; font-style: italic; background: #f4f4f4; }
table.results th, table.results td { padding: .2em .5em; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; } .plots img { max-width: 100%; width: 560px; }
.gallery figure { margin: 1em 0; } .gallery img { image-rendering: pixelated; max-width: 100%; }
figcaption { font-size: .88em; color: #444; } figcaption ol { margin: .3em 0; }
"""


def data_uri(path: Path, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _img(path: Path, alt: str) -> str:
    return f'<img src="{data_uri(path)}" alt="{html.escape(alt)}">'


def _kv(items: Sequence[tuple[str, object]]) -> str:
    rows = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items
                   if v not in (None, "", {}, []))
    return f'<dl class="prov">{rows}</dl>'


def provenance_html(info: RunInfo) -> str:
    """Preset, eval set, sampler, commit, key library versions and hardware."""
    git = info.git
    commit = git.get("commit", "unknown") + (" (uncommitted changes)" if git.get("dirty") else "")
    v, hw = info.versions, info.hardware
    others = ", ".join(f"{k} {val}" for k, val in v.items() if k not in ("python", "torch", "diffusers"))
    sampler = ", ".join(f"{k}={val}" for k, val in info.sampler.items())
    size = f"{info.num_videos} videos" if info.num_videos else None
    if size and info.intermediate_num_videos:
        size += (f" at the base model and each last checkpoint; the checkpoints between on its first "
                 f"{info.intermediate_num_videos} (same seeds)")
    return _kv([("run id", info.run_id), ("preset", info.preset_name),
                ("description", info.preset.get("description")), ("eval set", size), ("sampler", sampler),
                ("methods", ", ".join(info.methods)), ("git commit", commit), ("sessions", info.sessions_line()),
                ("jobs", info.jobs_line()),
                ("python", v.get("python")),
                ("torch", v.get("torch")), ("diffusers", v.get("diffusers")), ("other libraries", others),
                ("platform", hw.get("platform")), ("processor", hw.get("processor")),
                ("CPU cores", hw.get("cpu_count")), ("torch threads", hw.get("torch_threads")),
                ("GPU", hw.get("cuda") or "none")])


PASSES_NOTE = ("Each metric against the training step, then (at matched compute) against the passes of the "
               "video model the method spent to reach the checkpoint: forward passes, one per video, a backward "
               "counted as two more, rollouts, reference and old or EMA policies and the latent reward model's "
               "backbone included, prepared pair sets not (trainers/base.py).")


def plots_html(paths: Sequence[Path]) -> str:
    if not paths:
        return "<p>None.</p>"
    return '<div class="plots">' + "".join(_img(p, p.stem) for p in paths) + "</div>"


def gallery_html(items: Sequence[GalleryItem], sampler: dict[str, object] | None = None) -> str:
    """Filmstrips grouped by method; the caption says which videos, seeds and sampler, when known."""
    if not items:
        return "<p>No sampled videos found (checkpoints/*/samples.npz).</p>"
    sampler_text = ", ".join(f"{k}={v}" for k, v in (sampler or {}).items())
    parts, current = [], None
    for it in items:
        if it.method != current:
            current = it.method
            parts.append(f"<h3>{html.escape('base model' if it.method == BASE else it.method)}</h3>")
        title = f"step {it.step}" if it.method == BASE else f"seed {it.seed}, step {it.step}"
        conditions = f"first {it.shown} of {it.total} eval videos (rows), frames left to right"
        if it.sample_seeds:
            conditions += f"; sampling seeds {', '.join(map(str, it.sample_seeds))}"
        if sampler_text:
            conditions += f"; sampler {sampler_text}"
        caps = ("<ol>" + "".join(f"<li>{html.escape(c)}</li>" for c in it.captions) + "</ol>"
                if it.captions else "")
        parts.append(f"<figure>{_img(it.image, f'{it.method} {title}')}<figcaption><strong>"
                     f"{html.escape(title)}</strong>: {html.escape(conditions)}{caps}</figcaption></figure>")
    return '<div class="gallery">' + "".join(parts) + "</div>"


def skips_html(skips: pd.DataFrame) -> str:
    cols = ["method", "seed", "step", "video_id", "reason"]
    head = "".join(f"<th>{c}</th>" for c in cols)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in cols) + "</tr>"
                   for _, r in skips.iterrows())
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'


def markdown_html(title: str, text: str) -> list[str]:
    """A section from a report's Markdown: paragraphs as notes, pipe grids as tables."""
    if not text:
        return []
    parts = [f"<h2>{html.escape(title)}</h2>"]
    for block in text.strip().split("\n\n"):
        lines = block.strip().splitlines()
        if lines and lines[0].startswith("|"):
            rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines if not set(ln) <= set("|-: ")]
            # a header may break after an underscore (<wbr>): identifiers as headers are the widest words
            head = "".join(f"<th>{html.escape(c).replace('_', '_<wbr>')}</th>" for c in rows[0])
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
            parts.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
                         f"<tbody>{body}</tbody></table></div>")
        else:
            parts.append(f'<p class="note">{html.escape(" ".join(lines))}</p>')
    return parts


def build_page(info: RunInfo, *, table_html: str, steps_html: str, metric_plots: Sequence[Path],
               train_plots: Sequence[Path], gallery: Sequence[GalleryItem], skips: pd.DataFrame,
               tiny: bool, sections: Sequence[str] = (), train_note: str = "") -> str:
    """The whole report page as one string; ``sections``: the registered sections' HTML fragments
    (reports/sections.py), placed between the training curves and the gallery; ``train_note``: the
    caption line under the training curves (the series folded away because they never change)."""
    title = f"Alignment report: {info.run_id}"
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">{html.escape(TINY_DISCLAIMER)}</p>' if tiny else "",
        "<h2>Provenance</h2>", provenance_html(info),
        "<h2>Results</h2>", f'<div class="scroll">{table_html}</div>',
        "<details><summary>Every evaluated checkpoint</summary>", f'<div class="scroll">{steps_html}</div>',
        "</details>",
        "<h2>Metrics over training</h2>", plots_html(metric_plots),
        f'<p class="note">{html.escape(PASSES_NOTE)}</p>' if any(p.stem.endswith("_vs_passes")
                                                                 for p in metric_plots) else "",
        "<h2>Training curves</h2>", plots_html(train_plots),
        f'<p class="note">{html.escape(train_note)}</p>' if train_note else "",
        *sections,
        "<h2>Sampled eval videos</h2>", gallery_html(gallery, info.sampler),
    ]
    if not skips.empty:
        parts += [f"<h2>Skipped videos ({len(skips)})</h2>", skips_html(skips)]
    body = "\n".join(s for s in parts if s)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n")
