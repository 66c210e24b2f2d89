"""`harness tune`: the same small learning-rate sweep for every method, chosen by the method's own
training-side judge on a validation split that no evaluation reads (issue 25).

Hand-tuned settings bias a comparison towards the methods someone tuned harder, and tuning against
evaluation numbers leaks the yardstick into the method. So every method gets the same budget:

* **Grid.** ``tuning.points`` learning rates spaced by ``tuning.ratio`` around the method's preset
  ``lr`` (the tiny preset: lr / 3, lr, 3 lr), the method's schedule, batch and every other setting as
  the preset gives them, one training seed (``tuning.seed``).
* **Criterion: the method's training-side judge.** A method whose updates are driven by judges
  (``TrainerConfig.training_signals``: FCRM's latent reward model, the judge that ranked DPO's pairs,
  SHIFT's motion discriminators, ...) is scored by the mean, over those judges, of each judge's
  training-judge metric (metrics/rewards.py) on ``tuning.videos`` videos sampled from the trained
  model for validation conditions ``tuning.start``.. of ``tuning.split``. A method with no judge
  (SFT: it imitates clips) is scored by its denoising loss on held-out clips of the split it
  imitates (same indices, 4 fixed noise and time draws per clip; lower is better). Never the
  evaluation oracle or a VBench-style dimension, and never the eval split.
* **Held out.** The validation clips must be disjoint from every clip the method trains on (its
  ``training_draws`` for the tuning seed and steps); a preset where they meet is refused before any
  work. The eval split is never read.
* **Choice.** The candidate with the best validation score; a candidate whose loss went non-finite
  is recorded as diverged and never chosen.

Each candidate's result is written to ``<out>/<method>/lr=<lr>.json`` when it finishes, keyed by
everything that made it (preset, method settings, tuning settings), so an interrupted sweep resumes
where it stopped and a changed preset computes again (one that only evaluates differently does
not). ``<out>/tuning.json`` holds the whole sweep;
``--record`` also writes it next to the preset (``tuning.record``), where the preset loader reads it
back into every run's stored preset, and the claims report says whether the compared methods ran
at the learning rates the sweep chose (matched tuning budget).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.config import PresetConfig, TuningConfig
from harness.data.preferences import PairsError
from harness.data.source import clip_batch, frame_rate
from harness.data.video_io import tensor_to_frames
from harness.data.world import WorldCondition
from harness.models.starting import BaseCheckpointError, base_adapter
from harness.provenance import provenance
from harness.runner import RunError, RunOptions, Schedule, method_plan, method_record
from harness.sampling import sample
from metrics.base import Metric, VideoSample
from metrics.registry import expand_metrics, get_metric, list_metrics
from trainers.base import TrainerConfig
from trainers.objectives import denoising_loss, sample_sigmas
from trainers.registry import trainer_for

log = logging.getLogger(__name__)

FORMAT = 1
SAMPLE_SEED = 2_000_000  # sampling seed of validation video i: SAMPLE_SEED + i (apart from the eval seeds)
LOSS_DRAWS = 4  # (t, noise) draws per clip of the denoising-loss criterion


class TuningError(RuntimeError):
    """A sweep cannot start or continue; the message says why and what to do."""


def grid(center: float, cfg: TuningConfig) -> list[float]:
    """``cfg.points`` learning rates spaced by ``cfg.ratio`` with ``center`` in the middle (4 significant
    digits: lr / 3 of 1.5e-3 is 5e-4, not 4.9999e-4)."""
    mid = (cfg.points - 1) / 2
    return [float(f"{center * cfg.ratio ** (k - mid):.4g}") for k in range(cfg.points)]


@dataclass(frozen=True)
class Criterion:
    """How a method's candidates are compared: its judges' metrics, or (no judge) its denoising loss."""

    judges: tuple[str, ...]
    metrics: tuple[str, ...]
    split: str

    @property
    def higher_is_better(self) -> bool:
        return bool(self.judges)

    def describe(self, cfg: TuningConfig) -> str:
        clips = f"{self.split} clips {cfg.start}..{cfg.start + cfg.videos - 1}"
        if self.judges:
            return (f"mean of {', '.join(self.metrics)} (the {', '.join(self.judges)} judge) on {cfg.videos} videos "
                    f"sampled for {clips}; higher is better")
        return f"denoising loss on {clips} ({LOSS_DRAWS} draws each); lower is better"


def criterion(cfg: TrainerConfig, tuning: TuningConfig) -> Criterion:
    """The method's training-side judge: a training-judge metric for each judge it trains on, or, for a
    method with none, the denoising loss on the split it imitates."""
    judges = tuple(cfg.training_signals())
    if not judges:
        return Criterion((), (), str(getattr(cfg, "split", None) or "finetune"))
    metrics = []
    for judge in judges:
        names = [s.name for s in list_metrics() if s.judge == judge and s.role == "training-judge"]
        if len(names) != 1:
            raise TuningError(f"the method trains on the {judge!r} judge, which has {len(names)} training-judge "
                              "metrics (need exactly one to score a candidate); register one (metrics/rewards.py) "
                              "or tune the method's parent section")
        metrics.append(names[0])
    return Criterion(judges, tuple(metrics), tuning.split)


def validation_problems(plans: dict[str, tuple[TrainerConfig, Schedule]], tuning: TuningConfig) -> list[str]:
    """Why a method's validation clips meet clips it trains on (empty: held out for every method)."""
    problems = []
    for method, (cfg, schedule) in plans.items():
        split = criterion(cfg, tuning).split
        stop = tuning.start + tuning.videos
        for d in cfg.training_draws(f"methods.{method}"):
            if d.overlaps(split, tuning.start, stop, [tuning.seed], schedule.steps):
                problems.append(f"the validation clips of {method} ({split} clips {tuning.start}..{stop - 1}) overlap "
                                f"{d.what}: {d.span()}; move them (tuning.start) to clips no method trains on")
    return problems


@dataclass
class Candidate:
    method: str
    lr: float
    key: str
    score: float | None  # None: diverged
    se: float | None
    seconds: float
    diverged: str | None = None
    judges: dict[str, float] | None = None  # each judge metric's mean (judged methods)

    def ok(self) -> bool:
        return self.score is not None and math.isfinite(self.score)


# What a candidate's training and score never read: the evaluation's set and metrics, the probes and the
# checkpoint schedule (a sweep trains without checkpoints, probes or evaluation). A run that only evaluates
# differently reuses the sweep. Kept: eval.batch_size (the batch pair sets are sampled in) and
# eval.backends (the judges' backends).
_NOT_READ = {"eval": ("num_videos", "final_num_videos", "seed", "metrics"), "probes": None}


def _key(preset: PresetConfig, record: dict, tuning: TuningConfig) -> str:
    """What made a candidate: the preset without the other methods, the sweep's record and what training
    never reads (``_NOT_READ``), the method's settings (lr included, eval_every not) and the tuning settings."""
    p = {k: v for k, v in preset.record().items() if k not in ("methods", "tuning")}
    for section, fields in _NOT_READ.items():
        if fields is None:
            p.pop(section, None)
        else:
            p[section] = {k: v for k, v in p[section].items() if k not in fields}
    record = {k: v for k, v in record.items() if k != "eval_every"}
    t = tuning.model_dump(mode="json", exclude={"record", "results"})
    text = json.dumps({"preset": p, "method": record, "tuning": t, "format": FORMAT}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _train(preset: PresetConfig, method: str, cfg: TrainerConfig, schedule: Schedule, seed: int, cache: Path,
           show_progress: bool):
    """Train one candidate as `harness run` trains seed ``seed`` (no checkpoints, probes or evaluation);
    (trainer, seconds, why it diverged or None)."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    try:
        adapter = base_adapter(preset, cfg.base_checkpoint)
        trainer = trainer_for(method, {"trainer": cfg.trainer})(adapter, preset, cfg, seed, workdir=cache)
    except (BaseCheckpointError, PairsError, ValueError) as exc:
        raise TuningError(f"{method}: {exc}") from exc
    t0 = time.perf_counter()
    for step in tqdm(range(schedule.steps), desc=f"tune {method} lr={cfg.lr:g}", disable=not show_progress,
                     leave=False):
        adapter.model.train()
        try:
            values = trainer.counted_step(step)
        except ValueError as exc:  # a data source ran dry, a reward cannot score, ...: say where; finished
            raise TuningError(f"{method} lr={cfg.lr:g} stopped at step {step}: {exc}; the finished candidates are "
                              "kept in the sweep directory (run `harness tune` again once fixed)") from exc
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if bad:
            return trainer, time.perf_counter() - t0, f"non-finite {bad} at step {step}"
    adapter.model.eval()
    return trainer, time.perf_counter() - t0, None


@torch.no_grad()
def _judged(preset: PresetConfig, trainer, crit: Criterion, tuning: TuningConfig, steps: int,
            batch: int = 16) -> tuple[np.ndarray, dict[str, float]]:
    """Per-video criterion values (mean over the judges) of videos sampled for the validation clips."""
    adapter = trainer.adapter
    clips = clip_batch(preset, crit.split, range(tuning.start, tuning.start + tuning.videos))
    sampler = trainer.eval_sampler(steps)
    samples: list[VideoSample] = []
    for lo in range(0, tuning.videos, batch):
        rows = slice(lo, min(tuning.videos, lo + batch))
        cond = adapter.encode_condition(clips.first_frames[rows], clips.captions[rows])
        seeds = [SAMPLE_SEED + i for i in range(rows.start, rows.stop)]
        for j, v in enumerate(sample(adapter, cond, seeds, sampler)):
            i = lo + j
            samples.append(VideoSample(
                video_id=f"val{i:04d}", frames=tensor_to_frames(v), fps=frame_rate(preset),
                first_frame=clips.frames[i, 0], caption=clips.captions[i],
                condition=WorldCondition(clips.specs[i], preset.world) if preset.data is None else None))
    per_judge = {}
    for name in crit.metrics:
        metric = _metric(name, preset)
        values = [v for v, _, _ in metric.score_many(samples)]
        if any(v is None for v in values):
            raise TuningError(f"{metric.identity} excluded some validation videos; it cannot rank candidates")
        per_judge[metric.identity] = np.asarray(values, dtype=np.float64)
    values = np.mean(np.stack(list(per_judge.values())), axis=0)
    return values, {k: float(v.mean()) for k, v in per_judge.items()}


def _metric(name: str, preset: PresetConfig) -> Metric:
    ((n, opts),) = expand_metrics([name], preset.eval.backends)
    return get_metric(n, **opts)


@torch.no_grad()
def _loss(preset: PresetConfig, trainer, crit: Criterion, tuning: TuningConfig) -> np.ndarray:
    """Per-clip denoising loss (mean of LOSS_DRAWS fixed draws) on the held-out clips of the imitated split."""
    adapter = trainer.adapter
    clips = clip_batch(preset, crit.split, range(tuning.start, tuning.start + tuning.videos))
    x0 = adapter.encode_video(clips.videos)
    cond = adapter.encode_condition(clips.first_frames, clips.captions)
    g = torch.Generator().manual_seed(tuning.seed + SAMPLE_SEED)
    kind = getattr(trainer.config, "timestep_sampling", "logit_normal")
    losses = [denoising_loss(adapter, x0, cond, sample_sigmas(kind, len(x0), g),
                             torch.randn(x0.shape, generator=g)).double().numpy() for _ in range(LOSS_DRAWS)]
    return np.mean(losses, axis=0)


def _score(preset: PresetConfig, trainer, crit: Criterion, tuning: TuningConfig, steps: int):
    if crit.judges:
        values, per_judge = _judged(preset, trainer, crit, tuning, steps)
        sign = 1.0
    else:
        values, per_judge, sign = _loss(preset, trainer, crit, tuning), None, -1.0
    se = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    return sign * float(values.mean()), se, per_judge


def _load(path: Path, key: str) -> Candidate | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        log.warning("%s is unreadable; training that candidate again", path)
        return None
    return Candidate(**data) if data.get("key") == key else None


def tune(preset: PresetConfig, methods: list[str], out: Path, show_progress: bool = True,
         steps: int | None = None) -> dict[str, Any]:
    """Run (or resume) the sweep of ``methods``; the sweep's record (``tuning.json`` in ``out``)."""
    tuning = preset.tuning or TuningConfig()
    if preset.threads:
        torch.set_num_threads(preset.threads)
    opts = RunOptions(methods=methods, seeds=[tuning.seed], steps=steps, show_progress=show_progress)
    try:
        plans = {m: method_plan(preset, m, opts) for m in methods}
        crits = {m: criterion(cfg, tuning) for m, (cfg, _) in plans.items()}
    except RunError as exc:
        raise TuningError(str(exc)) from exc
    problems = validation_problems(plans, tuning)
    if problems:
        raise TuningError("the validation clips are not held out:\n  " + "\n  ".join(problems))
    out.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"format": FORMAT, "preset": preset.name,
                              "settings": tuning.model_dump(mode="json", exclude={"record", "results"}),
                              "git": provenance().get("git", {}), "methods": {}}
    for method, (cfg, schedule) in plans.items():
        crit, center = crits[method], cfg.lr
        rows = []
        for lr in grid(center, tuning):
            cand_cfg = cfg.model_copy(update={"lr": lr})
            key = _key(preset, method_record(preset, method, cand_cfg, schedule), tuning)
            path = out / method / f"lr={lr:g}.json"
            cand = _load(path, key)
            if cand is None:
                log.info("%s: training lr=%g (%d steps, seed %d)", method, lr, schedule.steps, tuning.seed)
                trainer, seconds, diverged = _train(preset, method, cand_cfg, schedule, tuning.seed, out / "cache",
                                                    show_progress)
                score = se = per_judge = None
                if diverged is None:
                    score, se, per_judge = _score(preset, trainer, crit, tuning, schedule.steps)
                cand = Candidate(method, lr, key, score, se, round(seconds, 2), diverged, per_judge)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".partial")
                tmp.write_text(json.dumps(asdict(cand), indent=1))
                tmp.replace(path)
            shown = None if cand.score is None else (cand.score if crit.higher_is_better else -cand.score)
            log.info("%s lr=%g: %s", method, lr, cand.diverged or f"{'score' if crit.higher_is_better else 'loss'} "
                     f"{shown:.5g} (se {cand.se:.2g})")
            rows.append(cand)
        good = [c for c in rows if c.ok()]
        if not good:
            tried = ", ".join(f"{c.lr:g}" for c in rows)
            raise TuningError(f"{method}: every learning rate of the sweep diverged ({tried}); lower "
                              f"methods.{method}.lr (the sweep's centre)")
        chosen = max(good, key=lambda c: c.score)
        record["methods"][method] = {
            "center": center, "steps": schedule.steps, "criterion": crit.describe(tuning),
            "judges": list(crit.judges), "higher_is_better": crit.higher_is_better,
            "candidates": [{"lr": c.lr, "score": None if c.score is None else
                            (c.score if crit.higher_is_better else -c.score),
                            "se": c.se, "seconds": c.seconds, "diverged": c.diverged, "judges": c.judges}
                           for c in rows],
            "chosen": chosen.lr}
    (out / "tuning.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def merge_record(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """A preset's sweep record with ``new``'s methods added or replaced (a sweep of some methods keeps the
    others'); the settings must agree, or the budgets would differ."""
    if not old:
        return new
    if old.get("settings") != new.get("settings"):
        raise TuningError(f"the recorded sweep used tuning settings {old.get('settings')}, this one "
                          f"{new.get('settings')}: the budgets would differ; sweep every method again")
    return {**new, "methods": {**old.get("methods", {}), **new["methods"]}}
