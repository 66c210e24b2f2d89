"""`shift`: Smooth Hybrid Fine-Tuning with adversarial pixel-motion advantages (paper 000, Alg. 1).

Every step minimises Eq. 12 on two batches of the same size:

    L = lambda_sft * mean_b ||v(x_t) - v*||^2  +  lambda_awr * mean_b A~_b ||v(x~_t) - v~*||^2

* the offline anchor x: real clips of ``anchor_split`` (SFT's data, in the same order as the
  `sft` method, so the two see identical clips);
* the online term x~: the policy's own rollouts from a buffer of ``buffer.prompts`` prompts x
  ``buffer.rollouts_per_prompt`` samples, refilled on-policy after ``buffer.passes`` passes (K);
* A~ = clip(r - mean(r), +-adv_clip), centred on the buffer's (fake) mean without std
  normalisation; r = sum over ``rewards`` (imr, lmr) of the discriminators' clipped raw logits
  (or sigmoids, ``reward_form``), scored once per buffer by the EMA discriminators;
* beta as 1/lambda_awr (App. C: lambda_sft = 1, lambda_awr = 1/beta);
* ``noise_alignment`` (match_sigmas): both terms share sigma and the noise tensor;
* ``timestep_sampling``: t ~ U(0, T) as Algorithm 1, line 7 (default); ``logit_normal`` is an
  option (the pre-training distribution), not the paper's;
* ``adversarial``: one discriminator step per generator step (D:G 1:1 per buffer pass) on
  Eq. 7's BCE, the buffer's current fakes against real clips of ``real``; an EMA copy
  (decay ``disc_ema``) scores the next buffer. Off: the pre-trained discriminators stay fixed.

The discriminator's real clips come from the motion-faithful prompts split, not the
finetune split: the tiny world's finetune split is still by construction (it stands in for
the motion SFT loses on real data), so a discriminator that called it "real" would reward
stillness. On a real preset both are the same dataset (DAVIS in the paper).

Ablations A0-A4 (Table 3) are named variants in the preset (`shift-a0` ... `shift-a3`;
`shift` is A4), and `shift-sigmoid` is the logit-vs-sigmoid ablation.

Defaults (Table 5) scaled for the tiny model: lambda_awr 0.01 -> 0.1 (the tiny model moves
in 300 steps, the paper's in thousands; the beta ablation spans 0.01-1), buffer 640 -> 32
(8 prompts x 4 rollouts, paper 8), K 10 -> 5 (20 steps per buffer, the paper's 640 / 320 x 10),
lr 1e-5 -> 5e-4 and LoRA rank 32 -> 8 as `sft`; AdamW (0.9, 0.95), weight decay 0.01,
warmup 20, grad clip 1 as the paper; discriminator lr 1e-5 -> 1e-4 (tiny heads from scratch).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.data.source import clip_batch
from harness.data.video_io import tensor_to_frames
from harness.scorers.backends.tracking import FlowFields
from harness.scorers.motion_rm import (
    MotionDiscriminator,
    clip_shape_problem,
    ema_copy,
    load_discriminator,
    rewards_from_logits,
)
from trainers.base import CLIP_WALK, Draw, SmokeChanges, Trainer, TrainerConfig, pairs_draws
from trainers.claims import Objective, PaperClaim
from trainers.fcrm_data import Samples, policy_rollouts
from trainers.objectives import denoising_loss, sample_sigmas
from trainers.optimizer import AdamWSettings
from trainers.registry import register_trainer

log = logging.getLogger(__name__)


def fake_centred_advantages(rewards: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Alg. 1 line 4: A~ = r - mean(r) over the buffer's generated samples, no std normalisation,
    clipped to [-clip, clip]; also returns which samples were clipped."""
    centred = rewards - rewards.mean()
    return centred.clamp(-clip, clip), centred.abs() > clip


def shift_loss(l_real: torch.Tensor, l_fake: torch.Tensor, advantages: torch.Tensor, lambda_sft: float,
               lambda_awr: float) -> dict[str, torch.Tensor]:
    """Eq. 12 from per-sample denoising losses: {"sft": lambda_sft mean_b ||.||^2 of real clips,
    "awr": lambda_awr mean_b A~_b ||.||^2 of rollouts}; the objective is their sum."""
    weights = advantages.to(l_fake.device, l_fake.dtype)
    return {"sft": lambda_sft * l_real.mean(), "awr": lambda_awr * (weights * l_fake).mean()}


class ShiftError(ValueError):
    """SHIFT cannot go on (a diverged discriminator, non-finite rewards); the message says where."""


class BufferConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompts: int = Field(8, ge=1, description="prompts per buffer (paper: 640 / 8 = 80)")
    rollouts_per_prompt: int = Field(4, ge=1, description="P (paper: 8)")
    passes: int = Field(5, ge=1, description="K, passes over a buffer before it is refilled (paper: 10)")


class RealConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    split: str = "prompts"
    start: int = Field(300_000, ge=0, description="first clip index (kept apart from rollouts and pre-training)")
    count: int = Field(256, ge=2)


ADAMW_BETAS = (0.9, 0.95)  # Table 5: the policy's and the discriminators' AdamW


class ShiftConfig(TrainerConfig):
    rewards: list[Literal["imr", "lmr"]] = Field(default_factory=lambda: ["imr", "lmr"])
    reward_paths: dict[str, str] = Field(default_factory=dict, description="kind -> model dir (default: shipped)")
    reward_form: Literal["logit", "sigmoid"] = "logit"
    reward_clip: tuple[float, float] = (-10.0, 10.0)
    adv_clip: float = Field(10.0, gt=0)
    lambda_awr: float = Field(0.1, ge=0, description="1 / beta")
    lambda_sft: float = Field(1.0, ge=0)
    noise_alignment: bool = True
    adversarial: bool = True
    disc_lr: float = Field(1e-4, gt=0)
    disc_ema: float = Field(0.99, ge=0, lt=1)
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    timestep_sampling: Literal["uniform", "logit_normal"] = Field(
        "uniform", description="t of both terms: uniform (default) as Algorithm 1, line 7 (t ~ U(0, T)); "
        "logit_normal (SD3's logit-normal(0, 1), what the tiny base was pre-trained with) concentrates t in mid "
        "noise, an option the paper does not use")
    anchor_split: str = "finetune"
    split: str = Field("prompts", description="world split the rollout conditions come from")
    condition_pool: int = Field(2048, ge=1)
    buffer: BufferConfig = Field(default_factory=BufferConfig)
    real: RealConfig = Field(default_factory=RealConfig)

    @classmethod
    def smoke_changes(cls, section: dict[str, Any], with_steps: bool) -> SmokeChanges:
        """Also a buffer of 2 x 2 rollouts and 16 real clips for the discriminators."""
        return [*super().smoke_changes(section, with_steps),
                (("buffer",), {"prompts": 2, "rollouts_per_prompt": 2, "passes": 1}), (("batch_size",), 2),
                (("real", "count"), 16)]

    def optimizer_settings(self) -> AdamWSettings:
        return AdamWSettings(betas=ADAMW_BETAS, weight_decay=self.weight_decay)

    def training_draws(self, where: str) -> list[Draw]:
        """The rollout conditions, the discriminators' real clips and the SFT anchor's clip walk."""
        return [*pairs_draws(getattr(self, "pairs", None), where),
                Draw(f"{where} (rollout conditions, condition_pool)", self.split, 0, self.condition_pool),
                Draw(f"{where}.real", self.real.split, self.real.start, self.real.start + self.real.count),
                Draw(f"{where}.anchor_split ({CLIP_WALK})", self.anchor_split, 0, None, walk=self.batch_size)]

    def training_signals(self) -> list[str]:
        return list(self.rewards)

    def preset_problems(self, preset, where: str) -> list[str]:
        problems = [clip_shape_problem(kind, self.reward_paths.get(kind), preset, where) for kind in self.rewards]
        return [p for p in problems if p]

    @model_validator(mode="after")
    def _check(self) -> ShiftConfig:
        if not self.rewards or len(set(self.rewards)) != len(self.rewards):
            raise ValueError(f"rewards must name imr and/or lmr once each, got {self.rewards}")
        if self.reward_clip[0] >= self.reward_clip[1]:
            raise ValueError(f"reward_clip must be (r_min, r_max) with r_min < r_max, got {self.reward_clip}")
        return self


@register_trainer
class ShiftTrainer(Trainer):
    name = "shift"
    report_rank = 20
    config_class = ShiftConfig
    replay_state = ("buffer", "buffer_feats", "orders", "fill_logs", "current")
    description = "SHIFT: SFT anchor + advantage-weighted rollouts, adversarial IMR/LMR rewards"
    training_objective = Objective("loss", "lower", "SFT anchor + advantage-weighted rollout loss")
    claims = (
        PaperClaim("SHIFT", "SFT on appearance-only data loses dynamic degree", "difference", ("sft",),
                   a="sft", b="base", metric="dynamic_degree", positive=False),
        PaperClaim("SHIFT", "SFT lowers the motion score", "difference", ("sft",), a="sft", b="base",
                   metric="motion_score", positive=False),
        PaperClaim("SHIFT", "SHIFT keeps more dynamic degree than SFT", "difference", ("sft", "shift"),
                   a="shift", b="sft", metric="dynamic_degree"),
        PaperClaim("SHIFT", "SHIFT keeps a higher motion score than SFT", "difference", ("sft", "shift"),
                   a="shift", b="sft", metric="motion_score"),
        PaperClaim("SHIFT", "SHIFT trains at about 2.46× SFT's cost per epoch (no more than +20 %)", "time_ratio",
                   ("sft", "shift"), a="shift", b="sft", ratio=2.46),
    )
    config: ShiftConfig

    def __init__(self, adapter, preset, config: ShiftConfig, seed: int, workdir: Path | None = None):
        super().__init__(adapter, preset, config, seed, workdir)
        # The discriminators' files and clip shape were checked with the config (preset_problems).
        self.discs: dict[str, MotionDiscriminator] = {k: load_discriminator(k, config.reward_paths.get(k))
                                                      for k in config.rewards}
        self.scorers = {k: ema_copy(d) for k, d in self.discs.items()} if config.adversarial else self.discs
        self.disc_opts = {k: torch.optim.AdamW(d.net.parameters(), lr=config.disc_lr, betas=ADAMW_BETAS)
                          for k, d in self.discs.items()} if config.adversarial else {}
        self.real = self._real_pool()
        self.buffer: Samples | None = None
        self.buffer_feats: dict[str, torch.Tensor] = {}
        self.orders: torch.Tensor | None = None
        self.fill_logs: dict[str, float] = {}
        self.current: list[int] = []

    # -- data ------------------------------------------------------------------------------------
    def _features(self, frames: list, seeds: list[int]) -> dict[str, torch.Tensor]:
        """Each discriminator's features; one flow pass per video shared by kinds on the same tracker."""
        shared: dict[str, list[FlowFields]] = {}
        out = {}
        for kind, disc in self.discs.items():
            key = disc.shared_key
            if key not in shared:
                shared[key] = disc.fields(frames)
            out[kind] = disc.features(frames, seeds, shared[key])
        return out

    def _real_pool(self) -> dict[str, torch.Tensor]:
        cfg = self.config.real
        batch = clip_batch(self.preset, cfg.split, range(cfg.start, cfg.start + cfg.count))
        frames = [tensor_to_frames(v) for v in batch.videos]
        return self._features(frames, [cfg.start + i for i in range(cfg.count)])

    def _rewards(self, feats: dict[str, torch.Tensor], nets: dict[str, MotionDiscriminator],
                 step: int, what: str) -> tuple[torch.Tensor, dict[str, float]]:
        total, logs = None, {}
        for kind, net in nets.items():
            with torch.no_grad():
                logits = net(feats[kind]).double()
            if not torch.isfinite(logits).all():
                raise ShiftError(f"step {step}: the {kind} reward model gives non-finite logits on {what} (it "
                                 f"diverged); lower methods.<method>.disc_lr")
            r = rewards_from_logits(logits, self.config.reward_form, self.config.reward_clip)
            logs[f"reward/{kind}_{what}"] = float(r.mean())
            total = r if total is None else total + r
        assert total is not None
        return total, logs

    def _fill(self, step: int) -> None:
        """Alg. 1 lines 2-4: on-policy rollouts, their rewards under the (EMA) discriminators,
        fake-centred clipped advantages, and K shuffled passes over them."""
        cfg, buf = self.config, self.config.buffer
        samples, rows = policy_rollouts(self.adapter, self.preset, cfg.split, cfg.condition_pool,
                                        buf.prompts, buf.rollouts_per_prompt, self.generator, self.sampler)
        self.saw(len(samples))
        query_seeds = torch.randint(2**31 - 1, (len(rows),), generator=self.generator).tolist()
        with torch.no_grad():
            frames = [tensor_to_frames(v) for v in self.adapter.decode_latents(samples.x0)]
        self.buffer_feats = self._features(frames, query_seeds)
        rewards, logs = self._rewards(self.buffer_feats, self.scorers, step, "fake")
        real_idx = torch.randint(len(next(iter(self.real.values()))), (len(rows),), generator=self.generator)
        real_r, real_logs = self._rewards({k: v[real_idx] for k, v in self.real.items()}, self.scorers, step, "real")
        adv, clipped = fake_centred_advantages(rewards, cfg.adv_clip)
        samples.rewards, samples.advantages = rewards, adv
        self.buffer = samples
        self.orders = torch.stack([torch.randperm(len(rows), generator=self.generator) for _ in range(buf.passes)])
        self.fill_logs = {**logs, **real_logs, "reward/fake_mean": float(rewards.mean()),
                          "reward/fake_std": float(rewards.std()), "reward/real_mean": float(real_r.mean()),
                          "reward/real_minus_fake": float(real_r.mean() - rewards.mean()),
                          "advantage/abs_mean": float(adv.abs().mean()),
                          "advantage/clipped": float(clipped.double().mean())}

    @property
    def steps_per_pass(self) -> int:
        buf = self.config.buffer
        return math.ceil(buf.prompts * buf.rollouts_per_prompt / self.config.batch_size)

    def _fake_batch(self, step: int) -> tuple[Samples, list[int]]:
        per_buffer = self.steps_per_pass * self.config.buffer.passes
        k = step % per_buffer
        if k == 0 or self.buffer is None:
            self._fill(step)
        assert self.buffer is not None and self.orders is not None
        p, j = divmod(k, self.steps_per_pass)
        order, b = self.orders[p].tolist(), self.config.batch_size
        idx = [order[(j * b + i) % len(order)] for i in range(b)]
        return self.buffer.take(idx), idx

    # -- the objective -------------------------------------------------------------------------
    def loss_terms(self, step: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        cfg, b = self.config, self.config.batch_size
        # Data parallel: every rank draws the global batch (buffer rows, clips, sigmas, noise) and
        # keeps its rows; the discriminators train on the whole batch, identically on every rank.
        rows = self.dist.rows(b)
        fake, self.current = self._fake_batch(step)
        fake = fake.take(list(range(b))[rows])
        start = self.seed * 1_000_000 + step * b  # the clips `sft` sees at this step
        anchor = clip_batch(self.preset, cfg.anchor_split, range(start, start + b)[rows])
        self.saw(b)
        x0 = self.adapter.encode_video(anchor.videos)
        cond = self.adapter.encode_condition(anchor.first_frames, anchor.captions)
        shape = (b, *x0.shape[1:])
        sigma = sample_sigmas(cfg.timestep_sampling, b, self.generator)[rows]
        noise = torch.randn(shape, generator=self.generator)[rows]
        if cfg.noise_alignment:  # match_sigmas: the same t and eps for both terms
            sigma_f, noise_f = sigma, noise
        else:
            sigma_f = sample_sigmas(cfg.timestep_sampling, b, self.generator)[rows]
            noise_f = torch.randn(shape, generator=self.generator)[rows]
        l_real = denoising_loss(self.adapter, x0, cond, sigma, noise)
        l_fake = denoising_loss(self.adapter, fake.x0, fake.condition(self.adapter), sigma_f, noise_f)
        terms = shift_loss(l_real, l_fake, fake.advantages, cfg.lambda_sft, cfg.lambda_awr)
        logs = {"loss/real_mse": float(l_real.detach().mean()), "loss/fake_mse": float(l_fake.detach().mean()),
                **self.fill_logs}
        return terms, logs

    def compute_loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        terms, logs = self.loss_terms(step)
        return sum(terms.values()), logs  # type: ignore[return-value]

    def disc_step(self, step: int) -> dict[str, float]:
        """Eq. 7 on the buffer's current fakes against real clips, then the EMA update."""
        n_real = len(next(iter(self.real.values())))
        real_idx = torch.randint(n_real, (len(self.current),), generator=self.generator)
        logs = {}
        for kind, disc in self.discs.items():
            real, fake = self.real[kind][real_idx], self.buffer_feats[kind][self.current]
            disc.train()
            logits = disc(torch.cat([real, fake]))
            if not torch.isfinite(logits).all():
                raise ShiftError(f"step {step}: the {kind} discriminator diverged (non-finite logits); the "
                                 f"generator was not updated at this step; lower methods.<method>.disc_lr")
            labels = torch.cat([torch.ones(len(real)), torch.zeros(len(fake))])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
            opt = self.disc_opts[kind]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(disc.net.parameters(), 1.0)
            opt.step()
            disc.eval()
            with torch.no_grad():
                torch._foreach_lerp_(list(self.scorers[kind].net.parameters()), list(disc.net.parameters()),
                                     1 - self.config.disc_ema)
            logs[f"disc/{kind}_loss"] = float(loss.detach())
            logs[f"disc/{kind}_accuracy"] = float(((logits > 0).float() == labels).float().mean())
        return logs

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.config
        for group in self.optimizer.param_groups[:1]:  # linear warmup (Table 5: 20 steps)
            group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
        terms, logs = self.loss_terms(step)
        disc_logs = self.disc_step(step) if cfg.adversarial else {}
        norms = self.optimize_terms(terms)  # rank-averaged gradients, so their norms are the global batch's
        ratio = norms["grad_norm/sft"] / norms["grad_norm/awr"] if norms["grad_norm/awr"] > 0 else float("inf")
        local = {"loss": float(sum(t.detach() for t in terms.values())),
                 **{k: logs.pop(k) for k in ("loss/real_mse", "loss/fake_mse")}}  # means over this rank's rows
        return {**self.dist.average_logs(local), **norms, "grad_norm/sft_over_awr": min(ratio, 1e9), **logs,
                **disc_logs}

    # -- resumable state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["shift"] = {
            "disc": {k: d.net.state_dict() for k, d in self.discs.items()},
            "scorer": {k: d.net.state_dict() for k, d in self.scorers.items()} if self.config.adversarial else {},
            "disc_opt": {k: o.state_dict() for k, o in self.disc_opts.items()},
            "buffer": None if self.buffer is None else self.buffer.state(),
            "buffer_feats": dict(self.buffer_feats), "orders": self.orders, "fill_logs": dict(self.fill_logs),
        }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        s = state["shift"]
        for k, d in self.discs.items():
            d.net.load_state_dict(s["disc"][k])
            if self.config.adversarial:
                self.scorers[k].net.load_state_dict(s["scorer"][k])
                self.disc_opts[k].load_state_dict(s["disc_opt"][k])
        self.buffer = None if s["buffer"] is None else Samples.from_state(s["buffer"])
        self.buffer_feats = dict(s["buffer_feats"])
        self.orders = s["orders"]
        self.fill_logs = dict(s["fill_logs"])
