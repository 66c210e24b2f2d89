"""Runs the training probes of a preset inside the outer loop (see trainers/probes.py).

Probe values go to the train logs as ``probe/<name>/<key>`` at step 0, every
``probes.every`` steps and at the last step (the probes' own schedule, independent of
``eval_every``); at each checkpoint each probe's summary of the steps probed so far is
stored as an aggregate under the probe's identity, next to the video metrics.

The probes measure every method on one held-out probe set: pairs built from clips
``probes.start`` .. ``probes.start + probes.pairs - 1`` of ``probes.split``, which no method trains
on (``probe_set_problems`` refuses a run whose methods draw from them), with Gamma's DPO step at
``probes.beta`` for every method it applies to (pairwise preference losses only: for other methods
Gamma is not measured and nothing is stored). Both are in the probes' identity
(``set=heldout-<split>-<start>``, ``beta=``). See docs/metrics-probes.md.
"""

from __future__ import annotations

from pathlib import Path

from harness.config import PresetConfig
from harness.store import ResultStore
from trainers.base import Draw, Trainer, TrainerConfig
from trainers.preference import PairsConfig, load_pairs
from trainers.probes import PROBES, TrainingProbe


class ProbeRunner:
    def __init__(self, preset: PresetConfig, trainer: Trainer, workdir: Path | None):
        cfg = preset.probes
        unknown = sorted(set(cfg.names) - set(PROBES))
        if unknown:
            raise KeyError(f"unknown probe(s) {unknown} in probes.names; registered: {', '.join(sorted(PROBES))}")
        self.every = cfg.every
        self.probes: list[TrainingProbe] = []
        self.series: dict[str, dict[str, list[float]]] = {}
        # Probes of probes.names that do not apply to this trainer, with why: not measured, nothing stored.
        self.not_applicable: dict[str, str] = {
            n: why for n in cfg.names if (why := PROBES[n].applies(trainer)) is not None}
        if not set(cfg.names) - set(self.not_applicable):
            return
        # The probe is a measurement, so the tiny world's evaluation oracle (not a method's training judge)
        # ranks its rollout pairs; real footage has none: a real clip against a sample.
        source = "rollouts" if preset.data is None else "footage"
        pairs = load_pairs(trainer.adapter, preset, PairsConfig(source=source, split=cfg.split, conditions=cfg.pairs,
                                                                 per_condition=cfg.per_condition, judge="oracle"),
                           workdir, start=cfg.start)
        self.probes = make_probes(preset, pairs, trainer)
        self.series = {p.spec.name: {} for p in self.probes}

    def __bool__(self) -> bool:
        return bool(self.probes)

    def due(self, step: int) -> bool:
        return bool(self.probes) and step % self.every == 0

    def reset(self) -> None:
        """Forget the series (before restoring them up to another step)."""
        self.series = {p.spec.name: {} for p in self.probes}

    def restore(self, logs, max_step: int) -> None:
        """Reload the series logged up to ``max_step`` (a resumed run continues them)."""
        for row in logs.itertuples():
            parts = row.key.split("/")
            if len(parts) == 3 and parts[0] == "probe" and parts[1] in self.series and row.step <= max_step:
                self.series[parts[1]].setdefault(parts[2], []).append(float(row.value))
        for probe in self.probes:
            probe.restore(self.series[probe.spec.name])

    def measure(self, trainer: Trainer, step: int) -> list[tuple[int, str, float]]:
        rows = []
        for probe in self.probes:
            for key, value in probe.measure(trainer, step).items():
                self.series[probe.spec.name].setdefault(key, []).append(value)
                rows.append((step, f"probe/{probe.spec.name}/{key}", value))
        return rows

    def store_checkpoint(self, store: ResultStore, checkpoint_id: int) -> None:
        for probe in self.probes:
            series = self.series[probe.spec.name]
            n = len(next(iter(series.values()), []))
            if n:
                store.add_aggregate(checkpoint_id, probe.identity, probe.checkpoint_value(series), n,
                                    extras={"kind": "training-probe", "probed_steps": n})


def probe_set_label(preset: PresetConfig) -> str:
    """The probe set in the probes' identity: held out, and where its conditions start."""
    return f"heldout-{preset.probes.split}-{preset.probes.start}"


def make_probes(preset: PresetConfig, pairs, trainer=None) -> list[TrainingProbe]:
    """The preset's probes on ``pairs`` that apply to ``trainer`` (all of them when None): the method
    plays no part in a probe's settings, so every method it applies to is measured with the same
    yardstick (Gamma against a DPO step at ``probes.beta``, whatever the method's own beta is; Gamma
    applies only to pairwise preference losses, ``Trainer.pairwise_preference``)."""
    cfg = preset.probes
    return [PROBES[n](pairs, draws=cfg.draws, seed=cfg.seed, beta=cfg.beta, probe_set=probe_set_label(preset))
            for n in cfg.names if trainer is None or PROBES[n].applies(trainer) is None]


def training_draws(method: str, cfg: TrainerConfig) -> list[Draw]:
    """Every range of clips the method's config trains on, as the config states them
    (``TrainerConfig.training_draws``); read from the config alone, before any work."""
    return cfg.training_draws(f"methods.{method}")


def probe_set_problems(configs: dict, preset: PresetConfig) -> list[str]:
    """Why the held-out probe set overlaps a method's training clips (empty: it is held out from all).
    On real footage an index wraps around its split, so any draw from the probes' split overlaps."""
    cfg = preset.probes
    if not cfg.names:
        return []
    probe = Draw("probes", cfg.split, cfg.start, cfg.start + cfg.pairs)
    problems = []
    for method, mcfg in configs.items():
        for d in training_draws(method, mcfg):
            if d.split != probe.split:
                continue
            if preset.data is None and not d.overlaps(probe.split, probe.start, probe.stop):
                continue
            why = "" if preset.data is None else " (on footage every index wraps around the split)"
            problems.append(f"the held-out probe set (probes.split={cfg.split!r}, {probe.span()}) overlaps {d.what}: "
                            f"{d.span()}{why}; move the probes to clips no method trains on (probes.split, "
                            "probes.start) or change the method's clips")
    return problems
