"""The specs of the training probes (trainers/probes.py): their names, versions, directions and
descriptions, as the metric registry lists them (``harness list metrics``) and as their results are
stored. The probes themselves read the trainers' objectives, so they live with the trainers; the
metrics layer knows them by these specs only."""

from __future__ import annotations

from metrics.base import MetricSpec

PROBE_SPECS: dict[str, MetricSpec] = {
    "likelihood_displacement": MetricSpec(
        name="likelihood_displacement", version="1", higher_is_better=True, kind="training-probe",
        aggregation="series", vbench_range=None, inputs=(), weights=(),
        description="chosen samples' ELBO-proxy log-likelihood minus the reference's, on fixed probe pairs "
                    "and draws (negative = likelihood displacement)",
        group="probe",
    ),
    "gamma": MetricSpec(
        name="gamma", version="2", higher_is_better=True, kind="training-probe", aggregation="series",
        vbench_range=None, inputs=(), weights=(),
        description="PG-DPO's Gamma on the held-out pairs (pairwise preference methods only): the method's "
                    "first-order gain in the chosen log-likelihood over a DPO step at probes.beta; per checkpoint, "
                    "the share of probed steps with Gamma > 0",
        group="probe",
    ),
    "chosen_logp_step": MetricSpec(
        name="chosen_logp_step", version="1", higher_is_better=True, kind="training-probe", aggregation="series",
        vbench_range=None, inputs=(), weights=(),
        description="does the method's coming update (its own loss on its own batch) raise the held-out chosen "
                    "samples' log-likelihood? cosine between the update and grad log p(chosen); per checkpoint, the "
                    "share of probed steps with cosine > 0",
        group="probe",
    ),
}
