"""Two named probes, never one ambiguous one (issue #25): the held-out cross-method yardstick
``chosen_logp_step`` (every method), Gamma on the held-out pairs (pairwise preference methods only),
and the paper's in-training Gamma on each step's own pairs (``own_pairs/*``, dpo / pgdpo / apo)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from harness.config import load_preset, parse_override
from harness.models.tiny_wan import TinyWanAdapter
from metrics.probe_specs import PROBE_SPECS
from trainers import preference
from trainers.base import trainer_settings
from trainers.preference_losses import dpo_loss, pgdpo_loss
from trainers.probes import PROBES, ChosenLogpStep
from trainers.registry import get_trainer

FAST = ["sampler.num_steps=2", "probes.pairs=3", "probes.draws=2", "probes.per_condition=2"]


def _preset(*extra):
    return load_preset("tiny", [parse_override(s) for s in (*FAST, *extra)])


def _trainer(method, preset, tmp_path, **overrides):
    cls = get_trainer(method)
    raw = {**trainer_settings(preset.methods[method]), "batch_size": 2, **overrides}
    if "pairs" in cls.config_class.model_fields:
        raw.setdefault("pairs", {"conditions": 4, "per_condition": 2})
    adapter = TinyWanAdapter.load(preset.base_checkpoint_path())
    torch.manual_seed(0)
    return cls(adapter, preset, cls.config_class(**raw), 0, workdir=tmp_path / "cache")


def test_every_probe_spec_has_its_probe_and_the_registry_lists_them():
    from metrics.registry import list_metrics

    assert set(PROBES) == set(PROBE_SPECS)
    assert all(PROBES[name].spec is spec for name, spec in PROBE_SPECS.items())
    listed = {s.name: s for s in list_metrics() if s.kind == "training-probe"}
    assert listed == PROBE_SPECS


# -- which trainer is a pairwise preference trainer: declared by the class --------------------------
def test_pairwise_preference_is_declared_by_the_trainer_class():
    declared = {m: get_trainer(m).pairwise_preference for m in ("sft", "dpo", "pgdpo", "apo", "fcrm", "shift")}
    assert declared == {"sft": False, "dpo": True, "pgdpo": True, "apo": True, "fcrm": False, "shift": False}
    gamma = PROBES["gamma"]
    assert gamma.applies(SimpleNamespace(pairwise_preference=True)) is None
    assert "pairwise preference" in gamma.applies(SimpleNamespace())
    with pytest.raises(TypeError, match="pairwise preference"):
        gamma(None).measure(SimpleNamespace(), 0)


# -- chosen_logp_step on a toy whose every number can be written out by hand -------------------------
class _ToyAdapter:
    """x_t = (1 - s) x + s eps, target = eps - x, prediction = x_t @ W (W: 2 x 2)."""

    def __init__(self, w):
        self.w = torch.nn.Parameter(torch.tensor(w, dtype=torch.float64))

    def add_noise(self, x, eps, s):
        return (1 - s[:, None]) * x + s[:, None] * eps

    def training_target(self, x, eps, s):
        return eps - x

    def predict(self, x_t, s, cond):
        return x_t @ self.w


X = np.array([[1.0, -0.5], [0.3, 0.8]])
EPS = np.array([[0.2, 0.1], [-0.4, 0.6]])
S = np.array([0.3, 0.7])


def _toy_logp(w: np.ndarray) -> float:
    """The chosen samples' ELBO proxy, in numpy: minus the mean squared error over pairs and elements."""
    x_t = (1 - S[:, None]) * X + S[:, None] * EPS
    return -float((((x_t @ w) - (EPS - X)) ** 2).mean())


def _toy(w, loss, lr=0.1):
    """A trainer whose coming loss is ``loss(W)``, and the probe on the toy's two chosen samples."""
    adapter = _ToyAdapter(w)

    def coming_loss(step):
        return loss(adapter.w), {}

    trainer = SimpleNamespace(adapter=adapter, params=[adapter.w], lr=lr, coming_loss=coming_loss)
    probe = ChosenLogpStep(pairs=[0, 1], draws=1)
    x = torch.tensor(X)
    probe.fixed_draws = lambda adapter, draws: (x, x, None, torch.tensor(S), torch.tensor(EPS))
    return trainer, probe


def _numeric_grad(f, w: np.ndarray, h=1e-6) -> np.ndarray:
    g = np.zeros_like(w)
    for i in np.ndindex(w.shape):
        d = np.zeros_like(w)
        d[i] = h
        g[i] = (f(w + d) - f(w - d)) / (2 * h)
    return g


X_T = (1 - S[:, None]) * X + S[:, None] * EPS
BEST = np.linalg.lstsq(X_T, EPS - X, rcond=None)[0]  # the W of the highest chosen log-likelihood


@pytest.mark.parametrize("target", [np.eye(2), -np.eye(2), np.array([[0.0, 3.0], [-2.0, 0.5]]), BEST])
def test_chosen_logp_step_sign_and_size_match_a_hand_check_on_a_toy(target):
    """A method whose loss is ||W - target||^2: its SGD step W - lr * 2 (W - target) changes the chosen
    log-likelihood by (first order) what the probe logs; the sign and the cosine come from finite
    differences in numpy, not from autograd."""
    w0 = np.array([[0.5, 0.2], [-0.1, 0.4]])
    lr = 1e-3

    trainer, probe = _toy(w0, lambda w: ((w - torch.as_tensor(target)) ** 2).sum(), lr)
    got = probe.measure(trainer, 0)
    g_loss = 2 * (w0 - target)  # by hand
    g_logp = _numeric_grad(_toy_logp, w0)
    change = _toy_logp(w0 - lr * g_loss) - _toy_logp(w0)  # the actual change of one SGD step
    cos = float((-g_loss * g_logp).sum() / (np.linalg.norm(g_loss) * np.linalg.norm(g_logp)))
    assert got["dlogp"] == pytest.approx(change, rel=1e-2)
    assert got["cos"] == pytest.approx(cos, rel=1e-5)
    assert (got["cos"] > 0) == (change > 0)
    if target is BEST:  # a step towards the best W raises the chosen log-likelihood
        assert got["cos"] > 0


def test_chosen_logp_step_of_a_method_that_maximises_the_chosen_likelihood_is_plus_one():
    trainer, probe = _toy(np.array([[0.5, 0.2], [-0.1, 0.4]]), lambda w: None)

    def minus_logp(step):
        x = torch.tensor(X)
        x_t = trainer.adapter.add_noise(x, torch.tensor(EPS), torch.tensor(S))
        return ((trainer.adapter.predict(x_t, None, None) - (torch.tensor(EPS) - x)) ** 2).mean(), {}

    trainer.coming_loss = minus_logp
    assert probe.measure(trainer, 0)["cos"] == pytest.approx(1.0)
    trainer.coming_loss = lambda step: (-minus_logp(step)[0], {})
    assert probe.measure(trainer, 0)["cos"] == pytest.approx(-1.0)
    assert ChosenLogpStep.checkpoint_value({"cos": [0.3, -0.1, 0.2, 0.0]}) == 0.5


# -- the paper's Gamma on the step's own pairs ---------------------------------------------------------
def test_own_pairs_gamma_is_the_first_order_gain_of_pgdpo_over_dpo_on_the_steps_pairs(tmp_path):
    """own_pairs/gamma = -lr g_logp . (g_pgdpo - g_dpo) at the method's own beta: checked against the
    chosen log-likelihood after an actual SGD step of each loss, on the step's own pairs and draws."""
    preset = _preset()
    trainer = _trainer("pgdpo", preset, tmp_path, lr=1e-3, own_pairs_every=0)
    trainer.train_step(0)  # move off the reference so that PG-DPO and DPO differ
    batch = trainer.draw_batch(1)
    own = trainer.own_pairs(*batch)
    x_w, x_l, cond, sigma, noise = batch
    params = trainer.params
    theta = [p.detach().clone() for p in params]
    c = trainer.config

    def errors():
        return preference.pair_errors(trainer.adapter, x_w, x_l, cond, sigma, noise)

    def logp_after(loss, lr=1e-3):
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        with torch.no_grad():
            for p, t, g in zip(params, theta, grads, strict=True):
                p.copy_(t - lr * (torch.zeros_like(p) if g is None else g))
            e = preference.pair_errors(trainer.adapter, x_w, x_l, cond, sigma, noise, with_reference=False)
            w, l_ = -e.per_sample(e.err_w).mean().item(), -e.per_sample(e.err_l).mean().item()
            for p, t in zip(params, theta, strict=True):
                p.copy_(t)
        return w, l_

    with torch.no_grad():
        e0 = preference.pair_errors(trainer.adapter, x_w, x_l, cond, sigma, noise, with_reference=False)
        w0, l0 = -e0.per_sample(e0.err_w).mean().item(), -e0.per_sample(e0.err_l).mean().item()
    pg_w, pg_l = logp_after(pgdpo_loss(errors(), c.beta, c.T, c.K1, c.K2, c.ipr, c.eps, c.weight_grad,
                                       c.logsigmoid)[0].mean())
    dpo_w, _ = logp_after(dpo_loss(errors(), c.beta, c.T)[0].mean())
    assert own["own_pairs/gamma"] == pytest.approx(pg_w - dpo_w, rel=0.1, abs=1e-9)
    assert own["own_pairs/dlogp_chosen"] == pytest.approx(pg_w - w0, rel=0.1, abs=1e-9)
    assert own["own_pairs/dlogp_rejected"] == pytest.approx(pg_l - l0, rel=0.1, abs=1e-9)
    assert own["own_pairs/dlogp_chosen_dpo"] == pytest.approx(dpo_w - w0, rel=0.1, abs=1e-9)
    assert own["own_pairs/gamma"] != 0.0


def test_own_pairs_gamma_of_dpo_is_zero_and_the_cadence_is_the_probes_by_default(tmp_path):
    preset = _preset("probes.every=2")
    dpo = _trainer("dpo", preset, tmp_path)
    logs = [dpo.train_step(s) for s in range(3)]
    assert [("own_pairs/gamma" in x) for x in logs] == [True, False, True]  # probes.every
    assert logs[0]["own_pairs/gamma"] == pytest.approx(0.0, abs=1e-12)  # DPO against DPO at its own beta
    assert logs[0]["own_pairs/logp_chosen"] == 0.0  # at the reference
    never = _trainer("dpo", preset, tmp_path, own_pairs_every=0)
    assert not any(k.startswith("own_pairs/") for s in range(3) for k in never.train_step(s))


SMALL = {
    "pgdpo": {},
    "apo": {"stages": [{"kind": "offline", "steps": 3, "pairs": {"conditions": 4, "per_condition": 2}}]},
}


@pytest.mark.parametrize("method", sorted(SMALL))
def test_own_pairs_measurement_does_not_change_training(method, tmp_path):
    """Measured at every step, the trainer takes the same steps as one that never measures: same loss
    series, same weights; and it leaves no gradient on the parameters."""
    preset = _preset()
    plain = _trainer(method, preset, tmp_path, own_pairs_every=0, **SMALL[method])
    measured = _trainer(method, preset, tmp_path, own_pairs_every=1, **SMALL[method])
    for step in range(3):
        expected = plain.train_step(step)
        got = measured.train_step(step)
        assert "own_pairs/gamma" in got and np.isfinite(got["own_pairs/gamma"])
        assert {k: v for k, v in got.items() if not k.startswith("own_pairs/")} == expected
    a, b = plain.adapter.lora_state_dict(), measured.adapter.lora_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    fresh = _trainer(method, preset, tmp_path, own_pairs_every=0, **SMALL[method])
    if method == "apo":
        fresh.own_pairs(0, fresh._batch(0))
    else:
        fresh.own_pairs(*fresh.draw_batch(0))
    assert all(p.grad is None for p in fresh.params)


def test_the_probe_table_names_each_probe_and_says_why_gamma_is_not_applicable():
    import pandas as pd

    from reports.probes import GAMMA_NA, probe_summary

    rows = []
    for m, gammas in (("pgdpo", [0.1, -0.2]), ("fcrm", None)):
        for step, cos in ((0, 0.5), (2, -0.1)):
            rows.append((m, 0, step, "probe/chosen_logp_step/cos", cos))
        for step, g in enumerate(gammas or []):
            rows.append((m, 0, 2 * step, "probe/gamma/gamma", g))
    rows += [("pgdpo", 0, 1, "own_pairs/gamma", 0.3), ("pgdpo", 0, 3, "own_pairs/gamma", 0.2)]
    table = probe_summary(pd.DataFrame(rows, columns=["method", "seed", "step", "key", "value"]), ["pgdpo", "fcrm"])
    by = table.set_index("method")
    assert by.loc["pgdpo", "held-out Gamma > 0 (share)"] == 0.5
    assert by.loc["fcrm", "held-out Gamma > 0 (share)"] == GAMMA_NA == "n/a: not a pairwise preference loss"
    assert by.loc["fcrm", "update raises held-out log p(chosen) (share)"] == 0.5
    assert by.loc["pgdpo", "own-pairs Gamma > 0 (share, in training)"] == 1.0
