"""Which judge a number comes from, and where it is the judge a method trained on.

A metric declares the judge whose verdict it reports (``MetricSpec.judge``: ``oracle`` for the
tiny world's ground truth, ``latent_rm``, ``imr``, ``lmr``, ``aesthetic``, ``luminance``) and its
role: an ``evaluation`` yardstick, or a ``training-judge`` scored on every checkpoint so that a
method's gain on it can be read against the held-out judges'. A method declares the judges its
updates are driven by (``TrainerConfig.training_signals``: its reward, its ranker, the judge that
ranked its pairs). Where the two meet, the number shares a source with the method's training: it
is not a held-out measurement of that method, and every table, the HTML report and the claims
report mark it (``overlaps``); the run log says so in one line when an *evaluation* metric is
affected (``evaluation_overlaps``). A roll-up shares the sources of the dimensions it is computed
from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

MARK = "†"


def _specs() -> dict[str, object]:
    from metrics.probe_specs import PROBE_SPECS
    from metrics.registry import list_metrics

    out = {s.name: s for s in list_metrics()}
    out.update(PROBE_SPECS)
    return out


def metric_judges(identity: str, specs: Mapping[str, object] | None = None) -> set[str]:
    """The judges behind a stored identity (a roll-up: its dimensions')."""
    from metrics.rollups import rollup_constituents

    specs = _specs() if specs is None else specs
    if identity.startswith("rollup:"):
        names: Iterable[str] = rollup_constituents(identity)
    else:
        names = [identity.split("[", 1)[0]]
    return {j for n in names if (spec := specs.get(n)) is not None and (j := getattr(spec, "judge", None))}


def metric_role(identity: str, specs: Mapping[str, object] | None = None) -> str:
    specs = _specs() if specs is None else specs
    spec = specs.get(identity.split("[", 1)[0])
    return getattr(spec, "role", "evaluation") if spec is not None else "evaluation"


def overlaps(signals: Mapping[str, Iterable[str]], identities: Iterable[str]) -> dict[str, dict[str, list[str]]]:
    """{method: {identity: [shared judges]}} for every (method, metric) pair that shares a judge."""
    specs = _specs()
    identities = list(identities)
    judges = {i: metric_judges(i, specs) for i in identities}
    out: dict[str, dict[str, list[str]]] = {}
    for method, sig in signals.items():
        mine = set(sig)
        hits = {i: sorted(j & mine) for i, j in judges.items() if j & mine}
        if hits:
            out[method] = hits
    return out


def evaluation_overlaps(signals: Mapping[str, Iterable[str]], identities: Iterable[str]) -> list[str]:
    """One line per method whose training judge is also an evaluation metric's (empty: none is)."""
    specs = _specs()
    lines = []
    for method, hits in overlaps(signals, identities).items():
        evals = {i: j for i, j in hits.items() if metric_role(i, specs) == "evaluation"}
        if evals:
            shared = sorted({x for j in evals.values() for x in j})
            names = sorted({i.split("[", 1)[0] for i in evals})
            lines.append(f"method {method} trains on the {', '.join(shared)} judge, which evaluation metric(s) "
                         f"{', '.join(names)} also use: their numbers for {method} are not held out (marked "
                         f"{MARK} in every table)")
    return lines
