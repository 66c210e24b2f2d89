"""What the preference trainers share: pair data, pair predictions with common random
numbers, and the loop step. ``dpo`` and ``pgdpo`` (and later ``apo``) differ only in
``objective``.

The reference model is the policy with its LoRA adapters disabled (no model copy).
Every pair shares one (t, noise) draw between its chosen and rejected sample and
between policy and reference, as Diffusion-DPO does.
"""

from __future__ import annotations

import json
import logging
from abc import abstractmethod
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from harness.data.preferences import (
    PairsError,
    PairSet,
    build_footage_pairs,
    build_rollout_pairs,
    footage_key,
    import_pairs,
    rollout_key,
)
from harness.data.source import clip_length, data_file, frame_size
from harness.distributed import current
from harness.models.base import Conditioning, ModelAdapter, uncounted, weights_digest
from harness.rundir import cache_lock
from harness.sampling import SamplerConfig
from trainers.base import SmokeChanges, Trainer, TrainerConfig
from trainers.objectives import sample_sigmas
from trainers.own_pairs import own_pairs_due, own_pairs_values
from trainers.preference_losses import PairErrors, dpo_loss

log = logging.getLogger(__name__)


class PairsConfig(BaseModel):
    """Where the preference pairs come from."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["rollouts", "file", "footage"] = Field(
        "rollouts", description="rollouts: the reference model's samples ranked by `judge`; file: "
                                "a pairs file; footage: a real clip (chosen) against a reference sample (rejected)")
    judge: Literal["latent_rm", "oracle"] = Field(
        "latent_rm", description="rollouts: who ranks them. latent_rm: the learned reward model fitted to rater "
                                 "labels on clips no method uses (a training judge, as VideoAlign is the paper's); "
                                 "oracle: the tiny world's ground truth, which the evaluation metrics "
                                 "distortion_rate and motion_adherence also use (reports mark the overlap)")
    judge_model: str | None = Field(None, description="judge latent_rm: its directory (default: the shipped one)")
    path: str | None = Field(None, description="JSONL/CSV pairs file (source=file); relative: under $HARNESS_DATA")
    split: str = Field("prompts", description="split the conditions come from")
    conditions: int = Field(96, ge=1)
    per_condition: int = Field(4, ge=2, description="videos per condition (PG-DPO: 4)")
    seed: int = 0


def pair_signals(cfg: PairsConfig | None) -> list[str]:
    """The judge that ranked a pair set: ``cfg.judge`` for rollouts, human labels for a file, the data
    itself for footage (a real clip chosen over a sample)."""
    if cfg is None:
        return []
    return {"rollouts": [cfg.judge], "file": ["labels"], "footage": ["footage"]}[cfg.source]


def pairs_problems(cfg: PairsConfig, preset, where: str) -> list[str]:
    """Why the pair set ``cfg`` cannot be built on ``preset`` (empty: it can)."""
    if cfg.source == "file":
        return [] if cfg.path else [f"{where}.source=file needs {where}.path (a JSONL or CSV pairs file)"]
    if cfg.source == "rollouts" and preset.data is not None:
        return [f"{where}.source=rollouts ranks rollouts of the tiny world (by its learned judge or oracle), which "
                f"real footage (preset {preset.name!r}) is not; use source=file (a pairs file) or source=footage"]
    if cfg.source == "footage":
        if preset.data is None:
            return [f"{where}.source=footage pairs real clips with samples, and preset {preset.name!r} has no "
                    "footage; use source=rollouts (ranked by the tiny world's judge)"]
        if cfg.split not in preset.data.splits:
            return [f"{where}.split={cfg.split!r} is not a split of the footage; use one of "
                    f"{', '.join(preset.data.splits)}"]
    return []


class DPOObjectiveConfig(TrainerConfig):
    beta: float = Field(100.0, gt=0, description="beta of Eq. 3 (PG-DPO: 100)")
    T: float = Field(1.0, gt=0, description="T in beta*T; 1 folds T into beta, as the papers' code does")
    own_pairs_every: int | None = Field(
        None, ge=0, description="log PG-DPO's Gamma and the chosen/rejected log-likelihood change on the step's own "
                                "training pairs (own_pairs/*, trainers/own_pairs.py) every this many steps; "
                                "default: probes.every; 0: never")


class PreferenceConfig(DPOObjectiveConfig):
    timestep_sampling: Literal["uniform", "logit_normal"] = "uniform"
    pairs: PairsConfig = Field(default_factory=PairsConfig)

    @classmethod
    def smoke_changes(cls, section: dict[str, Any], with_steps: bool) -> SmokeChanges:
        """Also few rollout conditions for the pair set."""
        return [*super().smoke_changes(section, with_steps), (("pairs", "conditions"), 8)]

    def preset_problems(self, preset, where: str) -> list[str]:
        return pairs_problems(self.pairs, preset, f"{where}.pairs")

    def training_signals(self) -> list[str]:
        return pair_signals(self.pairs)


def load_pairs(adapter: ModelAdapter, preset, cfg: PairsConfig, workdir: Path | None,
               show_progress: bool = False, start: int = 0, sampler: SamplerConfig | None = None) -> PairSet:
    """The pair set ``cfg`` describes, from the run's cache when it was built before. Its conditions
    are clips ``start`` .. ``start + cfg.conditions - 1`` of ``cfg.split`` (the probes' held-out
    set starts past every trainer's conditions; a trainer's own pairs start at 0). Rollouts and
    reference samples use ``sampler`` (a method's own; default: the preset's), part of the cache key."""
    sampler = sampler or preset.sampler
    if cfg.source == "file":
        if not cfg.path:
            raise ValueError("pairs.source=file needs pairs.path (a JSONL or CSV pairs file)")
        return import_pairs(data_file(cfg.path), resolution=frame_size(preset), num_frames=clip_length(preset))
    if cfg.source == "rollouts" and preset.data is not None:
        raise PairsError(f"pairs.source=rollouts ranks rollouts of the tiny world, which real footage "
                         f"(preset {preset.name!r}) is not; use source=file (a pairs file) or source=footage "
                         "(real clip chosen over a reference sample)")
    if cfg.source == "footage":
        if preset.data is None:
            raise PairsError("pairs.source=footage pairs real clips with samples; the tiny world's presets use "
                             "source=rollouts (ranked by its judge)")
        key = footage_key(weights_digest(adapter), preset.data.model_dump(mode="json"), cfg.split, cfg.conditions,
                          sampler, cfg.seed, start)
    else:
        judge_name, scorer = pair_judge(cfg)
        key = rollout_key(weights_digest(adapter), preset.world, cfg.split, cfg.conditions, cfg.per_condition,
                          sampler, cfg.seed, judge_name, start)
    path = workdir / "pairs" / f"rollouts-{key}.npz" if workdir else None
    d = current()
    # One builder per cache entry: workers of `harness run --jobs N` that need the same pair set wait for the
    # first one and read its file (rank 0 holds the lock for a process group).
    with cache_lock(path) if path and d.is_main else nullcontext():
        # Rank 0's cache decides (building is collective, so every rank must take the same branch), and
        # every rank reads rank 0's file: the run directory is shared, as checkpoints already need.
        found = d.broadcast(str(path) if path and path.exists() else None)
        if found:
            return PairSet.load(Path(found))
        if cfg.source == "footage":
            log.info("building %d preference pairs: real clips against reference samples", cfg.conditions)
            pairs = build_footage_pairs(adapter, preset, sampler, split=cfg.split, conditions=cfg.conditions,
                                        seed=cfg.seed, batch_size=preset.eval.batch_size or 8,
                                        show_progress=show_progress, start=start)
        else:
            log.info("building %d preference pairs from %d rollouts, ranked by %s", cfg.conditions,
                     cfg.conditions * cfg.per_condition, cfg.judge)
            pairs = build_rollout_pairs(adapter, preset.world, sampler, split=cfg.split,
                                        conditions=cfg.conditions, per_condition=cfg.per_condition, seed=cfg.seed,
                                        show_progress=show_progress, start=start, batch_judge=scorer,
                                        judge_name=judge_name)
        pairs.provenance["cache_key"] = key
        if path and d.is_main:  # one writer: the ranks hold the same pairs (sampled in shards, gathered)
            pairs.save(path)
            path.with_suffix(".json").write_text(json.dumps(pairs.provenance, indent=2))  # readable next to it
        return pairs


def pair_judge(cfg: PairsConfig):
    """(name in the cache key, batch judge or None for the oracle) of a rollout pair set."""
    if cfg.judge == "oracle":
        return "oracle", None
    from harness.scorers.latent_rm import load_reward_model, video_scorer

    rm = load_reward_model(cfg.judge_model)
    return f"latent_rm:{rm.digest}", video_scorer(rm)


def pair_errors(adapter: ModelAdapter, x_w: torch.Tensor, x_l: torch.Tensor, cond: Conditioning,
                sigma: torch.Tensor, noise: torch.Tensor, with_reference: bool = True) -> PairErrors:
    """Policy (with grad) and reference (no grad) errors on noised pairs; shared (sigma, noise)."""
    x0 = torch.cat([x_w, x_l])
    sig, eps = torch.cat([sigma, sigma]), torch.cat([noise, noise])
    both = Conditioning.cat([cond, cond])
    x_t = adapter.add_noise(x0, eps, sig)
    target = adapter.training_target(x0, eps, sig).float()
    pred = adapter.predict(x_t, sig, both).float()
    err_w, err_l = ((pred - target) ** 2).chunk(2)
    if with_reference:
        with torch.no_grad(), adapter.reference():
            ref_pred = adapter.predict(x_t, sig, both).float()
        ref_err_w, ref_err_l = ((ref_pred - target) ** 2).chunk(2)
        ref_pred_w = ref_pred.chunk(2)[0]
    else:
        ref_err_w = ref_err_l = ref_pred_w = None
    return PairErrors(err_w, err_l, ref_err_w, ref_err_l, pred_w=pred.chunk(2)[0], ref_pred_w=ref_pred_w)


class PreferenceTrainer(Trainer):
    config: PreferenceConfig
    pairwise_preference = True

    def __init__(self, adapter, preset, config, seed, workdir=None):
        super().__init__(adapter, preset, config, seed, workdir)
        self.pairs = load_pairs(adapter, preset, config.pairs, workdir, sampler=self.sampler)

    @abstractmethod
    def objective(self, errors: PairErrors) -> tuple[torch.Tensor, dict[str, float]]:
        """Per-pair losses (B,) and scalars to log."""

    def pair_loss(self, x_w, x_l, cond, sigma, noise) -> tuple[torch.Tensor, dict[str, float]]:
        losses, logs = self.objective(pair_errors(self.adapter, x_w, x_l, cond, sigma, noise))
        return losses.mean(), logs

    def draw_batch(self, step: int) -> tuple:
        """The step's pairs and their (sigma, noise) draws: this rank's rows of the global batch."""
        b = self.config.batch_size
        rows = self.dist.rows(b)  # this rank's share of the global batch (all of it on one process)
        idx = torch.randint(len(self.pairs), (b,), generator=self.generator)[rows].tolist()
        self.saw(2 * b)  # both videos of each pair
        x_w, x_l, cond = self.pairs.tensors(self.adapter, idx)
        sigma = sample_sigmas(self.config.timestep_sampling, b, self.generator)[rows]
        noise = torch.randn((b, *x_w.shape[1:]), generator=self.generator)[rows]
        return x_w, x_l, cond, sigma, noise

    def compute_loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        return self.pair_loss(*self.draw_batch(step))

    def own_pairs(self, x_w, x_l, cond, sigma, noise) -> dict[str, float]:
        """PG-DPO's Gamma and Fig. 2 on this step's own pairs and draws (trainers/own_pairs.py), with
        DPO at this method's beta and T: one forward serves every gradient."""
        e = pair_errors(self.adapter, x_w, x_l, cond, sigma, noise)
        method = self.objective(e)[0].mean()
        dpo = dpo_loss(e, self.config.beta, self.config.T)[0].mean()
        return own_pairs_values(self.params, self.lr, e, method, dpo)

    def train_step(self, step: int) -> dict[str, float]:
        batch = self.draw_batch(step)
        with uncounted():  # a measurement, not training compute
            own = self.own_pairs(*batch) if own_pairs_due(self.config, self.preset, step) else {}
        loss, logs = self.pair_loss(*batch)
        grad_norm = self.optimize(loss)
        return {**self.dist.average_logs({"loss": loss.item(), **logs, **own}), "grad_norm": grad_norm}
