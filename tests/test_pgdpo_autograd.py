"""PG-DPO and Diffusion-DPO losses and gradients against the papers' equations, written out
here independently of trainers/preference_losses.py and differentiated by autograd through a
toy denoiser with four parameters.

Implicit reward of a sample (PG-DPO Eq. 7-9, Diffusion-DPO): r = log p_theta(x) - log p_ref(x)
with Gaussian transitions of unit variance centred on the prediction, averaged over elements
(T folded into beta as in both papers' code): r = mean_e [log N(target_e; pred_e, 1) - log N(target_e;
ref_pred_e, 1)]. Eq. 9 (alpha read inside the log-sigmoid, as in the listing):
    L = -[gamma log sigma(beta r_w - alpha beta r_l) + (1 - gamma) r_w],
    alpha = sigma(K1 (r_w - r_l) / r_l), gamma = sigma(-K2 (r_w - r_l) / r_l)   (Eq. 7, 8).
The listing (App. A.5.4) instead takes -log sigmoid(-0.5 beta (w_diff_e - alpha l_diff_e)) per element
e, averages it, and uses the proximity term mean_e (pred_w - ref_pred_w)^2 as IPR.
"""

import math
from types import SimpleNamespace

import pytest
import torch
from torch.distributions import Normal

from trainers.dpo import DPOConfig, DPOTrainer
from trainers.pgdpo import PGDPOConfig, PGDPOTrainer
from trainers.preference_losses import PairErrors

BETA, K1, K2 = 4.0, 3.0, 2.0


def _toy():
    """A denoiser pred = w0 * x_t + w1 * x_t^2 + w2 * c + w3 and a frozen reference; 2 pairs of 5 elements."""
    g = torch.Generator().manual_seed(0)
    theta = torch.tensor([0.9, 0.1, 0.3, -0.2], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([1.0, 0.0, 0.2, 0.0], dtype=torch.float64)
    xt_w, xt_l = (torch.randn(2, 5, generator=g, dtype=torch.float64) for _ in range(2))
    c = torch.randn(2, 1, generator=g, dtype=torch.float64)
    tgt_w, tgt_l = (torch.randn(2, 5, generator=g, dtype=torch.float64) for _ in range(2))

    def model(p, x):
        return p[0] * x + p[1] * x ** 2 + p[2] * c + p[3]

    return theta, ref, model, (xt_w, tgt_w), (xt_l, tgt_l)


def _logsig(x: float | torch.Tensor):
    return -torch.log1p(torch.exp(-x)) if isinstance(x, torch.Tensor) else -math.log1p(math.exp(-x))


def _reward(model, theta, ref, x, tgt, i):
    """Eq. 7-9's r for sample i: the per-element mean Gaussian log-likelihood ratio."""
    lp = Normal(model(theta, x)[i], 1.0).log_prob(tgt[i])
    lr = Normal(model(ref, x)[i], 1.0).log_prob(tgt[i])
    return (lp - lr).mean()


def _paper_loss(placement: str, ipr: str):
    """The summed PG-DPO loss over the two pairs, from the equations (per_sample) or the listing
    (per_element), and its gradient with respect to theta."""
    theta, ref, model, (xw, tw), (xl, tl) = _toy()
    total = 0
    for i in range(2):
        r_w, r_l = _reward(model, theta, ref, xw, tw, i), _reward(model, theta, ref, xl, tl, i)
        ratio = float(((r_w - r_l) / r_l).detach())  # alpha and gamma are weights: no gradient through them
        alpha, gamma = 1 / (1 + math.exp(-K1 * ratio)), 1 / (1 + math.exp(K2 * ratio))
        if placement == "per_sample":  # Eq. 9
            l_dpo = -_logsig(BETA * r_w - alpha * BETA * r_l)
        else:  # the listing: one element at a time
            terms = []
            for e in range(5):
                w_diff = (model(theta, xw)[i, e] - tw[i, e]) ** 2 - (model(ref, xw)[i, e] - tw[i, e]) ** 2
                l_diff = (model(theta, xl)[i, e] - tl[i, e]) ** 2 - (model(ref, xl)[i, e] - tl[i, e]) ** 2
                terms.append(-_logsig(-0.5 * BETA * (w_diff - l_diff * alpha)))
            l_dpo = sum(terms) / 5
        if ipr == "equation":  # Eq. 9's second term: maximise r_w
            l_ipr = -r_w
        else:  # the listing's proximity term
            l_ipr = ((model(theta, xw)[i] - model(ref, xw)[i]) ** 2).mean()
        total = total + gamma * l_dpo + (1 - gamma) * l_ipr
    (grad,) = torch.autograd.grad(total, theta)
    return float(total.detach()), grad


def _errors(model, theta, ref, chosen, rejected) -> PairErrors:
    (xw, tw), (xl, tl) = chosen, rejected
    pw, pl = model(theta, xw), model(theta, xl)
    with torch.no_grad():
        rw, rl = model(ref, xw), model(ref, xl)
    return PairErrors((pw - tw) ** 2, (pl - tl) ** 2, (rw - tw) ** 2, (rl - tl) ** 2, pred_w=pw, ref_pred_w=rw)


def _trainer_loss(trainer_cls, cfg):
    theta, ref, model, chosen, rejected = _toy()
    loss, _ = trainer_cls.objective(SimpleNamespace(config=cfg), _errors(model, theta, ref, chosen, rejected))
    (grad,) = torch.autograd.grad(loss.sum(), theta)
    return float(loss.sum().detach()), grad


@pytest.mark.parametrize("ipr", ["listing", "equation"])
@pytest.mark.parametrize("placement", ["per_element", "per_sample"])
def test_pgdpo_matches_the_papers_loss_and_gradient(placement, ipr):
    cfg = PGDPOConfig(beta=BETA, K1=K1, K2=K2, ipr=ipr, eps=1e-12, logsigmoid=placement)
    want_loss, want_grad = _paper_loss(placement, ipr)
    got_loss, got_grad = _trainer_loss(PGDPOTrainer, cfg)
    assert got_loss == pytest.approx(want_loss, rel=1e-6)
    assert torch.allclose(got_grad, want_grad, rtol=1e-6, atol=1e-9)


def test_placements_differ_and_the_listing_is_the_default():
    assert PGDPOConfig().logsigmoid == "per_element"
    a, b = _paper_loss("per_element", "listing"), _paper_loss("per_sample", "listing")
    # far beyond the 1e-6 tolerance above: the comparison tells the placements apart
    assert abs(a[0] - b[0]) > 1e-3 and not torch.allclose(a[1], b[1], rtol=1e-2)


def test_dpo_baseline_keeps_diffusion_dpos_per_sample_log_sigmoid():
    """Diffusion-DPO: L = -log sigma(beta (r_w - r_l)) on whole-sample rewards, unchanged by the option."""
    theta, ref, model, (xw, tw), (xl, tl) = _toy()
    total = sum(-_logsig(BETA * (_reward(model, theta, ref, xw, tw, i) - _reward(model, theta, ref, xl, tl, i)))
                for i in range(2))
    (want_grad,) = torch.autograd.grad(total, theta)
    got_loss, got_grad = _trainer_loss(DPOTrainer, DPOConfig(beta=BETA))
    assert got_loss == pytest.approx(float(total.detach()), rel=1e-6)
    assert torch.allclose(got_grad, want_grad, rtol=1e-6, atol=1e-9)
