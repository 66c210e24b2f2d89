"""Training probes: metrics measured on the model while it trains (docs/metrics-probes.md).

They read the trainers' objectives (pair errors, the DPO loss), so they live with the trainers;
their specs (name, version, direction: what ``harness list metrics`` shows and results are
stored under) are declared in metrics/probe_specs.py.

The probes here are measured on one held-out probe set, the same for every method: preference
pairs of clips no method trains on (``probes.split`` from ``probes.start``; harness/probing.py
refuses a run whose methods draw from them), named in the identity as ``set=heldout-<split>-<start>``.
They are cross-method yardsticks; the paper's own in-training measurement on each step's training
pairs is a different, separately named value that the preference trainers log themselves
(``own_pairs/*``, trainers/own_pairs.py).

* ``likelihood_displacement`` (PG-DPO Fig. 2, App. A.5.2, on held-out pairs): at fixed
  (t, noise) draws, the ELBO proxy log p(x) ~ -E_{t,eps} ||target - pred(x_t)||^2 of the chosen
  and rejected samples under the policy and the reference. The checkpoint value is the chosen
  samples' change from the reference (the start of training): negative = displaced. Every method.
* ``chosen_logp_step``: does the method's actual coming update raise the held-out chosen samples'
  log-likelihood? g_method is the gradient of the method's own loss for its coming step on its own
  batch (``Trainer.coming_loss``: replayed without consuming its random stream or changing its
  state), g_logp that of the chosen samples' ELBO proxy. Logs -lr * g_logp . g_method and the cosine
  between -g_method and g_logp (scale-free); the checkpoint value is the share of probed steps with
  cosine > 0. One definition for every method, so comparable across all of them.
* ``gamma`` (PG-DPO Eq. 10 / 35): Gamma = -lr * grad log p(x_w) . (grad L_method - grad L_dpo) on the
  held-out pairs with one fixed draw each, L_dpo being DPO at the probes' own beta (``probes.beta``,
  in the identity). Measured only for trainers whose loss is a pairwise preference loss
  (``Trainer.pairwise_preference``: dpo, pgdpo, apo; L_method is their ``pair_loss`` on the same
  pairs, APO's over its own fixed window of timesteps). For other methods (sft, fcrm, shift) Gamma
  has no meaning that does not depend on the method, so it is not measured and nothing is stored;
  the report says why. The checkpoint value is the share of probed steps with Gamma > 0 (the
  paper: 81.7 % and 76.9 %). As in the paper, the step is the first-order SGD proxy -lr * grad, not
  the optimizer's actual (Adam) update.

Probes do not touch the trainer's random generator, its state or its gradients, so a run with
probes trains exactly like one without.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch

from harness.data.preferences import PairSet
from metrics.base import MetricSpec, format_identity
from metrics.probe_specs import PROBE_SPECS
from trainers.preference import pair_errors
from trainers.preference_losses import PairErrors, dpo_loss

PROBES: dict[str, type[TrainingProbe]] = {}


def register_probe(spec: MetricSpec) -> Callable[[type[TrainingProbe]], type[TrainingProbe]]:
    def wrap(cls: type[TrainingProbe]) -> type[TrainingProbe]:
        if spec.kind != "training-probe":
            raise ValueError(f"{spec.name}: probes have kind 'training-probe', not {spec.kind!r}")
        if PROBE_SPECS.get(spec.name) is not spec:
            raise ValueError(f"{spec.name}: declare the probe's spec in metrics/probe_specs.py (PROBE_SPECS), "
                             "where the metric registry lists it")
        cls.spec = spec
        PROBES[spec.name] = cls
        return cls

    return wrap


class TrainingProbe(ABC):
    spec: ClassVar[MetricSpec]

    def __init__(self, pairs: PairSet, draws: int = 4, seed: int = 0, beta: float = 100.0,
                 probe_set: str | None = None):
        self.pairs, self.draws, self.seed, self.beta, self.probe_set = pairs, draws, seed, beta, probe_set

    @staticmethod
    def applies(trainer) -> str | None:
        """Why this probe does not apply to ``trainer`` (None: it does). A probe that does not apply
        is not measured and stores nothing; the report says why."""
        return None

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

    def restore(self, series: dict[str, list[float]]) -> None:
        """Take back what the probe fixed on its first call from the series logged so far (a resumed run)."""
        return None  # most probes fix nothing on their first call

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


def untrained(adapter) -> bool:
    """Whether ``adapter``'s policy is its reference exactly: LoRA adapters whose B matrices are all zero (their
    initialisation) add exactly zero to every layer's output."""
    if not adapter.has_lora:
        return False
    return all(not bool(p.detach().any()) for name, p in adapter.model.named_parameters() if "lora_B" in name)


# The step-0 likelihood-displacement values of a probe set, per (pair set, draws, seed): at step 0 every method's
# policy is its untrained starting model, so a run's methods that start from the same weights (the pair set's
# cache key names them) get the same numbers, measured once per process instead of once per method.
_AT_START: dict[tuple[str, int, int], dict[str, float]] = {}


@register_probe(PROBE_SPECS["likelihood_displacement"])
class LikelihoodDisplacement(TrainingProbe):
    def __init__(self, pairs: PairSet, draws: int = 4, seed: int = 0, beta: float = 100.0,
                 probe_set: str | None = None):
        super().__init__(pairs, draws, seed, beta, probe_set)
        self._ref: tuple[float, float] | None = None

    def _start_key(self, trainer, step: int) -> tuple[str, int, int] | None:
        """The key of the shared step-0 values, when they apply: step 0, a cached pair set (its key names the
        weights it was sampled from, the starting weights of every trainer it was built for) and an untrained
        policy."""
        key = self.pairs.provenance.get("cache_key")
        if step != 0 or self._ref is not None or not key or not untrained(trainer.adapter):
            return None
        return str(key), self.draws, self.seed

    def restore(self, series: dict[str, list[float]]) -> None:
        """The reference's log-likelihoods as the first call measured them: recomputing them after a resume
        can differ in the last float32 bit on some hosts, and a resumed run must give the same numbers."""
        chosen, rejected = series.get("ref_logp_chosen"), series.get("ref_logp_rejected")
        self._ref = (chosen[0], rejected[0]) if chosen and rejected else None

    @torch.no_grad()
    def measure(self, trainer, step: int) -> dict[str, float]:
        start = self._start_key(trainer, step)
        if start in _AT_START:
            values = dict(_AT_START[start])
            self._ref = (values["ref_logp_chosen"], values["ref_logp_rejected"])
            return values
        values = self._measure(trainer)
        if start is not None:
            _AT_START[start] = dict(values)
        return values

    def _measure(self, trainer) -> dict[str, float]:
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


# The step-0 gradients of the probes (the held-out chosen samples' ELBO proxy, and Gamma's DPO step), per pair
# set, probe settings and trainable parameters: at step 0 a policy is its untrained starting model, so these
# gradients depend only on the starting weights (which the pair set's cache key names), the probe's fixed draws
# and the trainable parameters' own values (LoRA A, drawn from the seed; B = 0). Methods of a process that share
# all of them get the same vectors, computed once per process instead of once per method (like _AT_START).
_GRADS_AT_START: dict[tuple, tuple[torch.Tensor, ...]] = {}


def params_digest(params: list[torch.nn.Parameter]) -> str:
    """A digest of the parameters' shapes, dtypes, devices and values, in order."""
    h = hashlib.blake2b(digest_size=16)
    for p in params:
        t = p.detach().contiguous()
        h.update(repr((tuple(t.shape), str(t.dtype), str(t.device))).encode())
        h.update(t.reshape(-1).view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()


def grads_at_start(probe: TrainingProbe, trainer, step: int, what: tuple,
                   compute: Callable[[], tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """``compute()``, shared at step 0 by every trainer whose untrained policy has the same trainable parameters
    (``_GRADS_AT_START``; ``what`` names the probe's own settings). Any other step, a policy that is not
    untrained or a pair set without a cache key is computed afresh. The vectors are read, never changed."""
    pairs_key = getattr(probe.pairs, "provenance", {}).get("cache_key")  # none on a test's toy pairs
    if step != 0 or not pairs_key or not untrained(trainer.adapter):
        return compute()
    key = (str(pairs_key), probe.seed, *what, params_digest(trainer.params))
    if key not in _GRADS_AT_START:
        _GRADS_AT_START[key] = compute()
    return _GRADS_AT_START[key]


def _flat_grad(loss: torch.Tensor, params: list[torch.nn.Parameter], retain_graph: bool = False) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=retain_graph)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads,
                                                                                           strict=True)])


def _chosen_logp_grad(probe: TrainingProbe, trainer, draws: int) -> torch.Tensor:
    """Gradient of the held-out chosen samples' ELBO-proxy log-likelihood (mean over pairs and the
    probe's fixed draws) over the trainer's trainable parameters."""
    x_w, _, cond, sigma, noise = probe.fixed_draws(trainer.adapter, draws)
    x_t = trainer.adapter.add_noise(x_w, noise, sigma)
    target = trainer.adapter.training_target(x_w, noise, sigma).float()
    err = (trainer.adapter.predict(x_t, sigma, cond).float() - target) ** 2
    return _flat_grad(-PairErrors.per_sample(err).mean(), trainer.params)


def not_pairwise_reason(trainer) -> str | None:
    """Why Gamma does not apply to ``trainer`` (None: it does)."""
    if getattr(trainer, "pairwise_preference", False):
        return None
    return "not a pairwise preference loss: Gamma compares a pairwise preference loss with DPO on the same pairs"


@register_probe(PROBE_SPECS["gamma"])
class Gamma(TrainingProbe):
    """Measured only for trainers whose loss is a pairwise preference loss (``pairwise_preference``:
    dpo, pgdpo, apo), whose objective on the held-out pairs (``pair_loss``) is what Eq. 10 compares
    with DPO. Other methods get no value at all (``applies``), not a number in another meaning."""

    @staticmethod
    def applies(trainer) -> str | None:
        return not_pairwise_reason(trainer)

    def identity_options(self) -> dict[str, object]:
        return {"pairs": len(self.pairs), "beta": self.beta, "stat": "positive_share", **self._set()}

    def measure(self, trainer, step: int) -> dict[str, float]:
        reason = self.applies(trainer)
        if reason is not None:
            raise TypeError(f"gamma: {type(trainer).__name__} is {reason}")
        adapter, params = trainer.adapter, trainer.params
        x_w, x_l, cond, sigma, noise = self.fixed_draws(adapter, 1)

        def logp_and_dpo() -> tuple[torch.Tensor, torch.Tensor]:
            e = pair_errors(adapter, x_w, x_l, cond, sigma, noise)  # one forward serves both gradients
            return (_flat_grad(-PairErrors.per_sample(e.err_w).mean(), params, retain_graph=True),
                    _flat_grad(dpo_loss(e, self.beta)[0].mean(), params))

        g_logp, g_dpo = grads_at_start(self, trainer, step, ("gamma", 1, self.beta), logp_and_dpo)
        g_method = _flat_grad(trainer.pair_loss(x_w, x_l, cond, sigma, noise)[0], params)
        lr = trainer.lr
        d_method, d_dpo = -lr * float(g_logp @ g_method), -lr * float(g_logp @ g_dpo)
        return {"gamma": d_method - d_dpo, "dlogp_method": d_method, "dlogp_dpo": d_dpo}

    @staticmethod
    def checkpoint_value(series: dict[str, list[float]]) -> float:
        values = series["gamma"]
        return sum(v > 0 for v in values) / len(values)


@register_probe(PROBE_SPECS["chosen_logp_step"])
class ChosenLogpStep(TrainingProbe):
    """The cross-method probe: the same question for every method, whatever its loss. g_method is the
    gradient of the method's loss for its coming step, on its own batch (``trainer.coming_loss``,
    replayed without consuming its random stream or changing its state); g_logp that of the held-out
    chosen samples' ELBO proxy at the probe's fixed draws. Logs ``dlogp`` = -lr * g_logp . g_method
    (first-order SGD proxy) and ``cos`` = cos(-g_method, g_logp), which is scale-free (normalised by the
    update size, so methods with different loss scales compare)."""

    def identity_options(self) -> dict[str, object]:
        return {"pairs": len(self.pairs), "draws": self.draws, "stat": "raises_share", **self._set()}

    def measure(self, trainer, step: int) -> dict[str, float]:
        (g_logp,) = grads_at_start(self, trainer, step, ("chosen_logp", self.draws),
                                   lambda: (_chosen_logp_grad(self, trainer, self.draws),))
        g_method = _flat_grad(trainer.coming_loss(step)[0], trainer.params)
        dot = float(g_logp @ g_method)
        norm = float(g_logp.norm() * g_method.norm())
        cos = -dot / norm if norm > 0 else 0.0
        return {"dlogp": -trainer.lr * dot, "cos": cos, "update_norm": trainer.lr * float(g_method.norm())}

    @staticmethod
    def checkpoint_value(series: dict[str, list[float]]) -> float:
        values = series["cos"]
        return sum(v > 0 for v in values) / len(values)
