"""DPO and PG-DPO losses against values computed by hand from the paper's equations."""

import math

import pytest
import torch

from trainers.preference_losses import PairErrors, dpo_loss, margin_ratio, pgdpo_loss


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _errors(requires_grad: bool = False) -> PairErrors:
    # Per-sample means: policy w [0.2, 0.4], ref w [0.3, 0.3] -> delta_w = [-0.1, 0.1]
    #                   policy l [0.5, 0.2], ref l [0.3, 0.3] -> delta_l = [0.2, -0.1]
    err_w = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.4, 0.4]], requires_grad=requires_grad)
    err_l = torch.tensor([[0.5, 0.5, 0.5], [0.2, 0.2, 0.2]], requires_grad=requires_grad)
    ref = torch.full((2, 3), 0.3)
    pred_w = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    ref_pred_w = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 3.0]])
    return PairErrors(err_w, err_l, ref, ref.clone(), pred_w=pred_w, ref_pred_w=ref_pred_w)


def test_dpo_loss_by_hand():
    loss, stats = dpo_loss(_errors(), beta=2.0)
    # z = -0.5 * beta * (delta_w - delta_l) = -(-0.3, 0.2) = (0.3, -0.2); loss = log(1 + exp(-z))
    assert loss.tolist() == pytest.approx([math.log1p(math.exp(-0.3)), math.log1p(math.exp(0.2))], abs=1e-6)
    assert stats["implicit_acc"] == 0.5
    assert stats["reward_margin"] == pytest.approx(0.05, abs=1e-6)
    assert stats["policy_loss_w"] == pytest.approx(0.3) and stats["ref_loss_l"] == pytest.approx(0.3)
    # beta * T is one number: beta 1 with T 2 equals beta 2
    assert dpo_loss(_errors(), beta=1.0, T=2.0)[0].tolist() == pytest.approx(loss.tolist())


def test_dpo_sign_conventions():
    e = _errors(requires_grad=True)
    loss, _ = dpo_loss(e, beta=2.0)
    loss.sum().backward()
    # Descending the loss lowers the chosen error and raises the rejected one.
    assert (e.err_w.grad > 0).all() and (e.err_l.grad < 0).all()
    # A policy better than the reference on the chosen and worse on the rejected: margin > 0, loss < log 2.
    assert loss[0] < math.log(2) < loss[1]


def _pgdpo_by_hand(beta, K1, K2, eps, ipr, placement):
    dw, dl = [-0.1, 0.1], [0.2, -0.1]
    dw_e, dl_e = [[-0.2, -0.1, 0.0], [0.1, 0.1, 0.1]], [[0.2, 0.2, 0.2], [-0.1, -0.1, -0.1]]  # elements
    out = []
    for i in range(2):
        m = (dw[i] - dl[i]) / (dl[i] + eps)
        alpha, gamma = _sig(K1 * m), _sig(-K2 * m)
        if placement == "per_sample":
            l_dpo = math.log1p(math.exp(0.5 * beta * (dw[i] - alpha * dl[i])))
        else:  # the listing: -log sigmoid per element, then the mean
            l_dpo = sum(math.log1p(math.exp(0.5 * beta * (a - alpha * b))) for a, b in zip(dw_e[i], dl_e[i],
                                                                                            strict=True)) / 3
        if ipr == "equation":
            l_ipr = 0.5 * dw[i]
        else:  # mean (pred_w - ref_pred_w)^2: row 0 (0, 1, 4) / 3, row 1 (0, 0, 9) / 3
            l_ipr = [5 / 3, 3.0][i]
        out.append(gamma * l_dpo + (1 - gamma) * l_ipr)
    return out


@pytest.mark.parametrize("placement", ["per_element", "per_sample"])
@pytest.mark.parametrize("ipr", ["listing", "equation"])
def test_pgdpo_loss_by_hand(ipr, placement):
    loss, stats = pgdpo_loss(_errors(), beta=2.0, K1=1.0, K2=0.5, ipr=ipr, eps=1e-6, logsigmoid=placement)
    assert loss.tolist() == pytest.approx(_pgdpo_by_hand(2.0, 1.0, 0.5, 1e-6, ipr, placement), abs=1e-5)
    # m = (-1.5, -2.0): alpha = sigmoid(K1 m), gamma = sigmoid(-K2 m)
    assert stats["alpha_min"] == pytest.approx(_sig(-2.0), abs=1e-5)
    assert stats["alpha_max"] == pytest.approx(_sig(-1.5), abs=1e-5)
    assert stats["gamma_max"] == pytest.approx(_sig(1.0), abs=1e-5)


def test_ipr_variants_differ_in_direction():
    # equation: the IPR term rewards lowering the chosen error (raising its likelihood);
    # listing: it only penalises the prediction's distance from the reference's.
    e = _errors(requires_grad=True)
    e.pred_w = e.ref_pred_w.clone()  # policy prediction equal to the reference's: listing IPR = 0
    loss_listing, s_listing = pgdpo_loss(e, beta=2.0, K2=1e3, ipr="listing")
    loss_eq, s_eq = pgdpo_loss(e, beta=2.0, K2=1e3, ipr="equation")
    assert s_listing["loss_ipr_term"] == 0.0
    assert s_eq["loss_ipr_term"] == pytest.approx(0.5 * 0.0, abs=1e-6)  # mean of 0.5 * (-0.1, 0.1)
    with pytest.raises(ValueError, match="predictions"):
        pgdpo_loss(PairErrors(e.err_w, e.err_l, e.ref_err_w, e.ref_err_l), beta=2.0, ipr="listing")


def _with_deltas(dw: float, dl: float) -> PairErrors:
    z = torch.zeros(1, 4)
    return PairErrors(z + 1.0 + dw, z + 1.0 + dl, z + 1.0, z + 1.0, pred_w=z, ref_pred_w=z)


def test_alpha_gamma_limits():
    # Small margin (delta_w ~ delta_l): alpha = gamma = 1/2, the loss is half DPO with a half-weight rejection.
    _, s = pgdpo_loss(_with_deltas(0.01, 0.01), beta=100.0)
    assert s["alpha_mean"] == pytest.approx(0.5) and s["gamma_mean"] == pytest.approx(0.5)
    # Large margin with the rejected sample's implicit reward positive (delta_l < 0), the regime the
    # paper describes: gamma -> 0 (IPR takes over), alpha -> 1 (full rejection term).
    _, s = pgdpo_loss(_with_deltas(-0.5, -0.01), beta=100.0)
    assert s["gamma_mean"] < 1e-6 and s["alpha_mean"] > 1 - 1e-6
    # Large margin with the rejected sample pushed below the reference (delta_l > 0, what DPO does):
    # the denominator flips the sign, so gamma -> 1 and alpha -> 0. Eq. 7-8 as written.
    _, s = pgdpo_loss(_with_deltas(-0.5, 0.01), beta=100.0)
    assert s["gamma_mean"] > 1 - 1e-6 and s["alpha_mean"] < 1e-6
    assert margin_ratio(_with_deltas(-0.5, 0.01), 1e-6).item() == pytest.approx(-0.51 / (0.01 + 1e-6), rel=1e-4)


def test_pgdpo_weights_are_detached_by_default():
    e = _errors(requires_grad=True)
    pgdpo_loss(e, beta=2.0, K1=1.0, K2=0.5, ipr="equation")[0].sum().backward()
    g_detached = e.err_w.grad.clone()
    e2 = _errors(requires_grad=True)
    pgdpo_loss(e2, beta=2.0, K1=1.0, K2=0.5, ipr="equation", weight_grad=True)[0].sum().backward()
    assert not torch.allclose(g_detached, e2.err_w.grad)
