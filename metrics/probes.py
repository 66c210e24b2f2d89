"""Training probes: metrics measured on the model while it trains, usable by every trainer.

Both are measured on one held-out probe set, the same for every method: preference pairs of
clips no method trains on (``probes.split`` from ``probes.start``; harness/probing.py refuses a
run whose methods draw from them), named in the identity as ``set=heldout-<split>-<start>``.
The paper measures them in training, on DPO's own training pairs; here they are a
cross-method yardstick on held-out pairs (docs/metrics-probes.md).

* ``likelihood_displacement`` (PG-DPO Fig. 2, App. A.5.2): on a fixed probe set of
  preference pairs and fixed (t, noise) draws, the ELBO proxy
  log p(x) ~ -E_{t,eps} ||target - pred(x_t)||^2 of the chosen and rejected samples under
  the policy and the reference. The checkpoint value is the chosen sample's change
  from the reference (the start of training): negative = displaced.
* ``gamma`` (PG-DPO Eq. 10 / 35): Gamma = -lr * grad log p(x_w) . (grad L_method - grad L_dpo)
  over the trainable parameters, on the probe pairs with one fixed draw each. L_dpo is DPO at
  the probes' own beta (``probes.beta``, in the identity), never the method's: one definition
  for every method (a method's ``beta`` means different things: FCRM's is a reward temperature).
  For a method whose loss is not a pairwise preference loss, the sign of Gamma says whether its
  actual update raises the held-out chosen samples' likelihood more than a DPO update at
  ``probes.beta`` on the held-out pairs would. L_method is
  the trainer's own objective on the same pairs when it has one (``pair_loss``: dpo,
  pgdpo at the same draws; apo over its own fixed window of timesteps; fcrm and shift with
  the pair read as a group of two with advantages +1 and -1), else its loss for
  the coming step, on its own batch (SFT: then Gamma compares updates computed on different
  data and mostly says how much a DPO step on the probe pairs themselves would raise
  their likelihood). The checkpoint value is the share of
  probed steps with Gamma > 0 (the paper: 81.7 % and 76.9 %). As in the paper, the step is
  the first-order SGD proxy -lr * grad, not the optimiser's actual (Adam) update.

Probes do not touch the trainer's random generator or its gradients, so a run with
probes trains exactly like one without.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch

from harness.data.preferences import PairSet
from metrics.base import MetricSpec, format_identity
from trainers.preference import pair_errors
from trainers.preference_losses import PairErrors, dpo_loss

PROBES: dict[str, type[TrainingProbe]] = {}


def register_probe(spec: MetricSpec) -> Callable[[type[TrainingProbe]], type[TrainingProbe]]:
    def wrap(cls: type[TrainingProbe]) -> type[TrainingProbe]:
        if spec.kind != "training-probe":
            raise ValueError(f"{spec.name}: probes have kind 'training-probe', not {spec.kind!r}")
        cls.spec = spec
        PROBES[spec.name] = cls
        return cls

    return wrap


class TrainingProbe(ABC):
    spec: ClassVar[MetricSpec]

    def __init__(self, pairs: PairSet, draws: int = 4, seed: int = 0, beta: float = 100.0,
                 probe_set: str | None = None):
        self.pairs, self.draws, self.seed, self.beta, self.probe_set = pairs, draws, seed, beta, probe_set

    def identity_options(self) -> dict[str, object]:
        return {"pairs": len(self.pairs), "draws": self.draws, **self._set()}

    def _set(self) -> dict[str, object]:
        """The probe set in the identity (``heldout-<split>-<start>``), when the caller named it."""
        return {} if self.probe_set is None else {"set": self.probe_set}

    @property
    def identity(self) -> str:
        return format_identity(self.spec.name, self.identity_options())

    def fixed_draws(self, adapter, draws: int):
        """Pairs repeated ``draws`` times with fixed (sigma, noise): same on every call."""
        g = torch.Generator().manual_seed(self.seed)
        idx = [i for _ in range(draws) for i in range(len(self.pairs))]
        x_w, x_l, cond = self.pairs.tensors(adapter, idx)
        sigma = torch.rand(len(idx), generator=g) * 0.9 + 0.05  # away from the degenerate ends
        noise = torch.randn(x_w.shape, generator=g)
        return x_w, x_l, cond, sigma, noise

    @abstractmethod
    def measure(self, trainer, step: int) -> dict[str, float]:
        """Scalars to log at ``step`` (keys without the probe's prefix)."""

    @staticmethod
    @abstractmethod
    def checkpoint_value(series: dict[str, list[float]]) -> float:
        """The number stored for a checkpoint from this probe's series so far."""


def _logp(err: torch.Tensor, draws: int) -> torch.Tensor:
    """ELBO proxy per pair: minus the error averaged over elements and draws."""
    return -PairErrors.per_sample(err).reshape(draws, -1).mean(dim=0)


@register_probe(MetricSpec(
    name="likelihood_displacement", version="1", higher_is_better=True, kind="training-probe",
    aggregation="series", vbench_range=None, inputs=(), weights=(),
    description="chosen samples' ELBO-proxy log-likelihood minus the reference's, on fixed probe pairs "
                "and draws (negative = likelihood displacement)",
))
class LikelihoodDisplacement(TrainingProbe):
    def __init__(self, pairs: PairSet, draws: int = 4, seed: int = 0, beta: float = 100.0,
                 probe_set: str | None = None):
        super().__init__(pairs, draws, seed, beta, probe_set)
        self._ref: tuple[float, float] | None = None

    @torch.no_grad()
    def measure(self, trainer, step: int) -> dict[str, float]:
        adapter = trainer.adapter
        x_w, x_l, cond, sigma, noise = self.fixed_draws(adapter, self.draws)
        e = pair_errors(adapter, x_w, x_l, cond, sigma, noise, with_reference=self._ref is None)
        if self._ref is None:  # the reference is frozen: its log-likelihoods never change
            self._ref = (float(_logp(e.ref_err_w, self.draws).mean()), float(_logp(e.ref_err_l, self.draws).mean()))
        lw, ll = float(_logp(e.err_w, self.draws).mean()), float(_logp(e.err_l, self.draws).mean())
        rw, rl = self._ref
        return {"logp_chosen": lw, "logp_rejected": ll, "ref_logp_chosen": rw, "ref_logp_rejected": rl,
                "chosen_displacement": lw - rw, "rejected_displacement": ll - rl,
                "margin": (lw - rw) - (ll - rl)}

    @staticmethod
    def checkpoint_value(series: dict[str, list[float]]) -> float:
        return series["chosen_displacement"][-1]


def _flat_grad(loss: torch.Tensor, params: list[torch.nn.Parameter], retain_graph: bool = False) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=retain_graph)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads,
                                                                                           strict=True)])


@register_probe(MetricSpec(
    name="gamma", version="1", higher_is_better=True, kind="training-probe", aggregation="series",
    vbench_range=None, inputs=(), weights=(),
    description="PG-DPO's Gamma: the method's first-order gain in the chosen log-likelihood over a DPO step; "
                "per checkpoint, the share of probed steps with Gamma > 0",
))
class Gamma(TrainingProbe):
    def identity_options(self) -> dict[str, object]:
        return {"pairs": len(self.pairs), "beta": self.beta, "stat": "positive_share", **self._set()}

    def measure(self, trainer, step: int) -> dict[str, float]:
        adapter, params = trainer.adapter, trainer.params
        x_w, x_l, cond, sigma, noise = self.fixed_draws(adapter, 1)
        e = pair_errors(adapter, x_w, x_l, cond, sigma, noise)  # one forward serves both gradients
        g_logp = _flat_grad(-PairErrors.per_sample(e.err_w).mean(), params, retain_graph=True)
        g_dpo = _flat_grad(dpo_loss(e, self.beta)[0].mean(), params)
        if hasattr(trainer, "pair_loss"):  # the method's objective on the same pairs
            g_method = _flat_grad(trainer.pair_loss(x_w, x_l, cond, sigma, noise)[0], params)
        else:  # the trainer's own next step (another batch), replayed without consuming its random stream
            state = trainer.generator.get_state()
            g_method = _flat_grad(trainer.compute_loss(step)[0], params)
            trainer.generator.set_state(state)
        lr = trainer.lr
        d_method, d_dpo = -lr * float(g_logp @ g_method), -lr * float(g_logp @ g_dpo)
        return {"gamma": d_method - d_dpo, "dlogp_method": d_method, "dlogp_dpo": d_dpo}

    @staticmethod
    def checkpoint_value(series: dict[str, list[float]]) -> float:
        values = series["gamma"]
        return sum(v > 0 for v in values) / len(values)
