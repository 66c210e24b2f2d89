"""Flow-matching samplers: Euler ODE, flow SDE, few-step schedules, CFG, spatiotemporal skip guidance.

The sigma schedule comes from diffusers' FlowMatchEulerDiscreteScheduler (shift
as in SD3/Wan), or from an explicit timestep list for few-step generators (e.g.
FCRM's [1000, 757, 522]). Integration runs on sigma from 1 to 0:

* ODE (Euler):  x <- x + (sigma' - sigma) v
* SDE (the Flow-GRPO discretisation of the reverse SDE with the same marginals),
  with noise level ``eta``: std = eta * sqrt(sigma / (1 - sigma)) and
      mean = x + [v + std^2 / (2 sigma) (x + (1 - sigma) v)] (sigma' - sigma)
      x <- mean + std * sqrt(sigma - sigma') * z
  eta = 0 reduces to the ODE step.

Every random draw comes from a per-video generator seeded by that video's seed,
so a video depends only on (model, condition, seed, settings), never on which
batch it was sampled in. ``SamplerConfig`` is recorded with every result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.models.base import Conditioning, ModelAdapter

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class SamplerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["ode", "sde"] = "ode"
    num_steps: int = Field(16, ge=1)
    shift: float = Field(1.0, gt=0, description="sigma shift (SD3/Wan); 1 = none")
    timesteps: list[float] | None = Field(
        None, description="explicit few-step schedule in [0, 1000], descending; overrides num_steps/shift"
    )
    guidance_scale: float = Field(1.0, ge=0.0, description="classifier-free guidance on the caption; 1 = off")
    stg_scale: float = Field(0.0, ge=0.0, description="spatiotemporal skip guidance strength; 0 = off")
    stg_blocks: list[int] = Field(default_factory=list, description="transformer blocks the STG weak model skips")
    eta: float = Field(0.7, ge=0.0, description="SDE noise level (kind='sde' only)")
    sigma_max_sde: float = Field(0.98, gt=0, lt=1, description="sigma cap inside the SDE std (avoids 1/0)")

    @model_validator(mode="after")
    def _check_stg(self) -> SamplerConfig:
        if self.stg_scale > 0 and not self.stg_blocks:
            raise ValueError("stg_scale > 0 needs stg_blocks (the transformer blocks to skip)")
        return self

    @model_validator(mode="after")
    def _check_timesteps(self) -> SamplerConfig:
        if self.timesteps is not None:
            ts = self.timesteps
            if not ts or any(not 0 < t <= 1000 for t in ts) or any(a <= b for a, b in zip(ts, ts[1:], strict=False)):
                raise ValueError(f"timesteps must be strictly descending values in (0, 1000], got {ts}")
        return self


def sigma_schedule(cfg: SamplerConfig, num_train_timesteps: int = 1000) -> torch.Tensor:
    """Descending sigmas ending with 0: (num_steps + 1,) float64."""
    if cfg.timesteps is not None:
        sig = torch.tensor(cfg.timesteps, dtype=torch.float64) / num_train_timesteps
        return torch.cat([sig, sig.new_zeros(1)])
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=cfg.shift)
    # Wan/SD3 style: linear sigmas from 1 to 1/num_steps, shifted, then a final 0.
    base = torch.linspace(1.0, 1.0 / cfg.num_steps, cfg.num_steps, dtype=torch.float64)
    scheduler.set_timesteps(sigmas=base.tolist())
    return scheduler.sigmas.to(torch.float64)


def initial_noise(shape: Sequence[int], seeds: Sequence[int]) -> torch.Tensor:
    """One generator per video: noise for seed s is the same in any batch."""
    if len(seeds) != shape[0]:
        raise ValueError(f"{len(seeds)} seeds for a batch of {shape[0]}")
    return torch.stack([torch.randn(tuple(shape[1:]), generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def sde_mean(x: torch.Tensor, v: torch.Tensor, s: float | torch.Tensor, dt: float | torch.Tensor,
             std: float | torch.Tensor) -> torch.Tensor:
    """The mean of one flow-SDE step from sigma ``s`` by ``dt`` (< 0) with noise level ``std``
    (= eta sqrt(s / (1 - s))): x + [v + std^2 / (2 s) (x + (1 - s) v)] dt. Tensors broadcast
    (Flow-GRPO's training re-evaluates the step for many sigmas at once)."""
    return x + (v + std**2 / (2 * s) * (x + (1 - s) * v)) * dt


def integrate(
    velocity: VelocityFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    cfg: SamplerConfig,
    seeds: Sequence[int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Integrate from sigmas[0] to sigmas[-1]; ``velocity(x, sigma_batch)``."""
    generators = None
    if cfg.kind == "sde" and cfg.eta > 0:
        if seeds is None:
            raise ValueError("the SDE sampler needs per-video seeds")
        # Offset the stream so SDE noise is independent of the initial noise.
        generators = [torch.Generator().manual_seed(int(s) + 0x5DE) for s in seeds]
    b = x.shape[0]
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        v = velocity(x, torch.full((b,), s, dtype=x.dtype))
        dt = s_next - s
        if generators is None:
            x = x + dt * v
        else:
            s_c = min(s, cfg.sigma_max_sde)
            std = cfg.eta * (s_c / (1 - s_c)) ** 0.5
            mean = sde_mean(x, v, s, dt, std)
            if s_next > 0:
                z = torch.stack([torch.randn(x.shape[1:], generator=g) for g in generators]).to(x.dtype)
                x = mean + std * (-dt) ** 0.5 * z
            else:  # the last step lands on the data: no fresh noise
                x = mean
        if progress is not None:
            progress(1)
    return x


def guided_velocity(adapter: ModelAdapter, cond: Conditioning, guidance_scale: float,
                    stg_scale: float = 0.0, stg_blocks: Sequence[int] = ()) -> VelocityFn:
    """The adapter's velocity with caption CFG (one doubled batch) and spatiotemporal skip
    guidance (Diffusion-APO Eq. 3): v = v_u + w (v_c - v_u) + lambda (v_c - v_skip), where
    v_skip is the prediction with ``stg_blocks`` skipped. Each guidance costs a forward pass."""
    if guidance_scale == 1.0 and stg_scale == 0.0:
        return lambda x, s: adapter.predict(x, s, cond)
    both = Conditioning.cat([cond, cond.null_text()])

    def velocity(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        if guidance_scale == 1.0:
            v_cond = v = adapter.predict(x, s, cond)
        else:
            v_cond, v_uncond = adapter.predict(torch.cat([x, x]), torch.cat([s, s]), both).chunk(2)
            v = v_uncond + guidance_scale * (v_cond - v_uncond)
        if stg_scale:
            with adapter.skip_blocks(stg_blocks):
                v = v + stg_scale * (v_cond - adapter.predict(x, s, cond))
        return v

    return velocity


@torch.no_grad()
def sample_latents(
    adapter: ModelAdapter,
    cond: Conditioning,
    seeds: Sequence[int],
    cfg: SamplerConfig,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Clean samples x0 in the model's space (no decoding), for conditions and seeds."""
    x = initial_noise(adapter.latent_shape(len(seeds)), seeds)
    sigmas = sigma_schedule(cfg, adapter.num_train_timesteps)
    velocity = guided_velocity(adapter, cond, cfg.guidance_scale, cfg.stg_scale, cfg.stg_blocks)
    return integrate(velocity, x, sigmas, cfg, seeds, progress)


@torch.no_grad()
def sample(
    adapter: ModelAdapter,
    cond: Conditioning,
    seeds: Sequence[int],
    cfg: SamplerConfig,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Videos in pixel space (B, C, T, H, W) in [-1, 1] for conditions and seeds."""
    return adapter.decode_latents(sample_latents(adapter, cond, seeds, cfg, progress)).clamp(-1, 1)


@torch.no_grad()
def sample_sharded(
    adapter: ModelAdapter,
    cond_for: Callable[[list[int]], Conditioning],
    seeds: Sequence[int],
    cfg: SamplerConfig,
    decode: bool = False,
    batch_size: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Samples of rows ``0..len(seeds)-1`` (latents, or videos in [-1, 1] with ``decode``), split
    over the ranks of a data-parallel run and gathered on every rank.

    ``cond_for(rows)`` encodes the conditions of some rows. Rank r samples rows r, r + W, ... in
    batches of ``batch_size`` (default: all of its rows at once). A video depends only on its own
    condition and seed, so the gathered tensor is the one-process tensor up to float32 rounding: a
    row's kernels depend a little on the batch size (tests/test_sharded_rollouts.py). Every rank
    gets the same gathered tensor, and on-policy rollouts cost each rank 1/W of the sampling.
    """
    from harness.distributed import current

    if not seeds:
        raise ValueError("sample_sharded: no rows to sample (empty seed list)")
    d = current()
    mine = list(d.strided(len(seeds)))
    step = batch_size or max(len(mine), 1)
    parts = []
    for lo in range(0, len(mine), step):
        rows = mine[lo:lo + step]
        x = sample_latents(adapter, cond_for(rows), [seeds[i] for i in rows], cfg)
        parts.append(adapter.decode_latents(x).clamp(-1, 1) if decode else x)
        if on_batch is not None:
            on_batch(len(rows))
    local = torch.cat(parts) if parts else None  # None on a rank with no row (fewer rows than ranks)
    if not d.enabled:
        return local
    device = next(adapter.model.parameters()).device  # where every rank's caller expects the samples
    pieces = [(rows, part) for rows, part in d.gather((mine, None if local is None else local.cpu()))
              if part is not None]
    out = torch.empty((len(seeds), *pieces[0][1].shape[1:]), dtype=pieces[0][1].dtype)
    for rows, part in pieces:
        out[rows] = part
    return out.to(device)
