"""PG-DPO's in-training measurement on each step's own training pairs (Eq. 10, Fig. 2, App. A.5.2),
logged by the pairwise preference trainers (dpo, pgdpo, apo) as ``own_pairs/<key>`` training values.

This is the paper's measurement, not the held-out cross-method probes of trainers/probes.py: it uses
the pairs, the (t, noise) draws and the beta of the step itself, and DPO at the METHOD's own beta:

* ``own_pairs/gamma`` = -lr * g_logp_w . (g_method - g_dpo): Gamma of the step (Eq. 10), g_logp_w the
  gradient of the step's chosen samples' ELBO-proxy log-likelihood, g_method that of the loss the
  step trains on, g_dpo that of DPO at the method's beta (and T) on the same pairs;
* ``own_pairs/dlogp_chosen``, ``own_pairs/dlogp_rejected``: -lr * g_logp . g_method, the first-order
  change of the step's own chosen / rejected log-likelihood under the method's update (Fig. 2 tracks
  their probabilities), and ``own_pairs/dlogp_chosen_dpo`` under DPO's;
* ``own_pairs/logp_chosen``, ``own_pairs/logp_rejected``: the policy's ELBO proxy minus the reference's
  on those pairs and draws before the step (Fig. 2's levels).

The gradients are taken with ``torch.autograd.grad`` (nothing is left in ``.grad``) and the draws are
the step's own, replayed or shared, never drawn from the trainer's generator, so a run that measures
trains exactly like one that does not. Cadence: ``own_pairs_every`` of the method (default: the
preset's ``probes.every``; 0: never).
"""

from __future__ import annotations

import torch

from trainers.preference_losses import PairErrors


def _flat_grad(loss: torch.Tensor, params: list[torch.nn.Parameter], retain_graph: bool) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=retain_graph)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads,
                                                                                           strict=True)])


def own_pairs_every(config, preset) -> int:
    every = getattr(config, "own_pairs_every", None)
    return preset.probes.every if every is None else every


def own_pairs_due(config, preset, step: int) -> bool:
    every = own_pairs_every(config, preset)
    return every > 0 and step % every == 0


def own_pairs_values(params: list[torch.nn.Parameter], lr: float, logp: PairErrors,
                     method_loss: torch.Tensor, dpo: torch.Tensor) -> dict[str, float]:
    """The logged values from the errors the log-likelihoods are read from (``logp``, with its
    reference errors), the method's loss and DPO's loss at the method's beta on the same pairs."""
    logp_w, logp_l = -PairErrors.per_sample(logp.err_w).mean(), -PairErrors.per_sample(logp.err_l).mean()
    g_w = _flat_grad(logp_w, params, retain_graph=True)
    g_l = _flat_grad(logp_l, params, retain_graph=True)
    g_m = _flat_grad(method_loss, params, retain_graph=True)
    g_d = _flat_grad(dpo, params, retain_graph=False)
    out = {"gamma": -lr * float(g_w @ (g_m - g_d)), "dlogp_chosen": -lr * float(g_w @ g_m),
           "dlogp_rejected": -lr * float(g_l @ g_m), "dlogp_chosen_dpo": -lr * float(g_w @ g_d)}
    if logp.ref_err_w is not None and logp.ref_err_l is not None:
        out["logp_chosen"] = float(logp_w.detach() + PairErrors.per_sample(logp.ref_err_w).mean())
        out["logp_rejected"] = float(logp_l.detach() + PairErrors.per_sample(logp.ref_err_l).mean())
    return {f"own_pairs/{k}": v for k, v in out.items()}
