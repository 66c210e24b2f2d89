"""`apo`: Diffusion-APO, trajectory-aware DPO run as a list of stages.

The objective is Diffusion-DPO's (trainers/preference_losses.py), evaluated at
trajectory-aware timesteps (trainers/timesteps.py): each optimization step sums the
gradients of a hybrid window of N_H = 4 high-noise and N_L = 1 low-noise timesteps
(fresh noise per timestep, shared by the chosen and rejected sample of a pair and by
policy and reference). One APO step therefore costs 5 DPO steps; the paper's
compute-matched comparison is DPO for S steps against APO for S/5 steps.

Stages (``stages`` in the config, run in order; their steps add up to ``steps``):
  * ``offline``: a fixed pair set (rollout pairs or a pairs file, as `dpo` uses);
  * ``online``: each step the policy samples two candidates per condition from
    different seeds and a ranker picks chosen and rejected (ties are skipped);
  * ``half_online``: a labelled anchor from a pair set against an on-policy sample of
    the same condition; a chosen anchor makes the sample the rejected one, and vice
    versa (needs ``pairs``: the labelled anchors).
Each stage's reference is the frozen result of the previous stage: at a stage
boundary the LoRA update is folded into the base weights and the adapters restart,
so "adapters disabled" is the previous stage's model. Stage ends are checkpoints unless
``stage_checkpoints`` is false (a checkpoint anywhere rebuilds its stage when loaded).

  * ``distill``: guidance distillation (Eq. 3-4): the student (the policy, one forward
    pass) regresses the teacher's (the previous stage, frozen) CFG + STG guided velocity on
    noised clips of ``split``, at trajectory-aware timesteps; the schedule is unchanged;
  * ``distill_dpo``: distillation-aware DPO, an offline stage whose reference is the
    distilled model (refused unless a ``distill`` stage comes before it).

Rankers (trainers/rankers.py): the learned reward model fitted to rater labels (latent_rm, the
default: a training judge, not the evaluation's), the tiny world's oracle (marked as the evaluation
judge in reports), or a local vision-language model with the paper's hierarchical four-way prompt.

The default is the paper's pipeline (Sec. 3.3, 4.3): ``online``, ``half_online`` and ``offline``
stages of equal length (the paper: 300 iterations each), ranked and labelled by the training judge
``latent_rm``; presets with guidance append ``distill`` and ``distill_dpo`` (the wan21 preset). The
offline-only form, the paper's compute-matched comparison with DPO (Table 1: APO 100 steps vs DPO
500), is the named variant ``apo-offline`` in the presets.

Defaults scaled for the tiny model: lr 5e-5 and beta 100 as `dpo`, batch 8 pairs, 20 steps per
stage, the paper's shifts {3,4,5,6}, offset N(0, 5) read as a standard deviation, window 4 + 1.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.data.source import clip_batch
from harness.data.video_io import frames_to_tensor, tensor_to_frames
from harness.models.base import Conditioning, uncounted
from harness.models.registry import model_path
from harness.sampling import SamplerConfig, guided_velocity, sample
from trainers.base import Draw, SmokeChanges, Trainer, pairs_draws
from trainers.claims import Objective, PaperClaim
from trainers.objectives import sample_sigmas
from trainers.own_pairs import own_pairs_due, own_pairs_values
from trainers.preference import (
    DPOObjectiveConfig,
    PairsConfig,
    load_pairs,
    pair_errors,
    pair_signals,
    pairs_problems,
)
from trainers.preference_losses import dpo_loss
from trainers.rankers import RankCondition, get_ranker
from trainers.registry import register_trainer
from trainers.timesteps import TimestepSamplerConfig, TrajectoryTimesteps

log = logging.getLogger(__name__)


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["offline", "online", "half_online", "distill", "distill_dpo"]
    steps: int = Field(ge=1)
    pairs: PairsConfig | None = Field(None, description="offline/distill_dpo: the pair set; "
                                                        "half_online: labelled anchors")
    ranker: Literal["latent_rm", "oracle", "vlm"] = Field(
        "latent_rm", description="online: who picks chosen and rejected (latent_rm: the learned training judge; "
                                 "oracle: the evaluation's own judge, marked in reports)")
    ranker_model: str | None = Field(None, description="online with ranker vlm: the local model directory (relative: "
                                                       "under $HARNESS_MODELS); "
                                                       "latent_rm: its directory (default: the shipped one)")
    split: str = Field("prompts", description="online: conditions to roll out from; distill: clips to noise")
    conditions: int = Field(96, ge=1, description="online/distill: how many conditions of `split` to draw from")
    # distill: the teacher (the previous stage, frozen) guided by CFG and STG (Eq. 3)
    teacher_guidance_scale: float = Field(3.0, ge=1.0, description="distill: the teacher's CFG scale (1 + omega)")
    teacher_stg_scale: float = Field(1.0, ge=0.0, description="distill: the teacher's STG strength (lambda)")
    stg_blocks: list[int] = Field(default_factory=lambda: [2], description="distill: blocks STG skips")

    @model_validator(mode="after")
    def _data(self) -> StageConfig:
        if self.kind == "half_online" and self.pairs is None:
            raise ValueError("a half_online stage needs labelled anchors: give it `pairs` "
                             "(rollouts judged by the oracle, or a pairs file of human labels)")
        if self.kind == "online" and self.ranker == "vlm" and not self.ranker_model:
            raise ValueError("an online stage ranked by 'vlm' needs ranker_model (a local model directory)")
        if self.kind in ("offline", "distill_dpo") and self.pairs is None:
            self.pairs = PairsConfig()
        return self


def _distill_problems(stage: StageConfig, preset, where: str) -> list[str]:
    """What of a distill stage's guided teacher (Eq. 3) the preset cannot provide, as far as the configs
    show. CFG contrasts the caption with the empty one (Wan; the tiny model learnt the empty caption
    from caption dropout), except on SVD, whose unconditional branch zeroes the image condition and
    always exists: on real footage without a captions file the captions are sequence names (DAVIS) or
    one default caption, which carry no text to guide by. STG's blocks are checked against the tiny
    model's depth; a real model's depth is known only once it loads (the stage then fails at step 0).
    Not checked: whether a checkpoint's unconditional branch was trained at all."""
    problems = []
    family = preset.adapter.family if preset.adapter is not None else "tiny"
    if stage.teacher_guidance_scale > 1.0 and family != "svd" and preset.data is not None \
            and preset.data.captions is None:
        problems.append(f"{where} (distill): the teacher's CFG (teacher_guidance_scale "
                        f"{stage.teacher_guidance_scale}) needs captions to guide by, and preset {preset.name!r} "
                        f"has none (data.captions is unset, so {family} would see "
                        f"{'sequence names' if preset.data.kind == 'davis' else 'one default caption'}); give "
                        "data.captions a captions file, or set teacher_guidance_scale: 1")
    if stage.teacher_stg_scale > 0 and preset.adapter is None:
        bad = [b for b in stage.stg_blocks if not 0 <= b < preset.model.num_layers]
        if bad:
            problems.append(f"{where} (distill): stg_blocks {bad} are not blocks of the tiny model "
                            f"({preset.model.num_layers} blocks: 0-{preset.model.num_layers - 1}); choose blocks "
                            "in that range, or set teacher_stg_scale: 0")
    return problems


class APOConfig(DPOObjectiveConfig):
    lr: float = Field(5e-5, gt=0)
    timesteps: TimestepSamplerConfig = Field(default_factory=TimestepSamplerConfig)
    stages: list[StageConfig] = Field(default_factory=lambda: [
        StageConfig(kind="online", steps=20), StageConfig(kind="half_online", steps=20, pairs=PairsConfig()),
        StageConfig(kind="offline", steps=20)], min_length=1,
        description="run in order; default: the paper's online, half-online, offline curriculum (Sec. 3.3)")
    stage_checkpoints: bool = Field(
        True, description="checkpoint (and so evaluate and probe) every stage end besides the runner's schedule; "
                          "false: only the schedule's checkpoints (a resumed run rebuilds the stages either way)")

    @classmethod
    def smoke_changes(cls, section: dict[str, Any], with_steps: bool) -> SmokeChanges:
        """Also few conditions for the stages' pair sets and online rounds (the list is replaced whole)."""
        changes = super().smoke_changes(section, with_steps)
        if section.get("stages"):
            stages = []
            for stage in section["stages"]:
                stage = dict(stage)
                if "pairs" in stage:
                    stage["pairs"] = {**(stage.get("pairs") or {}), "conditions": 8}
                if stage.get("kind") == "online":
                    stage["conditions"] = 8
                stages.append(stage)
            changes.append((("stages",), stages))
        return changes

    @model_validator(mode="after")
    def _order(self) -> APOConfig:
        kinds = [st.kind for st in self.stages]
        for i, kind in enumerate(kinds):
            if kind == "distill_dpo" and "distill" not in kinds[:i]:
                raise ValueError(f"stage {i} (distill_dpo) needs a distilled model: put a `distill` stage "
                                 "before it")
        return self

    def training_draws(self, where: str) -> list[Draw]:
        """Each stage's pair set, and the conditions of its online rollouts or guidance distillation."""
        out = pairs_draws(getattr(self, "pairs", None), where)
        for i, stage in enumerate(self.stages):
            out += pairs_draws(stage.pairs, f"{where}.stages[{i}]")
            if stage.kind in ("online", "distill"):
                out.append(Draw(f"{where}.stages[{i}] ({stage.kind} conditions)", stage.split, 0, stage.conditions))
        return out

    def training_signals(self) -> list[str]:
        out: list[str] = []
        for stage in self.stages:
            out += pair_signals(stage.pairs)
            if stage.kind == "online":
                out.append(stage.ranker)
            if stage.kind == "distill":
                out.append("teacher")
        return list(dict.fromkeys(out))

    def preset_problems(self, preset, where: str) -> list[str]:
        problems = []
        for i, stage in enumerate(self.stages):
            if stage.pairs is not None:
                problems += pairs_problems(stage.pairs, preset, f"{where}.stages[{i}].pairs")
            if stage.kind == "online" and stage.ranker != "vlm" and preset.data is not None:
                problems.append(f"{where}.stages[{i}] (online) is ranked by the tiny world's {stage.ranker}, which "
                                f"real footage (preset {preset.name!r}) does not have; rank with a vision-language "
                                "model: ranker: vlm, ranker_model: DIR")
            if stage.kind == "online" and stage.ranker == "vlm" and not model_path(stage.ranker_model).is_dir():
                problems.append(f"{where}.stages[{i}] (online): the VLM ranker's directory "
                                f"{str(model_path(stage.ranker_model))!r} does not exist; place the ranker's weights "
                                "there (a relative ranker_model is under $HARNESS_MODELS), or run the offline-only "
                                "variant apo-offline")
            if stage.kind == "distill":
                problems += _distill_problems(stage, preset, f"{where}.stages[{i}]")
        distill = [i for i, st in enumerate(self.stages) if st.kind == "distill"]
        if distill and self.sampler is not None and (self.sampler.guidance_scale != 1.0 or self.sampler.stg_scale):
            problems.append(f"{where}.sampler guides (guidance_scale {self.sampler.guidance_scale}, stg_scale "
                            f"{self.sampler.stg_scale}) but stage {distill[0]} (distill) distils the guidance into "
                            "the model, so evaluating it guided would apply guidance twice; set the method's "
                            "sampler.guidance_scale: 1 and stg_scale: 0 (or drop it: checkpoints after a distill "
                            "stage are evaluated without guidance)")
        return problems

    def planned_steps(self) -> int:
        """The stages' steps add up to the method's."""
        return sum(s.steps for s in self.stages)

    def fit_steps(self, steps: int) -> APOConfig:
        """An overall ``steps`` (--steps, or a section's ``steps``) rescales the stages in proportion;
        each keeps at least one step, so the result may be longer than ``steps``."""
        total = self.planned_steps()
        if steps == total:
            return self
        scaled = [max(1, round(s.steps * steps / total)) for s in self.stages]
        scaled[-1] = max(1, steps - sum(scaled[:-1]))
        return self.model_copy(update={"stages": [s.model_copy(update={"steps": n})
                                                  for s, n in zip(self.stages, scaled, strict=True)]})


class PairBatch(NamedTuple):
    """One rank's share of a step's pairs: its rows of the ``n`` pairs of the global batch and the
    weight of its mean (harness.distributed.Dist.share; all of them and 1 on one process)."""

    x_w: torch.Tensor
    x_l: torch.Tensor
    cond: Conditioning
    n: int
    rows: slice
    scale: float


@register_trainer
class APOTrainer(Trainer):
    name = "apo"
    report_rank = 50
    config_class = APOConfig
    description = "Diffusion-APO: trajectory-aware DPO with a high/low timestep window, in stages (LoRA)"
    training_objective = Objective("reward_margin", "higher", "implicit reward margin (chosen − rejected)")
    claims = (
        # Table 1 compares the APO objective with DPO on one offline pair set: the `apo-offline` variant.
        PaperClaim("Diffusion-APO", "APO lowers the distortion rate vs DPO at matched compute (Table 1, offline)",
                   "difference", ("dpo", "apo-offline"), a="apo-offline", b="dpo", metric="distortion_rate",
                   positive=False),
        PaperClaim("Diffusion-APO", "the online, half-online, offline curriculum lowers the distortion rate "
                                    "(Sec. 4.3: 14.0 % to 5.0 %)", "difference", ("apo",), a="apo", b="base",
                   metric="distortion_rate", positive=False),
    )
    config: APOConfig
    pairwise_preference = True

    def __init__(self, adapter, preset, config, seed, workdir=None):
        super().__init__(adapter, preset, config, seed, workdir)
        # The anchors are the inference schedule of the sampler this method samples and is evaluated with.
        self.timesteps = TrajectoryTimesteps(config.timesteps, self.sampler, adapter.num_train_timesteps)
        self.ends = list(np.cumsum([s.steps for s in config.stages]))
        self.stage = 0
        self.folded: list[dict[str, torch.Tensor]] = []  # LoRA state of each finished stage
        # The weights a fold changes (the LoRA-wrapped layers' base weights), copied to CPU at the first
        # fold, so that loading a checkpoint rebuilds its stage's reference by re-folding from them. A
        # one-stage run never folds and keeps no copy (a full copy of a 14B model would not fit).
        self._base: dict[str, torch.Tensor] | None = None
        self._data: dict[object, object] = {}  # pair sets per stage, rankers
        self._window: torch.Tensor | None = None  # the last timestep window (a stride < window carries some over)
        # Offline pair sets and half-online anchors are data fixed before training (the paper's are human-labelled
        # sets): each stage's is built (or read from the run's cache) now, from the starting model, never from a
        # later stage's model.
        for i, stage in enumerate(config.stages):
            if stage.pairs is not None:
                self._pairs(i)

    # -- stages ----------------------------------------------------------------------
    def checkpoint_steps(self) -> set[int]:
        return {int(e) for e in self.ends} if self.config.stage_checkpoints else set()

    def stage_at(self, step: int) -> int:
        return int(np.searchsorted(self.ends, step, side="right"))

    def _sampler_after(self, done: int) -> SamplerConfig:
        """The sampler of the model that the first ``done`` stages made: after a ``distill`` stage the
        student already produces the guided velocity (Eq. 4), so it samples without CFG and STG (guiding
        it again would apply guidance twice)."""
        if any(st.kind == "distill" for st in self.config.stages[:done]):
            return self.sampler.model_copy(update={"guidance_scale": 1.0, "stg_scale": 0.0})
        return self.sampler

    def eval_sampler(self, step: int) -> SamplerConfig:
        return self._sampler_after(self.stage_at(step))

    def _advance_to(self, stage: int) -> None:
        while self.stage < stage:
            if self._base is None:
                self._base = {k: v.detach().to("cpu", copy=True) for k, v in self.adapter.model.state_dict().items()
                              if k.endswith("base_layer.weight")}
            self.folded.append({k: v.clone() for k, v in self.adapter.lora_state_dict().items()})
            with torch.random.fork_rng():  # the restarted adapters' init must not depend on global state
                torch.manual_seed(self.seed * 1000 + self.stage + 1)
                self.adapter.fold_lora()
            self.optimizer.reset()  # a fresh AdamW for the new stage
            self.stage += 1
            log.info("apo: stage %d (%s) starts; reference = the end of stage %d",
                     self.stage, self.config.stages[self.stage].kind, self.stage - 1)

    def _ranker(self, stage: StageConfig):
        key = ("ranker", stage.ranker, stage.ranker_model)
        if key not in self._data:  # a VLM loads once
            model = str(model_path(stage.ranker_model)) if stage.ranker == "vlm" else stage.ranker_model
            self._data[key] = get_ranker(stage.ranker, self.preset.world, model)
        return self._data[key]

    def _pairs(self, stage: int):
        if stage not in self._data:
            with uncounted():  # a pair set is prepared data, as dpo's built before training (trainers/base.py)
                self._data[stage] = load_pairs(self.adapter, self.preset, self.config.stages[stage].pairs,
                                               self.workdir, sampler=self.sampler)
        return self._data[stage]

    # -- data of one step --------------------------------------------------------------
    def _seeds(self, n: int) -> list[int]:
        return torch.randint(2**31 - 1, (n,), generator=self.generator).tolist()

    def _policy_frames(self, cond: Conditioning, seeds: list[int]) -> list[np.ndarray]:
        """The policy's videos of ``cond`` from ``seeds``, as uint8 frames (what a ranker sees). Sampled
        here, on this rank only: the callers hand each rank its own rows."""
        was_training = self.adapter.model.training
        self.adapter.model.eval()
        try:
            videos = sample(self.adapter, cond, seeds, self._sampler_after(self.stage))
        finally:
            self.adapter.model.train(was_training)
        return [tensor_to_frames(v) for v in videos]

    def _batch(self, step: int) -> PairBatch | None:
        """This rank's share of the step's pairs (None: every pair tied). Every rank draws the
        global batch alike (indices, seeds) and samples, ranks and encodes only its rows of it."""
        stage = self.config.stages[self.stage]
        b = self.config.batch_size
        self.saw(2 * b)  # both videos of each pair, drawn or generated (tied online pairs included)
        if stage.kind in ("offline", "distill_dpo"):
            pairs = self._pairs(self.stage)
            idx = torch.randint(len(pairs), (b,), generator=self.generator).tolist()
            rows, scale = self.dist.share(b)
            return PairBatch(*pairs.tensors(self.adapter, idx[rows]), n=b, rows=rows, scale=scale)
        if stage.kind == "online":
            return self._online_batch(stage, b)
        # half_online: a labelled anchor against an on-policy sample of its condition
        anchors = self._pairs(self.stage)
        idx = torch.randint(len(anchors), (b,), generator=self.generator).tolist()
        positive = (torch.rand(b, generator=self.generator) < 0.5).tolist()
        seeds = self._seeds(b)
        rows, scale = self.dist.share(b)  # each rank samples the on-policy half of its own pairs only
        x_w, x_l, cond = anchors.tensors(self.adapter, idx[rows])
        gen = self._encode(self._policy_frames(cond, seeds[rows]))
        pos = torch.tensor(positive[rows], device=x_w.device)[:, None, None, None, None]
        return PairBatch(torch.where(pos, x_w, gen), torch.where(pos, gen, x_l), cond, n=b, rows=rows, scale=scale)

    def _online_batch(self, stage: StageConfig, b: int) -> PairBatch | None:
        """Two policy samples per condition, ranked. Rank r samples and ranks pairs r, r + W, ... and
        encodes the winners and losers it keeps; the kept pairs' latents are gathered and re-split
        evenly (``Dist.share``), since how many pairs tie is known only now."""
        idx = torch.randint(stage.conditions, (b,), generator=self.generator).tolist()
        seeds_a, seeds_c = self._seeds(b), self._seeds(b)
        mine = list(self.dist.strided(b))
        kept, won, lost = [], [], []
        if mine:  # a rank has no pair when the batch is smaller than the world
            batch = clip_batch(self.preset, stage.split, [idx[i] for i in mine])
            cond = self.adapter.encode_condition(batch.first_frames, batch.captions)
            a = self._policy_frames(cond, [seeds_a[i] for i in mine])
            c = self._policy_frames(cond, [seeds_c[i] for i in mine])
            ranker = self._ranker(stage)
            for j, i in enumerate(mine):
                pref = ranker.prefer(a[j], c[j], RankCondition(batch.specs[j], batch.frames[j, 0],
                                                               batch.captions[j]))
                if pref:
                    kept.append(i)
                    won.append(a[j] if pref > 0 else c[j])
                    lost.append(c[j] if pref > 0 else a[j])
        local = (kept, self._encode(won), self._encode(lost)) if kept else (kept, None, None)
        parts = self.dist.gather(tuple(x.cpu() if torch.is_tensor(x) and self.dist.enabled else x for x in local))
        latents = {}  # pair row -> (winner, loser) latents, over every rank's kept pairs
        for rows_r, won_r, lost_r in parts:
            latents.update({i: (won_r[j], lost_r[j]) for j, i in enumerate(rows_r)})
        keep = sorted(latents)
        if not keep:  # every pair tied, on every rank alike
            return None
        rows, scale = self.dist.share(len(keep))
        device = next(self.adapter.model.parameters()).device
        x_w = torch.stack([latents[i][0] for i in keep[rows]]).to(device)
        x_l = torch.stack([latents[i][1] for i in keep[rows]]).to(device)
        batch = clip_batch(self.preset, stage.split, [idx[i] for i in keep[rows]])
        cond = self.adapter.encode_condition(batch.first_frames, batch.captions)
        return PairBatch(x_w, x_l, cond, n=len(keep), rows=rows, scale=scale)

    def _encode(self, frames: list[np.ndarray]) -> torch.Tensor:
        return self.adapter.encode_video(torch.stack([frames_to_tensor(f) for f in frames]))

    # -- the objective -----------------------------------------------------------------
    def _window_losses(self, batch: PairBatch):
        """Yield (t, DPO loss at t, stats, whether t is the window's last) over one hybrid window,
        fresh noise per timestep; lazily, so one timestep's graph is freed before the next. Loss and
        stats are this rank's means weighted by its share, whose rank-average is the global mean."""
        T = self.adapter.num_train_timesteps
        self._window = self.timesteps.window(self.generator, self._window)
        window = self._window.tolist()
        x_w = batch.x_w
        for i, t in enumerate(window):
            sigma = torch.full((len(x_w),), t / T)
            noise = torch.randn((batch.n, *x_w.shape[1:]), generator=self.generator)[batch.rows]
            loss, stats = dpo_loss(pair_errors(self.adapter, x_w, batch.x_l, batch.cond, sigma, noise),
                                   self.config.beta, self.config.T)
            yield t, batch.scale * loss.mean(), {k: batch.scale * v for k, v in stats.items()}, i == len(window) - 1

    def pair_loss(self, x_w, x_l, cond, sigma, noise) -> tuple[torch.Tensor, dict[str, float]]:
        """APO's objective on given pairs, for probes: the summed DPO loss over one window of
        trajectory-aware timesteps drawn from a fixed generator (``sigma`` and ``noise`` of
        the caller are not APO's own draws and are not used)."""
        g = torch.Generator().manual_seed(0)
        T, total = self.adapter.num_train_timesteps, 0.0
        for t in self.timesteps.window(g).tolist():
            eps = torch.randn(x_w.shape, generator=g)
            loss, _ = dpo_loss(pair_errors(self.adapter, x_w, x_l, cond, torch.full((len(x_w),), t / T), eps),
                               self.config.beta, self.config.T)
            total = total + loss.mean()
        return total, {}

    def own_pairs(self, step: int, batch: PairBatch) -> dict[str, float]:
        """PG-DPO's Gamma and Fig. 2 on this step's own pairs (trainers/own_pairs.py): the method's loss
        is the step's summed window loss, replayed from the same generator state (restored after, so
        the step draws the same window and noise); DPO at APO's beta and T is Diffusion-DPO's own draw,
        one uniform t and noise per pair from a generator of (seed, step) alone, at which the chosen and
        rejected log-likelihoods are read too."""
        rng, window = self.generator.get_state(), self._window
        try:
            method = sum(loss for _, loss, _, _ in self._window_losses(batch))
        finally:
            self.generator.set_state(rng)
            self._window = window
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        sigma = sample_sigmas("uniform", batch.n, g)[batch.rows]
        noise = torch.randn((batch.n, *batch.x_w.shape[1:]), generator=g)[batch.rows]
        e = pair_errors(self.adapter, batch.x_w, batch.x_l, batch.cond, sigma, noise)
        dpo = batch.scale * dpo_loss(e, self.config.beta, self.config.T)[0].mean()
        return own_pairs_values(self.params, self.lr, e, method, dpo)

    def _distill_loss(self) -> torch.Tensor:
        """Eq. 4: the student's single prediction against the teacher's CFG + STG guided one."""
        stage = self.config.stages[self.stage]
        b, T = self.config.batch_size, self.adapter.num_train_timesteps
        rows = self.dist.rows(b)  # every rank draws the global batch and keeps its rows
        idx = torch.randint(stage.conditions, (b,), generator=self.generator).tolist()
        batch = clip_batch(self.preset, stage.split, idx[rows])
        self.saw(b)
        x0 = self.adapter.encode_video(batch.videos)
        cond = self.adapter.encode_condition(batch.first_frames, batch.captions)
        sigma = self.timesteps.sample(b, self.generator).double() / T
        sigma = sigma.clamp(min=1.0 / T).float()[rows]
        noise = torch.randn((b, *x0.shape[1:]), generator=self.generator)[rows]
        x_t = self.adapter.add_noise(x0, noise, sigma)
        with torch.no_grad(), self.adapter.reference():
            teacher = guided_velocity(self.adapter, cond, stage.teacher_guidance_scale, stage.teacher_stg_scale,
                                      stage.stg_blocks)(x_t, sigma)
        return ((self.adapter.predict(x_t, sigma, cond).float() - teacher.float()) ** 2).mean()

    def compute_loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The window's summed loss in the current stage (one graph; for probes, which must not
        change the trainer, so no stage hand-off here). Training backpropagates per timestep."""
        if self.config.stages[self.stage].kind == "distill":
            return self._distill_loss(), {}
        batch = self._batch(step)
        if batch is None:
            return torch.zeros((), requires_grad=True), {"pairs": 0.0}
        window = self._window
        parts = list(self._window_losses(batch))
        self._window = window  # the carried-over window belongs to training, not to this call
        return sum(p[1] for p in parts), {"pairs": float(batch.n)}

    def train_step(self, step: int) -> dict[str, float]:
        self._advance_to(self.stage_at(step))
        if self.config.stages[self.stage].kind == "distill":
            loss = self._distill_loss()
            grad_norm = self.optimize(loss)
            return {**self.dist.average_logs({"loss": loss.item()}), "grad_norm": grad_norm,
                    "stage": float(self.stage)}
        batch = self._batch(step)
        logs: dict[str, float] = {"stage": float(self.stage), "pairs": float(batch.n if batch else 0)}
        self.optimizer.zero_grad()
        if batch is None:  # every pair tied (on every rank alike): nothing to learn from this step
            return {"loss": 0.0, "grad_norm": 0.0, **logs}
        with uncounted():  # a measurement, not training compute
            own = self.own_pairs(step, batch) if own_pairs_due(self.config, self.preset, step) else {}
        total, acc, margin, high = 0.0, 0.0, 0.0, []
        for t, loss, stats, last in self._window_losses(batch):
            self.optimizer.backward(loss, last=last)  # gradients summed over the window, as the paper does
            total += loss.item()
            acc += stats["implicit_acc"]
            margin += stats["reward_margin"]
            high.append(t)
        k = len(high)
        grad_norm = self.optimizer.step()
        return {**self.dist.average_logs({"loss": total, "implicit_acc": acc / k, "reward_margin": margin / k,
                                          **own}),
                "grad_norm": grad_norm, "t_mean": float(np.mean(high)), **logs}

    # -- resumable state ---------------------------------------------------------------
    def state_dict(self):
        # A copy of the list: later stages append to self.folded, and the state must not change with them.
        return {**super().state_dict(), "stage": self.stage, "folded": list(self.folded), "window": self._window}

    def load_state_dict(self, state) -> None:
        # Rebuild the reference of the checkpoint's stage: base weights, then every finished stage folded in.
        if self._base is not None:  # something was folded since the base: undo it
            missing = self.adapter.model.load_state_dict(self._base, strict=False).unexpected_keys
            assert not missing, missing
        self.stage, self.folded = 0, []
        for lora in state.get("folded", []):
            self.adapter.load_lora_state_dict(lora)
            self._advance_to(self.stage + 1)
        super().load_state_dict(state)
        self._window = state.get("window")
