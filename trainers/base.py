"""The Trainer interface. The outer loop (checkpoints, evaluation, resume, logging)
lives once in harness.runner; a trainer owns only its loss, its data and its state.

Compute (issue 29: curves at matched compute, as the papers compare methods). ``counted_step`` logs two
cumulative training values after every step:

* ``compute/passes``: passes of the video model, in rows (one video through the network once), a
  backward counted as two more forwards (the usual 1:2 forward/backward cost), summed over ranks. They
  are counted, not declared: every ``ModelAdapter.predict`` reports to ``harness.models.base.counting_passes``,
  so rollouts, reference and old/EMA-policy predictions and a latent reward model's backbone all count
  (a backbone read up to one block counts as a whole forward). Not counted: prepared data (a preference
  pair set's rollouts, built once before training or, for APO's later stages, when the stage starts, and
  cached for every method and seed; FCRM's offline set, scored once), probes, evaluation, PG-DPO's
  own-pairs measurement (``uncounted``), and networks that are not the video model (SHIFT's
  discriminators, reward heads, caption encoders).
* ``compute/samples``: videos that entered training, as the trainer reports them (``saw``): each data
  clip, each video of a preference pair (two a pair, drawn or generated) and each rollout when it is
  generated (a round reused for several steps, or replayed from a buffer, counts once). Global counts.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from harness.config import ConfigError, PresetConfig
from harness.distributed import current, deepspeed_config
from harness.models.base import ModelAdapter, count_samples, counting_passes
from harness.sampling import SamplerConfig
from trainers.claims import Objective, PaperClaim
from trainers.optimizer import AdamWSettings, make_optimizer

# What `harness run --smoke` changes in a method's section: (path inside the section, value).
SmokeChanges = list[tuple[tuple[str, ...], Any]]

# Keys of a preset's method section that are not the trainer's: the outer loop's schedule (harness/runner.py,
# Schedule: how many steps, and how often a checkpoint is saved and evaluated) and the name reports give the
# method (e.g. the paper's name of an ablation variant; a variant does not inherit its trainer section's).
SCHEDULE_KEYS = ("steps", "eval_every")
LABEL_KEY = "label"


def trainer_settings(section: dict[str, Any]) -> dict[str, Any]:
    """A preset's method section without the schedule and the label: what the method's config class takes."""
    return {k: v for k, v in section.items() if k not in (*SCHEDULE_KEYS, LABEL_KEY)}


# A method's "clip walk": SFT-style batches read clip seed * 1000000 + step * batch_size on, for every seed.
CLIP_WALK = "clips seed * 1000000 + step * batch_size, for every seed"
WALK_STRIDE = 1_000_000


@dataclass(frozen=True)
class Draw:
    """Clips ``start`` .. ``stop - 1`` of ``split`` that a method trains on (``stop`` None: no end)."""

    what: str
    split: str
    start: int
    stop: int | None
    walk: int = 0  # > 0: a clip walk of this many clips a step (CLIP_WALK); start/stop then bound every seed's

    def span(self) -> str:
        return f"{self.split} clips {self.start}..{'' if self.stop is None else self.stop - 1}"

    def ranges(self, seeds: list[int], steps: int) -> list[tuple[int, int | None]]:
        """The [start, stop) index ranges a run of ``seeds`` x ``steps`` steps reads: a walk's exact
        clips (seed * 1000000 + step * walk), any other draw its whole span."""
        if not self.walk:
            return [(self.start, self.stop)]
        return [(s * WALK_STRIDE, s * WALK_STRIDE + steps * self.walk) for s in seeds]

    def overlaps(self, split: str, start: int, stop: int, seeds: list[int] | None = None,
                 steps: int | None = None) -> bool:
        """Whether clips ``start`` .. ``stop - 1`` of ``split`` meet this draw (a walk: for ``seeds`` and
        ``steps`` when both are given, else anywhere in the split)."""
        if split != self.split:
            return False
        spans = self.ranges(seeds, steps) if self.walk and seeds is not None and steps is not None \
            else [(self.start, self.stop)]
        return any(a < stop and (b is None or start < b) for a, b in spans)


class TrainerConfig(BaseModel):
    """Fields every method has; methods extend it with their own."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(5e-4, gt=0)
    batch_size: int = Field(8, ge=1)
    lora_rank: int = Field(8, ge=1)
    lora_alpha: float = Field(8.0, gt=0)
    grad_clip: float = Field(1.0, gt=0)
    # A named variant (preset key `fcrm-offline`, say) names the registered trainer it configures.
    trainer: str | None = Field(None, description="registered trainer of a named variant; default: the key")
    base_checkpoint: str | None = Field(
        None, description="the method's own starting model (e.g. a few-step generator); default: the preset's")
    sampler: SamplerConfig | None = Field(
        None, description="the method's sampler for rollouts and evaluation; default: the preset's")

    @classmethod
    def smoke_changes(cls, section: dict[str, Any], with_steps: bool) -> SmokeChanges:
        """What `harness run --smoke` shrinks in this method's preset section ``section`` (the keys as the
        preset writes them: a named variant's own keys only), so that the run takes seconds: with
        ``with_steps``, 2 training steps evaluated after each. Methods with rollout, pair or buffer sets
        add theirs; harness/smoke.py adds the preset-wide part and leaves out what the user set."""
        return [(("steps",), 2), (("eval_every",), 1)] if with_steps else []

    def planned_steps(self) -> int | None:
        """The number of steps the method's own settings define (APO: its stages'), which the runner's
        schedule then uses; None (default): the schedule's ``steps`` decides."""
        return None

    def fit_steps(self, steps: int) -> TrainerConfig:
        """This config for a schedule of ``steps`` steps, when ``planned_steps`` is not None (APO rescales
        its stages); the runner then takes ``planned_steps()`` of the result as the schedule's length."""
        return self

    def optimizer_settings(self) -> AdamWSettings:
        """AdamW's betas and weight decay for this method's step (trainers/optimizer.py); the learning rate
        is ``lr``. Default: torch's betas, no weight decay."""
        return AdamWSettings()

    def preset_problems(self, preset: PresetConfig, where: str) -> list[str]:
        """What in this config cannot work with ``preset`` (e.g. the tiny world's oracle on real
        footage), each naming ``where`` (``methods.<name>``) and the fix; found from the configs alone,
        so `harness run` refuses before any method trains."""
        return []

    def training_signals(self) -> list[str]:
        """The judges this method's updates are driven by (a reward, a ranker, the judge that ranked its
        pairs), by the name the metrics declare as their ``judge`` (``MetricSpec.judge``): a metric whose
        judge is listed shares a source with the method's training and is marked in every table. Data a
        method imitates (SFT's clips) is not a judge."""
        return []

    def training_draws(self, where: str) -> list[Draw]:
        """Every range of clips this config trains on (its pairs' conditions, rollout conditions, offline
        or real clips, clip walks), read from the config alone so that a held-out probe set that overlaps
        them is refused before any work (harness/probing.py). ``where`` names the section
        (``methods.<name>``). The default: a ``pairs`` field's conditions, or else, for a config with a
        ``split``, a clip walk over all of that split (SFT, and a method that says nothing more)."""
        out = pairs_draws(getattr(self, "pairs", None), where)
        split = getattr(self, "split", None)
        if not out and isinstance(split, str):
            out.append(Draw(f"{where}.split ({CLIP_WALK})", split, 0, None, walk=self.batch_size))
        return out

    def batch_layout(self) -> list[tuple[str, int, int]]:
        """(what, global count, group size) of each batch split across ranks: the count must be a
        multiple of world size x group size (a group never straddles two ranks)."""
        return [("batch_size", self.batch_size, 1)]


def pairs_draws(pairs: Any, where: str) -> list[Draw]:
    """The conditions a preference pair set (``trainers.preference.PairsConfig``) is sampled from; a
    pairs file holds no clip indices of a split."""
    if pairs is None or pairs.source == "file":
        return []
    return [Draw(f"{where}.pairs", pairs.split, 0, pairs.conditions)]


class Trainer(ABC):
    name: ClassVar[str]
    config_class: ClassVar[type[TrainerConfig]] = TrainerConfig
    description: ClassVar[str] = ""
    # True when the loss is a pairwise preference loss (chosen vs rejected of one pair, compared with
    # a reference): the trainers for which PG-DPO's Gamma (DPO vs the method on the same pairs) has a
    # meaning (trainers/probes.py). Declared by the class, never inferred from its name.
    pairwise_preference: ClassVar[bool] = False
    # Attributes that ``compute_loss`` may change (rollout rounds, buffers, running statistics):
    # ``coming_loss`` puts them back, so that a probe's replay leaves the trainer as it found it.
    replay_state: ClassVar[tuple[str, ...]] = ()
    # What the reports read (trainers/claims.py): the paper's claims this method's module states, and
    # the logged series that is its own training objective (None: the objectives section skips it).
    claims: ClassVar[tuple[PaperClaim, ...]] = ()
    training_objective: ClassVar[Objective | None] = None
    # Position in the reports' claims table and objectives section (lower first, ties by name): a
    # baseline before the method whose paper compares against it. New methods come after the built-ins.
    report_rank: ClassVar[int] = 100

    def __init__(self, adapter: ModelAdapter, preset: PresetConfig, config: TrainerConfig, seed: int,
                 workdir: Path | None = None):
        problems = config.preset_problems(preset, f"methods.{self.name}")
        if problems:
            raise ConfigError("; ".join(problems))
        self.adapter, self.preset, self.config, self.seed = adapter, preset, config, seed
        self.workdir = workdir  # the run's cache directory (pair sets, ...); None: keep nothing on disk
        adapter.add_lora(config.lora_rank, config.lora_alpha)
        self.params = adapter.trainable_parameters()
        self.generator = torch.Generator().manual_seed(seed)
        self.sampler = config.sampler or preset.sampler  # what this method's generator samples with
        # Data parallel: every rank draws the global batch from the same generator and keeps its rows
        # (self.dist.rows); gradients and logged scalars are averaged over ranks (harness.distributed),
        # by the optimizer step (trainers.optimizer: torch AdamW, or AdamW under DeepSpeed ZeRO-2).
        self.dist = current()
        self.optimizer = make_optimizer([{"params": self.params, "lr": config.lr}], config.grad_clip, self.dist,
                                        config.optimizer_settings(), deepspeed_config())
        self.compute = {"passes": 0, "samples": 0}  # cumulative, over every step trained (module docstring)

    @abstractmethod
    def compute_loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The scalar loss of step ``step`` and scalars to log. Draws its data and noise from
        ``self.generator`` only, so a probe can replay it after saving the generator state."""

    def coming_loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """``compute_loss(step)`` replayed for a probe: the loss of the coming step on the batch the step
        will draw, after which the trainer is as before (its random generator and ``replay_state``
        restored), so the step itself draws and trains exactly as without the replay."""
        rng = self.generator.get_state()
        saved = {k: copy.deepcopy(getattr(self, k)) for k in self.replay_state if hasattr(self, k)}
        try:
            return self.compute_loss(step)
        finally:
            self.generator.set_state(rng)
            for k, v in saved.items():
                setattr(self, k, v)

    def train_step(self, step: int) -> dict[str, float]:
        """One optimization step; returns scalars to log (including 'loss' and 'grad_norm')."""
        loss, logs = self.compute_loss(step)
        grad_norm = self.optimize(loss)
        return {**self.dist.average_logs({"loss": loss.item(), **logs}), "grad_norm": grad_norm}

    def counted_step(self, step: int) -> dict[str, float]:
        """``train_step(step)`` with its compute counted: its logs plus the cumulative ``compute/passes``
        and ``compute/samples`` (module docstring). The runner trains through this."""
        with counting_passes() as count:
            logs = self.train_step(step)
        passes = float(count.passes)
        if self.dist.enabled:  # each rank counted its own rows; samples are global counts on every rank
            passes = self.dist.average_logs({"passes": passes})["passes"] * self.dist.world_size
        self.compute["passes"] += round(passes)
        self.compute["samples"] += count.samples
        return {**logs, "compute/passes": float(self.compute["passes"]),
                "compute/samples": float(self.compute["samples"])}

    def saw(self, n: int) -> None:
        """``n`` more videos entered training in this step (``compute/samples``; a no-op in a replay)."""
        count_samples(n)

    def checkpoint_steps(self) -> set[int]:
        """Steps that must be checkpointed besides the runner's schedule (every ``eval_every`` and the
        last; e.g. stage ends)."""
        return set()

    def eval_sampler(self, step: int) -> SamplerConfig:
        """The sampler the checkpoint at ``step`` is evaluated with, and recorded with (the runner);
        a trainer whose model changes how it must be sampled (e.g. after guidance distillation)
        overrides it."""
        return self.sampler

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def optimize(self, loss: torch.Tensor) -> float:
        """One step on ``loss``; returns the gradient norm before clipping."""
        self.optimizer.zero_grad()
        self.optimizer.backward(loss)
        return self.optimizer.step()

    def optimize_terms(self, terms: dict[str, torch.Tensor]) -> dict[str, float]:
        """One step on the sum of ``terms``, back-propagated one term at a time so that each
        term's own gradient norm is known (before clipping): {"grad_norm", "grad_norm/<term>"}.
        A hybrid objective's balance (e.g. SHIFT's SFT anchor vs its advantage term) shows in
        the ratio of these norms; the step itself equals that of ``optimize(sum(terms))``."""
        self.optimizer.zero_grad()
        norms: dict[str, float] = {}
        for i, (name, term) in enumerate(terms.items()):
            norms[f"grad_norm/{name}"] = self.optimizer.backward(term, last=i == len(terms) - 1, measure=True)
        norms["grad_norm"] = self.optimizer.step()
        return norms

    # -- resumable state: everything that changes the next step's numbers --------------
    def state_dict(self) -> dict[str, Any]:
        return {"lora": self.adapter.lora_state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "compute": dict(self.compute)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.adapter.load_lora_state_dict(state["lora"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        if "compute" not in state:
            raise ValueError("this checkpoint predates compute counting (no `compute` in its trainer state), so its "
                             "run's compute/passes cannot continue; start the run afresh in a new --out directory")
        self.compute = {k: int(v) for k, v in state["compute"].items()}
