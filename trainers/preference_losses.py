"""Diffusion-DPO and PG-DPO objectives on per-sample denoising errors.

Notation (PG-DPO paper, Eq. 3 and 7-9). For a pair (x_w, x_l) noised with the same
(t, noise), let err = ||pred - target||^2 averaged over a sample's elements, under the
policy (theta) and the frozen reference, and

    delta_w = err_theta(x_w) - err_ref(x_w),   delta_l likewise.

The implicit reward log(p_theta / p_ref) of a sample is proportional to -delta (the
ELBO proxy), so the DPO argument beta*T*(r_w - r_l) is written, as in the Diffusion-DPO
and PG-DPO code, as

    z = -0.5 * beta * T * (delta_w - delta_l),   L_dpo = -log sigmoid(z).

z > 0 means the policy prefers the chosen sample more than the reference does
(implicit accuracy); z is the reward margin. ``T`` defaults to 1 in the configs,
i.e. T folded into beta as both papers' code does.

PG-DPO (Eq. 7, 8) weights, with the margin ratio m = (delta_w - delta_l) / (delta_l + eps)
(the listing's form of (r_w - r_l) / (r_l + eps)):

    alpha = sigmoid(K1 * m)     scales the rejected term:  z_a = -0.5*beta*T*(delta_w - alpha*delta_l)
    gamma = sigmoid(-K2 * m)    mixes:  L = gamma * (-log sigmoid(z_a)) + (1 - gamma) * L_ipr

The IPR term differs between the paper's Eq. 9 and its code listing (App. A.5.4):
  * ``equation``: L_ipr = -r_w = 0.5 * delta_w, i.e. raise the chosen sample's implicit
    reward (lower its error relative to the reference);
  * ``listing`` (default): L_ipr = mean ||pred_theta(x_w) - pred_ref(x_w)||^2, a proximity
    term that pulls the policy's prediction on the chosen sample back to the reference's.
    It does not raise the chosen likelihood above the reference; it stops it drifting.

Where the log-sigmoid acts (``logsigmoid``) also differs between the equations and the
listing, and it changes what a given beta means:
  * ``per_element`` (default): the listing (App. A.5.4, lines 39-41) forms
    -0.5*beta*(w_diff - alpha*l_diff) on every element and averages -log sigmoid of it
    over the sample's elements: L_dpo = mean_e -log sigmoid(-0.5*beta*T*(dw_e - alpha*dl_e));
  * ``per_sample``: Eq. 9 takes log sigma of beta*T times the log-likelihood ratios of whole
    samples (Eq. 7-9 write r_t = log p_theta/p_ref of x_t, one number per sample), i.e. of the
    per-sample z_a above, as Diffusion-DPO does (``dpo_loss`` keeps this placement).
  The default follows the listing because it is the code behind the paper's results, and
  the paper's beta (100, Sec. 4; range [100, 2000], App. A.5.3) was tuned with it. At the same beta
  the two are different objectives: averaging first lets per-element differences cancel
  before the sigmoid, averaging after saturates each element on its own. alpha and gamma
  stay per sample in both placements (below).

Two readings the harness makes explicit: alpha and gamma are computed per sample from
per-sample errors (the listing computes them per element but combines them with
per-sample losses, a shape that only broadcasts for batch size 1), and they are
treated as weights (detached) by default; ``weight_grad=True`` lets gradients flow
through them as the listing's autograd would (unstable when delta_l is near 0, which
it is at the first step, when the policy equals the reference).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F


@dataclass
class PairErrors:
    """Per-element squared errors (B, ...) of policy and reference on a batch of pairs."""

    err_w: torch.Tensor
    err_l: torch.Tensor
    ref_err_w: torch.Tensor
    ref_err_l: torch.Tensor
    pred_w: torch.Tensor | None = None  # needed by the listing's IPR term
    ref_pred_w: torch.Tensor | None = None

    @staticmethod
    def per_sample(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).mean(dim=1)

    @property
    def delta_w(self) -> torch.Tensor:
        return self.per_sample(self.err_w) - self.per_sample(self.ref_err_w)

    @property
    def delta_l(self) -> torch.Tensor:
        return self.per_sample(self.err_l) - self.per_sample(self.ref_err_l)


def _stats(e: PairErrors, z: torch.Tensor) -> dict[str, float]:
    def s(x: torch.Tensor) -> torch.Tensor:
        return PairErrors.per_sample(x.detach())

    return {
        "implicit_acc": float((z > 0).float().mean()),
        "reward_margin": float(z.mean()),
        "policy_loss_w": float(s(e.err_w).mean()), "policy_loss_l": float(s(e.err_l).mean()),
        "ref_loss_w": float(s(e.ref_err_w).mean()), "ref_loss_l": float(s(e.ref_err_l).mean()),
    }


def dpo_loss(e: PairErrors, beta: float, T: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Diffusion-DPO / VideoDPO: per-pair losses (B,) and logged statistics."""
    z = -0.5 * beta * T * (e.delta_w - e.delta_l)
    loss = -F.logsigmoid(z)
    return loss, _stats(e, z.detach())


def margin_ratio(e: PairErrors, eps: float) -> torch.Tensor:
    dw, dl = e.delta_w, e.delta_l
    return (dw - dl) / (dl + eps)


def pgdpo_loss(e: PairErrors, beta: float, T: float = 1.0, K1: float = 10.0, K2: float = 10.0,
               ipr: Literal["listing", "equation"] = "listing", eps: float = 1e-6,
               weight_grad: bool = False, logsigmoid: Literal["per_element", "per_sample"] = "per_element",
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """PG-DPO (Eq. 7-9): per-pair losses (B,) and logged statistics (alpha, gamma ranges).

    ``logsigmoid='per_element'`` (default) is the paper's listing (App. A.5.4): -log sigmoid
    on every element's scaled error difference, then the mean over the sample's elements.
    ``'per_sample'`` is Eq. 9 read on whole-sample log-likelihood ratios: the mean error
    difference first, then -log sigmoid (Diffusion-DPO's placement). See the module docstring.
    """
    m = margin_ratio(e, eps)
    if not weight_grad:
        m = m.detach()
    alpha, gamma = torch.sigmoid(K1 * m), torch.sigmoid(-K2 * m)
    if logsigmoid == "per_element":
        a = alpha.reshape(-1, *[1] * (e.err_w.dim() - 1))
        dw_e, dl_e = e.err_w - e.ref_err_w, e.err_l - e.ref_err_l
        loss_dpo = PairErrors.per_sample(-F.logsigmoid(-0.5 * beta * T * (dw_e - a * dl_e)))
    elif logsigmoid == "per_sample":
        loss_dpo = -F.logsigmoid(-0.5 * beta * T * (e.delta_w - alpha * e.delta_l))
    else:
        raise ValueError(f"unknown logsigmoid placement {logsigmoid!r}; allowed: per_element, per_sample")
    if ipr == "listing":
        if e.pred_w is None or e.ref_pred_w is None:
            raise ValueError("ipr='listing' needs the policy and reference predictions on the chosen samples")
        loss_ipr = PairErrors.per_sample((e.pred_w - e.ref_pred_w) ** 2)
    elif ipr == "equation":
        loss_ipr = 0.5 * e.delta_w
    else:
        raise ValueError(f"unknown ipr variant {ipr!r}; allowed: listing, equation")
    loss = gamma * loss_dpo + (1 - gamma) * loss_ipr
    z = (-0.5 * beta * T * (e.delta_w - e.delta_l)).detach()
    stats = _stats(e, z)
    alpha, gamma = alpha.detach(), gamma.detach()
    stats.update({"alpha_min": float(alpha.min()), "alpha_max": float(alpha.max()),
                  "alpha_mean": float(alpha.mean()), "gamma_min": float(gamma.min()),
                  "gamma_max": float(gamma.max()), "gamma_mean": float(gamma.mean()),
                  "loss_dpo_term": float(loss_dpo.detach().mean()),
                  "loss_ipr_term": float(loss_ipr.detach().mean())})
    return loss, stats
