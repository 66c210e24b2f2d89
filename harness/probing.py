"""Runs the training probes of a preset inside the outer loop (see metrics/probes.py).

Probe values go to the train logs as ``probe/<name>/<key>`` at step 0, every
``probes.every`` steps and at each checkpoint; at a checkpoint each probe's summary
is stored as an aggregate under the probe's identity, next to the video metrics.
"""

from __future__ import annotations

from pathlib import Path

from harness.config import PresetConfig
from harness.store import ResultStore
from metrics.probes import PROBES, TrainingProbe
from trainers.base import Trainer
from trainers.preference import PairsConfig, load_pairs


class ProbeRunner:
    def __init__(self, preset: PresetConfig, trainer: Trainer, workdir: Path | None):
        cfg = preset.probes
        unknown = sorted(set(cfg.names) - set(PROBES))
        if unknown:
            raise KeyError(f"unknown probe(s) {unknown} in probes.names; registered: {', '.join(sorted(PROBES))}")
        self.every = cfg.every
        self.probes: list[TrainingProbe] = []
        self.series: dict[str, dict[str, list[float]]] = {}
        if not cfg.names:
            return
        # The tiny world's oracle judges rollout pairs; real footage has none: a real clip against a sample.
        source = "rollouts" if preset.data is None else "footage"
        pairs = load_pairs(trainer.adapter, preset, PairsConfig(source=source, split=cfg.split, conditions=cfg.pairs,
                                                                 per_condition=cfg.per_condition), workdir)
        beta = getattr(trainer.config, "beta", cfg.beta)  # a DPO-family method is compared at its own beta
        self.probes = [PROBES[n](pairs, draws=cfg.draws, seed=cfg.seed, beta=beta) for n in cfg.names]
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
