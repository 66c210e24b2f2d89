"""The optimizer step every trainer shares: AdamW over the trainable parameters (LoRA, plus any
of the method's own, e.g. FCRM's log Z), gradients averaged over data-parallel ranks, clipped.

A step is ``zero_grad()``, one or more ``backward(loss, last=...)`` (gradients of the losses are
summed: APO accumulates a window of timesteps, SHIFT its terms one at a time) and ``step()``,
which returns the gradient norm before clipping. Two engines run that same arithmetic:

* ``AdamWStep``: torch AdamW; gradients averaged in one all-reduce after the last backward, as DDP
  computes them. Optimizer state is replicated on every rank.
* ``ZeroStep``: the same AdamW inside a DeepSpeed ZeRO-1/2 engine (``accelerate launch`` with
  ``harness/launch/accelerate-zero2.yaml``): gradients are reduce-scattered and the AdamW moments
  (and, with bf16, the fp32 master weights) partitioned over ranks. The engine wraps only the
  trainable parameters; the frozen model, rollouts and reward models stay outside it, and ZeRO-1/2
  never partitions parameters, so sampling and scoring run on whole weights as on one process.

The gradient norm (logged, and clipped to the method's ``grad_clip``) is over every parameter the
step optimizes, as DeepSpeed computes it: for FCRM that includes its log Z network (before this
module, only the LoRA's norm was clipped; the tiny smoke run moved by 2e-9).

AdamW's settings besides the learning rate (``AdamWSettings``: betas, weight decay) are the method's,
from its config (``TrainerConfig.optimizer_settings``), and the defaults of every parameter group; the
learning rate is each group's own.

``state_dict()`` is consolidated in torch AdamW's format under both engines (plus fp32 master
weights where the parameters are bf16), so a checkpoint resumes under either engine at any world
size.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from harness.distributed import Dist, zero_config


@dataclass(frozen=True)
class AdamWSettings:
    """AdamW's hyperparameters other than the learning rate, for every parameter group of a method's step
    (a group may still set its own): torch's betas, no weight decay, unless the method's config says."""

    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0

    def adamw(self, param_groups: list[dict[str, Any]]) -> torch.optim.AdamW:
        return torch.optim.AdamW(param_groups, betas=self.betas, weight_decay=self.weight_decay)


class OptimizerStep(ABC):
    """AdamW over ``param_groups`` (torch's format); subclasses differ in where gradients go."""

    def __init__(self, param_groups: list[dict[str, Any]], grad_clip: float, dist: Dist, settings: AdamWSettings):
        self.grad_clip, self.dist, self.settings = grad_clip, dist, settings
        self.optimizer = settings.adamw(param_groups)
        self._measured: list[torch.Tensor] | None = None  # the running (averaged) sum of measured gradients

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The live groups: learning-rate writes (a warmup, say) reach the step."""
        return self.optimizer.param_groups

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for g in self.param_groups for p in g["params"]]

    def add_param_group(self, group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(group)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self._measured = None

    @abstractmethod
    def backward(self, loss: torch.Tensor, last: bool = True, measure: bool = False) -> float | None:
        """Add the gradient of ``loss``; ``last``: the step's last backward; ``measure``: return the
        norm of this backward's own gradient (rank-averaged)."""

    @abstractmethod
    def step(self) -> float:
        """Average, clip and apply the summed gradients; the norm before clipping."""

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        masters = state.pop("master", None)  # fp32 weights of a bf16 ZeRO run: the exact values
        self.optimizer.load_state_dict(state)
        if masters:
            with torch.no_grad():
                for i, p in enumerate(self.params):
                    p.copy_(masters[i])

    def reset(self) -> None:
        """Fresh moments and step counts (a new training stage), same groups and settings."""
        groups = [{k: v for k, v in g.items()} for g in self.param_groups]
        self.optimizer = self.settings.adamw(groups)

    def _measure(self, grads: list[torch.Tensor]) -> float:
        """Norm of this backward's gradient alone, averaged over ranks as the step will average it:
        the difference of the running averaged sums (``grads``: this rank's running sum)."""
        now = self.dist.average_tensors(grads)
        before = self._measured or [torch.zeros_like(g) for g in now]
        self._measured = now
        return float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(a - b) for a, b in zip(now, before, strict=True)])))


class AdamWStep(OptimizerStep):
    """Replicated AdamW; gradients averaged over ranks once, after the last backward."""

    def backward(self, loss: torch.Tensor, last: bool = True, measure: bool = False) -> float | None:
        loss.backward()
        if not measure:
            return None
        return self._measure([p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
                              for p in self.params])

    def step(self) -> float:
        self.dist.average_gradients(self.params)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        return float(grad_norm)


class ZeroStep(OptimizerStep):
    """AdamW under a DeepSpeed ZeRO-1/2 engine, built at the first backward (after a trainer has
    added its own parameter groups and a resume has loaded its state)."""

    def __init__(self, param_groups: list[dict[str, Any]], grad_clip: float, dist: Dist, settings: AdamWSettings,
                 ds_config: dict[str, Any]):
        super().__init__(param_groups, grad_clip, dist, settings)
        self.ds_config = ds_config
        self.engine = None
        self._groups: list[list[torch.nn.Parameter]] = []  # the client groups' parameters (ZeRO flattens them)
        self._pending: dict[str, Any] | None = None  # a loaded state, applied when the engine is built
        self._running: list[torch.Tensor] | None = None  # this rank's measured gradients so far in the step
        # With bf16 the parameters are bf16 from the start (not from the engine's first step on), so
        # every forward, the first one and the first after a resume included, sees the same weights;
        # their exact fp32 values are kept as the masters the engine starts from.
        self._lp_dtype = torch.bfloat16 if ds_config.get("bf16", {}).get("enabled") in (True, "true") else None
        self._masters: dict[torch.nn.Parameter, torch.Tensor] = {}
        self._cast(self.params)
        self._linked = False  # see _engine_step

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.engine.optimizer.param_groups if self.engine else self.optimizer.param_groups

    @property
    def params(self) -> list[torch.nn.Parameter]:
        if self.engine is None:
            return [p for g in self.optimizer.param_groups for p in g["params"]]
        return [p for g in self._groups for p in g]

    def add_param_group(self, group: dict[str, Any]) -> None:
        if self.engine is not None:
            raise RuntimeError("parameter groups must be added before the first step under ZeRO")
        super().add_param_group(group)
        self._cast(self.optimizer.param_groups[-1]["params"])

    def _cast(self, params: list[torch.nn.Parameter]) -> None:
        for p in params:
            self._masters[p] = p.detach().float().clone()
            if self._lp_dtype is not None:
                p.data = p.data.to(self._lp_dtype)

    def zero_grad(self) -> None:
        if self.engine is None:
            super().zero_grad()
        self._measured = self._running = None  # the engine zeroes its partitions itself after each step

    def _build(self) -> None:
        import deepspeed

        self._groups = [list(g["params"]) for g in self.optimizer.param_groups]
        params = self.params
        state = self._pending or {"state": {}}
        state["master"] = state.get("master") or {i: self._masters.get(p, p.detach().float()).clone()
                                                  for i, p in enumerate(params)}
        self._masters = {}
        self._pending = None
        self.engine, _, _, _ = deepspeed.initialize(
            model=_Parameters(params), optimizer=self.optimizer, config=self.ds_config, dist_init_required=False)
        self._linked = False
        self._apply(state)

    def _apply(self, state: dict[str, Any]) -> None:
        """Write a consolidated state (torch AdamW's format + fp32 masters) into the engine's partitions."""
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

        steps = {float(s["step"]) for s in state["state"].values() if "step" in s}
        if len(steps) > 1:
            raise ValueError(f"optimizer state has parameters at different step counts {sorted(steps)}; "
                             "ZeRO keeps one count per parameter group")
        if steps:  # moments to restore: the engine creates its partitions of them at its first step
            self._zero_step()
            for i, p in enumerate(self.params):
                moments = state["state"].get(i, {})
                for key in ("exp_avg", "exp_avg_sq"):
                    safe_set_full_optimizer_state(p, moments.get(key, torch.zeros(p.shape, device=p.device)).float(),
                                                  key)
            step = steps.pop()
            for group_state in self.engine.optimizer.optimizer.state.values():
                group_state["step"] = torch.tensor(step)
        for i, p in enumerate(self.params):
            safe_set_full_fp32_param(p, state["master"][i].float())
        for live, saved in zip(self.param_groups, state.get("param_groups", []), strict=False):
            live.update({k: v for k, v in saved.items() if k != "params"})

    def _zero_step(self) -> None:
        """One engine step that moves nothing (zero gradients, learning rate 0), so that the engine
        allocates its optimizer-state partitions; their values are overwritten next."""
        lrs = [g["lr"] for g in self.param_groups]
        for g in self.param_groups:
            g["lr"] = 0.0
        self.engine.set_gradient_accumulation_boundary(True)
        self.engine.backward(sum((p * 0).sum() for p in self.params), scale_wrt_gas=False)
        self._engine_step()
        for g, lr in zip(self.param_groups, lrs, strict=True):
            g["lr"] = lr

    def backward(self, loss: torch.Tensor, last: bool = True, measure: bool = False) -> float | None:
        if self.engine is None:
            self._build()
        params = self.params
        captured: dict[int, torch.Tensor] = {}
        hooks = [p.register_hook(lambda g, i=i: captured.__setitem__(i, g.detach().float().clone()))
                 for i, p in enumerate(params)] if measure else []
        # Gradients of several backwards sum into the partitions until the boundary (the last one).
        self.engine.set_gradient_accumulation_boundary(last)
        try:
            self.engine.backward(loss, scale_wrt_gas=False)
        finally:
            for h in hooks:
                h.remove()
        if not measure:
            return None
        # ZeRO frees whole gradients once reduced: the measured gradient is caught on its way (a hook).
        running = self._running or [torch.zeros(p.shape, device=p.device) for p in params]
        self._running = [r + captured[i] if i in captured else r for i, r in enumerate(running)]
        return self._measure(self._running)

    def step(self) -> float:
        self._engine_step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else math.nan

    def _engine_step(self) -> None:
        self.engine.step()
        if not self._linked:
            # DeepSpeed 0.19 links each parameter to its optimizer-state fragments right after the
            # first group's first step, before later groups have state (their fragments stay empty and
            # the consolidated state would miss them); link again once every group has stepped.
            zero = self.engine.optimizer
            zero._hp_optimizer_states_linked = False
            zero._lazy_init_hp_params_optimizer_state()
            self._linked = True

    def state_dict(self) -> dict[str, Any]:
        if self.engine is None:
            return copy.deepcopy(self._pending) if self._pending else super().state_dict()
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        params = self.params
        steps = [s["step"] for s in self.engine.optimizer.optimizer.state.values() if "step" in s]
        step = float(steps[0]) if steps else 0.0
        state = {i: {"step": torch.tensor(step),
                     "exp_avg": safe_get_full_optimizer_state(p, "exp_avg").cpu(),
                     "exp_avg_sq": safe_get_full_optimizer_state(p, "exp_avg_sq").cpu()}
                 for i, p in enumerate(params)} if step else {}
        groups, start = [], 0
        for live, members in zip(self.param_groups, self._groups, strict=True):
            groups.append({**{k: v for k, v in live.items() if k != "params"},
                           "params": list(range(start, start + len(members)))})
            start += len(members)
        out: dict[str, Any] = {"state": state, "param_groups": groups}
        if any(p.dtype != torch.float32 for p in params):  # bf16 weights: keep the exact fp32 masters
            out["master"] = {i: safe_get_full_fp32_param(p).cpu() for i, p in enumerate(params)}
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Takes a consolidated state; the trainer has already loaded the LoRA into the parameters,
        which are the fp32 masters unless the state carries exact ones."""
        state = copy.deepcopy(dict(state))
        masters = state.get("master") or {}
        state["master"] = {i: masters[i] if i in masters else p.detach().float().clone()
                           for i, p in enumerate(self.params)}
        with torch.no_grad():  # the model evaluates the loaded weights before any step
            for i, p in enumerate(self.params):
                p.copy_(state["master"][i])
        if self.engine is None:
            self._pending = state
        else:
            self._apply(state)

    def reset(self) -> None:
        settings = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        groups = self._groups if self.engine is not None else [list(g["params"]) for g in self.optimizer.param_groups]
        if self.engine is not None:
            self.engine.destroy()  # drops its gradient hooks from the parameters
            self.engine = None
        self._masters = {}  # the new engine starts from the parameters as they are
        self.optimizer = self.settings.adamw([{**s, "params": g} for s, g in zip(settings, groups, strict=True)])
        self._pending = None


class _Parameters(torch.nn.Module):
    """The engine's module: the trainable parameters themselves (shared with the model), so the
    engine's gradient hooks and partitions cover exactly what AdamW updates."""

    def __init__(self, params: list[torch.nn.Parameter]):
        super().__init__()
        self.params = torch.nn.ParameterList(params)


def make_optimizer(param_groups: list[dict[str, Any]], grad_clip: float, dist: Dist,
                   settings: AdamWSettings = AdamWSettings(), ds_config: dict[str, Any] | None = None
                   ) -> OptimizerStep:
    """The step of a method: replicated AdamW, or AdamW under ZeRO when the launch gives a DeepSpeed config."""
    if ds_config is None:
        return AdamWStep(param_groups, grad_clip, dist, settings)
    return ZeroStep(param_groups, grad_clip, dist, settings, zero_config(ds_config, grad_clip, dist.world_size))
