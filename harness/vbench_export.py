"""Export a results store in the JSON layout VBench-I2V writes and its score script reads.

Layout (read from Vchitect/VBench at commit 45e79ec14e69a2187202c675d2dbce1a71843d53):

* ``VBenchI2V.evaluate`` (``vbench2_beta_i2v/__init__.py``) saves ``{name}_eval_results.json``, a dict
  ``{dimension: result}`` where ``result`` is what ``compute_<dimension>`` returns, as a JSON list:
  ``[aggregate, per_video]`` with ``per_video`` a list of ``{"video_path": ..., "video_results": ...}``;
  ``camera_motion`` returns ``[aggregate, per_label_means, per_video]`` and its per-video dicts also
  carry ``prompt_type`` and ``predict_type``.
* ``scripts/cal_i2v_final_score.py`` reads every ``*.json`` file (top level and one folder down) of a
  submission; for each one that is a dict it maps every key through ``I2VKEY`` (``scripts/constant.py``)
  and keeps ``value[0]``. A key it does not know is a ``KeyError``, and files are merged (a later file's
  dimension replaces an earlier one's).

So, per checkpoint:

* ``<stem>_eval_results.json`` holds only the nine dimensions the score script keys (our base metric
  names are VBench's dimension names; ``metrics.rollups.VBENCH_I2V_RANGES`` lists them);
* ``<stem>_unscored_eval_results.json`` holds ``temporal_flickering``, which VBench-I2V evaluates but
  ``I2VKEY`` lacks (in the main file it would stop the score script);
* ``<stem>_identity.jsonl`` (not ``.json``: the score script reads those) names the stored identity
  (backend) behind each exported dimension, its ``n``, and how many per-video values were left out.

``video_path`` is the harness's video id (upstream writes a file path). Excluded videos (value None,
e.g. a camera_motion video without a label) are left out of the per-video list, as upstream never lists
them. Roll-ups (``rollup:*``), probes and other metrics are not VBench dimensions and are not exported.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.store import ResultStore
from metrics.rollups import VBENCH_I2V_RANGES

UPSTREAM = "Vchitect/VBench@45e79ec14e69a2187202c675d2dbce1a71843d53"
SCORED_DIMENSIONS: tuple[str, ...] = tuple(VBENCH_I2V_RANGES)  # the keys of upstream's I2VKEY
UNSCORED_DIMENSIONS: tuple[str, ...] = ("temporal_flickering",)  # in VBenchI2V.quality_dims, not in I2VKEY
DIMENSIONS = SCORED_DIMENSIONS + UNSCORED_DIMENSIONS


@dataclass
class VBenchExport:
    paths: list[Path] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # "checkpoint: identity (why)"


def _base(identity: str) -> str:
    return identity.split("[", 1)[0]


def _stem(run_id: str, method: str, seed: int, step: int, with_run: bool) -> str:
    stem = f"{method}-seed{seed}-step{step}"
    if with_run:
        stem = f"{run_id}-{stem}"
    return re.sub(r"[^A-Za-z0-9._=-]", "_", stem)


def _pick(checkpoint: str, base: str, identities: list[str], chosen: set[str]) -> str:
    if len(identities) == 1:
        return identities[0]
    picked = [i for i in identities if i in chosen]
    if len(picked) != 1:
        raise ValueError(f"{checkpoint} holds {len(identities)} results for VBench dimension {base!r} "
                         f"({', '.join(identities)}); pass --identity with the one to export")
    return picked[0]


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


def export_vbench(store: ResultStore, directory: str | Path, identities: Sequence[str] = ()) -> VBenchExport:
    """Write the VBench-I2V files of every checkpoint under ``directory``; see the module docstring.

    ``identities`` choose among several stored identities of one dimension (e.g. two flow backends of
    ``dynamic_degree``); each must be stored and name a VBench dimension.
    """
    aggs = store.aggregates()
    stored = set(aggs["metric"]) if len(aggs) else set()
    for ident in identities:
        if _base(ident) not in DIMENSIONS:
            raise ValueError(f"--identity {ident!r} is not a VBench dimension; choose among "
                             f"{', '.join(DIMENSIONS)}")
        if ident not in stored:
            raise ValueError(f"--identity {ident!r} is not in {store.path}; stored: "
                             f"{', '.join(sorted(i for i in stored if _base(i) in DIMENSIONS)) or '(none)'}")
    chosen = set(identities)
    ckpts = store.checkpoints()
    with_run = ckpts["run_id"].nunique() > 1
    records = store.records()
    out = Path(directory)
    result = VBenchExport()
    planned: list[tuple[Path, Any]] = []
    for ck in ckpts.itertuples():
        stem = _stem(ck.run_id, ck.method, int(ck.seed), int(ck.step), with_run)
        mine = aggs[aggs["checkpoint_id"] == ck.checkpoint_id]
        by_base: dict[str, list[str]] = {}
        for row in mine.itertuples():
            if _base(row.metric) in DIMENSIONS and not row.metric.startswith("rollup:"):
                by_base.setdefault(_base(row.metric), []).append(row.metric)
            else:
                result.left_out.append(f"{stem}: {row.metric} (not a VBench dimension)")
        scored: dict[str, list[Any]] = {}
        unscored: dict[str, list[Any]] = {}
        sidecar: list[dict[str, Any]] = []
        for base in DIMENSIONS:
            if base not in by_base:
                continue
            ident = _pick(stem, base, sorted(by_base[base]), chosen)
            for other in by_base[base]:
                if other != ident:
                    result.left_out.append(f"{stem}: {other} (another identity of {base} was chosen)")
            agg = mine[mine["metric"] == ident].iloc[0]
            if not _finite(agg["value"]):
                result.left_out.append(f"{stem}: {ident} (no aggregate value)")
                continue
            recs = records[(records["checkpoint_id"] == ck.checkpoint_id) & (records["metric"] == ident)]
            per_video, dropped = [], 0
            for rec in recs.itertuples():
                if not _finite(rec.value):
                    dropped += 1
                    continue
                entry: dict[str, Any] = {"video_path": rec.video_id, "video_results": float(rec.value)}
                extras = rec.extras if isinstance(rec.extras, dict) else {}
                if base == "camera_motion" and "label" in extras:
                    entry["prompt_type"] = extras["label"]
                    entry["predict_type"] = list(extras.get("predicted", []))
                per_video.append(entry)
            value: list[Any] = [float(agg["value"]), per_video]
            if base == "camera_motion":
                extras = agg["extras"] if isinstance(agg["extras"], dict) else {}
                value.insert(1, {k: float(v) for k, v in (extras.get("per_label") or {}).items()})
            (scored if base in SCORED_DIMENSIONS else unscored)[base] = value
            sidecar.append({"dimension": base, "identity": ident, "n": int(agg["n"]),
                            "videos": len(per_video), "videos_left_out": dropped,
                            "file": f"{stem}_{'eval' if base in SCORED_DIMENSIONS else 'unscored_eval'}_results.json"})
        if not sidecar:
            continue
        for suffix, data in (("_eval_results.json", scored), ("_unscored_eval_results.json", unscored)):
            if data:
                planned.append((out / f"{stem}{suffix}", data))
        planned.append((out / f"{stem}_identity.jsonl", sidecar))
    if not planned:
        raise ValueError(f"{store.path} holds no VBench dimension ({', '.join(DIMENSIONS)}); evaluate with "
                         "`harness eval --metrics vbench-i2v` first")
    out.mkdir(parents=True, exist_ok=True)
    for path, data in planned:
        if path.suffix == ".jsonl":
            text = "".join(json.dumps(line, sort_keys=True, allow_nan=False) + "\n" for line in data)
        else:
            text = json.dumps(data, indent=4, allow_nan=False) + "\n"
        path.write_text(text)
        result.paths.append(path)
    return result
