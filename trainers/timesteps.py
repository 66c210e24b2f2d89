"""Trajectory-aware training timesteps (Diffusion-APO, Sec. 3.2), a primitive any trainer can use.

1. Random shift (RS): draw s from a set S (default {3, 4, 5, 6}); the anchors are the
   inference schedule's sigmas under shift s (Eq. 5, sigma~ = s*sigma / (1 + (s-1)*sigma),
   computed by diffusers' FlowMatchEulerDiscreteScheduler, the sampler's own schedule),
   mapped to timesteps t = round(sigma~ * T).
2. Random offset (RO): t' ~ N(t, offset^2), snapped to the nearest valid inference step
   and clipped to [0, T].

Readings the paper leaves open, made explicit here:
* "N(0, 5)": ``offset_scale`` is read as the standard deviation by default
  (``offset_is_variance=True`` reads it as the variance, std = sqrt(5)).
* "the nearest valid inference step": ``snap="union"`` (default) snaps to the union of
  the inference steps of every shift in S, the steps an inference run could visit;
  ``snap="own"`` snaps to the drawn shift's own schedule (with T = 1000 and a 5-unit
  offset this almost never moves t off its anchor); ``snap="integer"`` only rounds.
* Without RS (``random_shift=False``) the anchors are the sampler's own schedule
  (its ``shift``); without RO (``random_offset=False``) t' = t.

The hybrid high/low sliding window (``window``) draws N_H timesteps with t >= 0.8 T and
N_L below it, each from the sampler above restricted to its regime. The paper aggregates
N_H = 4 high and N_L = 1 low timesteps "per accumulation step" (Sec. 3.2) and sets
"window 5, stride 4" (Sec. 4, implementation details) without defining the overlap. Read
here: consecutive windows share window - stride timesteps, and those are always high-noise
ones (the most recently drawn, so a carried timestep is a plain draw of the high regime, not
the smallest of a sorted set); the N_L low timesteps are drawn afresh in every window, so
the low timestep of every window follows the sampler's low-regime distribution. A stride
below N_L cannot do that and is refused. ``stride=None`` draws every window afresh (no
overlap, an option; the default is the paper's stride 4).
"""

from __future__ import annotations

from functools import cached_property

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.sampling import SamplerConfig, sigma_schedule


class TimestepSamplerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shifts: list[float] = Field(default_factory=lambda: [3.0, 4.0, 5.0, 6.0])
    random_shift: bool = True
    random_offset: bool = True
    offset_scale: float = Field(5.0, ge=0, description="the paper's N(0, 5), in timestep units")
    offset_is_variance: bool = False
    snap: str = Field("union", pattern="^(union|own|integer)$")
    high_fraction: float = Field(0.8, gt=0, lt=1, description="the high-noise regime is t >= this * T")
    n_high: int = Field(4, ge=0, description="N_H timesteps from the high-noise regime per window")
    n_low: int = Field(1, ge=0, description="N_L timesteps from the rest per window")
    stride: int | None = Field(4, ge=1, description="new timesteps per window (paper: 4 of 5); the rest are the "
                                                       "previous window's most recent high-noise draws, the low ones "
                                                       "are always new (None: no overlap)")

    @model_validator(mode="after")
    def _stride_keeps_low_fresh(self) -> TimestepSamplerConfig:
        if self.stride is not None and self.stride < self.n_low:
            raise ValueError(f"stride {self.stride} < n_low {self.n_low}: every window draws its N_L low-noise "
                             "timesteps afresh (Diffusion-APO Sec. 3.2), so a window needs at least n_low new draws")
        return self


class TrajectoryTimesteps:
    """Draws training timesteps (integers in [0, T]) anchored on the inference schedule."""

    def __init__(self, cfg: TimestepSamplerConfig, sampler: SamplerConfig, T: int = 1000):
        if sampler.timesteps is not None:
            raise ValueError("trajectory-aware timesteps need a shifted schedule (num_steps, shift), "
                             "not an explicit few-step timestep list")
        self.cfg, self.sampler, self.T = cfg, sampler, T

    def anchors(self, shift: float) -> torch.Tensor:
        """Inference timesteps of the sampler's schedule under ``shift``: (num_steps,) int64, descending."""
        sig = sigma_schedule(self.sampler.model_copy(update={"shift": shift}), self.T)[:-1]
        return torch.round(sig * self.T).long()

    @cached_property
    def _shifts(self) -> list[float]:
        return list(self.cfg.shifts) if self.cfg.random_shift else [self.sampler.shift]

    @cached_property
    def valid_steps(self) -> torch.Tensor:
        """Every inference step some shift in use can visit (sorted, unique)."""
        return torch.unique(torch.cat([self.anchors(s) for s in self._shifts]))

    def _offset_std(self) -> float:
        c = self.cfg
        return c.offset_scale ** 0.5 if c.offset_is_variance else c.offset_scale

    def _snap(self, t: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        if self.cfg.snap == "integer":
            return torch.round(t).long()
        grid = (self.valid_steps if self.cfg.snap == "union" else own).to(t.dtype)
        return grid[(t[:, None] - grid[None, :]).abs().argmin(dim=1)].long()

    def sample(self, n: int, generator: torch.Generator, regime: str = "any") -> torch.Tensor:
        """``n`` timesteps; ``regime`` 'high' (t >= high_fraction*T), 'low' (below) or 'any'."""
        out = torch.empty(n, dtype=torch.long)
        cut = self.cfg.high_fraction * self.T
        for i in range(n):
            shift = self._shifts[int(torch.randint(len(self._shifts), (1,), generator=generator))]
            own = self.anchors(shift)
            pool = own if regime == "any" else own[own >= cut] if regime == "high" else own[own < cut]
            if len(pool) == 0:
                raise ValueError(f"the schedule under shift {shift} has no inference step in the {regime!r} "
                                 f"regime (steps: {own.tolist()})")
            t = pool[int(torch.randint(len(pool), (1,), generator=generator))].double()[None]
            if self.cfg.random_offset:
                t = t + self._offset_std() * torch.randn(1, generator=generator, dtype=torch.float64)
                t = self._snap(t, own)
                # an offset must not carry a draw across the regime boundary it was drawn for
                if regime == "high" and t.item() < cut or regime == "low" and t.item() >= cut:
                    t = pool[(pool - t).abs().argmin()][None]
            out[i] = int(t.clamp(0, self.T).item())
        return out

    def window(self, generator: torch.Generator, previous: torch.Tensor | None = None) -> torch.Tensor:
        """One sliding-window set of N_H high-noise then N_L low-noise timesteps.

        The high block is in draw order. With a ``stride`` smaller than the window, the
        last ``window - stride`` high timesteps of ``previous`` (its most recent high
        draws) carry over and ``stride`` new ones are drawn: the missing high ones and
        all N_L low ones (the paper: window 5, stride 4, N_L = 1 low per window).
        """
        c = self.cfg
        size = c.n_high + c.n_low
        cut = c.high_fraction * self.T
        keep = 0 if previous is None or c.stride is None else max(0, size - c.stride)
        kept = previous[previous >= cut][-keep:] if keep else torch.empty(0, dtype=torch.long)
        if len(kept) < keep:  # a previous window without enough high timesteps: start afresh
            kept = torch.empty(0, dtype=torch.long)
        high = self.sample(c.n_high - len(kept), generator, "high")
        low = self.sample(c.n_low, generator, "low")
        return torch.cat([kept.long(), high, low])
