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
N_L below it, each from the sampler above restricted to its regime. The paper's "window
5, stride 4" is read as: consecutive windows share window - stride timesteps (the last
ones of the previous window), and stride new ones are drawn to keep the 4 + 1 split.
"""

from __future__ import annotations

from functools import cached_property

import torch
from pydantic import BaseModel, ConfigDict, Field

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
    stride: int | None = Field(None, ge=1, description="new timesteps per window; the rest carry over from the "
                                                       "previous window (None: the window size, no overlap)")


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
        """One sliding-window set of N_H high-noise and N_L low-noise timesteps (high first).

        With a ``stride`` smaller than the window, the last ``window - stride`` timesteps
        of ``previous`` carry over and ``stride`` new ones are drawn so that the window
        keeps its N_H / N_L composition (the paper: window 5, stride 4).
        """
        c = self.cfg
        size = c.n_high + c.n_low
        keep = 0 if previous is None or c.stride is None else max(0, size - c.stride)
        kept = previous[len(previous) - keep:] if keep else previous[:0] if previous is not None else None
        cut = c.high_fraction * self.T
        n_high = c.n_high - (int((kept >= cut).sum()) if kept is not None else 0)
        n_low = c.n_low - (int((kept < cut).sum()) if kept is not None else 0)
        if n_high < 0 or n_low < 0:  # the carried-over part cannot keep the composition: start afresh
            kept, n_high, n_low = None, c.n_high, c.n_low
        parts = [self.sample(n_high, generator, "high"), self.sample(n_low, generator, "low")]
        if kept is not None and len(kept):
            parts.append(kept)
        w = torch.cat(parts)
        return torch.cat([w[w >= cut], w[w < cut]])
