"""`harness run`: the one outer loop every method goes through.

    for each method, for each seed:
        step 0 is the base model (evaluated once per run, stored as method 'base')
        train; every `eval_every` steps and at the end: checkpoint, then evaluate
        (the schedule, `Schedule`, is the runner's: a trainer owns its loss, data and state)

The base model and each method's last checkpoint are evaluated on the final eval set
(``eval.final_num_videos``), the other checkpoints on its first ``eval.num_videos`` videos.

The run directory's layout, identity, lock and checkpoint files belong to ``harness.rundir``.
A checkpoint carries the training logs since the previous one, and the results of a checkpoint
are stored only after it is complete, in an order a crash anywhere can resume from: a resumed run
stores the logs from the checkpoint files, the probe aggregates from the logs, and evaluates what
is missing, so its store equals an uninterrupted run's row for row (tests/test_faults.py).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from harness.config import PresetConfig
from harness.data.preferences import PairsError
from harness.data.source import frame_rate
from harness.distributed import DistributedConfigError, NoStore, check_divisible, current
from harness.evaluate import Evaluator, checkpoint_weights, is_final
from harness.models.base import ModelAdapter
from harness.models.registry import check_adapter_dir
from harness.models.starting import BaseCheckpointError, base_adapter, base_weights
from harness.probing import ProbeRunner, probe_set_problems
from harness.provenance import provenance
from harness.rundir import SAMPLES, RunDir, RunDirError, safe_part
from harness.store import ResultStore
from harness.tracking import RunTrackers, Session, TrackerError
from harness.workers import Pool, WorkerError, run_units
from metrics.judges import evaluation_overlaps
from trainers.base import LABEL_KEY, SCHEDULE_KEYS, TrainerConfig, trainer_settings
from trainers.registry import trainer_for

log = logging.getLogger(__name__)


class RunError(RuntimeError):
    """A run cannot start or continue; the message says why and what to do."""


@dataclass
class RunOptions:
    methods: list[str]
    seeds: list[int] = field(default_factory=lambda: [0])
    steps: int | None = None
    eval_every: int | None = None
    metrics: list[str] | None = None
    resume: bool = False
    show_progress: bool = True
    # Actions on an existing run, not settings of it (left out of the manifest's options):
    extend_seeds: bool = False  # add --seeds to the run's recorded seeds
    extend_methods: bool = False  # add --methods to the run's recorded methods
    adopt: bool = False  # continue a run directory that was copied or moved here
    jobs: int | None = None  # method-seed units trained at once (default: $HARNESS_JOBS, else the preset's jobs)

    ACTIONS = ("resume", "show_progress", "extend_seeds", "extend_methods", "adopt", "jobs")

    def __post_init__(self) -> None:
        bad = [s for s in self.seeds if not isinstance(s, int) or isinstance(s, bool) or s < 0]
        if not self.seeds or bad or len(set(self.seeds)) != len(self.seeds):
            raise RunError(f"seeds {self.seeds}: give one or more distinct integers >= 0 (e.g. --seeds 0,1,2)")
        if self.jobs is not None and (not isinstance(self.jobs, int) or self.jobs < 1):
            raise RunError(f"jobs {self.jobs!r}: give an integer >= 1 (--jobs 1 trains the methods one after another)")
        try:
            for m in self.methods:
                safe_part("method", m)
        except RunDirError as exc:
            raise RunError(str(exc)) from exc

    def settings(self) -> dict:
        """The options as the manifest records them (what the run is, not how it was started)."""
        return {k: v for k, v in asdict(self).items() if k not in self.ACTIONS or k == "resume"}


class Schedule(BaseModel):
    """The outer loop of one method: the runner's, not the trainer's. A method's preset section sets it
    (``steps``, ``eval_every``; trainers/base.py ``SCHEDULE_KEYS``), ``--steps`` / ``--eval-every`` override it,
    and a trainer whose settings define its length (APO's stages) gives ``steps``."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(300, ge=1, description="training steps")
    eval_every: int = Field(100, ge=1, description="save and evaluate a checkpoint every this many steps (and at "
                                                   "the last step and the trainer's own checkpoint steps)")


def method_plan(preset: PresetConfig, method: str, opts: RunOptions) -> tuple[TrainerConfig, Schedule]:
    """The method's trainer config and the runner's schedule for it, from its preset section (a named
    variant's merged over its trainer's) and the run's options."""
    raw = dict(preset.methods.get(method, {}))
    parent = raw.get("trainer")
    if parent and parent != method:  # a named variant starts from its trainer's own section
        raw = {**preset.methods.get(parent, {}), **raw}
    try:
        cls = trainer_for(method, raw)
    except KeyError as exc:
        raise RunError(f"method {method!r}: {exc.args[0]}") from exc
    schedule = {k: raw[k] for k in SCHEDULE_KEYS if k in raw}
    if opts.steps is not None:
        schedule["steps"] = opts.steps
    if opts.eval_every is not None:
        schedule["eval_every"] = opts.eval_every
    try:
        cfg = cls.config_class(**trainer_settings(raw))
        if cfg.planned_steps() is not None:  # the trainer's settings define its length
            if "steps" in schedule:
                cfg = cfg.fit_steps(schedule["steps"])
            schedule["steps"] = cfg.planned_steps()
        return cfg, Schedule(**schedule)
    except Exception as exc:  # pydantic ValidationError: name the method section
        raise RunError(f"invalid settings for method {method!r} (preset section methods.{method}): {exc}") from exc


def method_config(preset: PresetConfig, method: str, opts: RunOptions) -> TrainerConfig:
    """The method's trainer config alone (``method_plan`` without the schedule)."""
    return method_plan(preset, method, opts)[0]


def method_record(preset: PresetConfig, method: str, cfg: TrainerConfig, schedule: Schedule) -> dict:
    """What the run records of a method, in one mapping as a preset section writes it: the trainer's
    settings, the schedule and the method's own label (reports name the method by it)."""
    label = preset.methods.get(method, {}).get(LABEL_KEY)
    return {**cfg.model_dump(), **schedule.model_dump(), **({LABEL_KEY: str(label)} if label else {})}


def check_layout(configs: dict[str, TrainerConfig], world_size: int) -> None:
    """Refuse, before any work, a batch that does not split across the ranks (with the arithmetic)."""
    problems = []
    for method, cfg in configs.items():
        for what, count, group in cfg.batch_layout():
            try:
                check_divisible(f"methods.{method}.{what}", count, world_size, group)
            except DistributedConfigError as exc:
                problems.append(str(exc))
    if problems:
        raise RunError("the batch layout does not fit the world size:\n  " + "\n  ".join(problems))


def check_methods(configs: dict[str, TrainerConfig], preset: PresetConfig) -> None:
    """Refuse, before any work, a method whose settings cannot work on this preset (each trainer's
    ``preset_problems``), so that a late method does not fail after the earlier ones trained."""
    from trainers.preference import PairsConfig, pairs_problems

    problems = [p for method, cfg in configs.items() for p in cfg.preset_problems(preset, f"methods.{method}")]
    if preset.probes.names:  # probes pair real clips with samples on footage, else rollouts judged by the oracle
        probe_pairs = PairsConfig(source="rollouts" if preset.data is None else "footage", split=preset.probes.split)
        problems += pairs_problems(probe_pairs, preset, "probes") + probe_set_problems(configs, preset)
    if problems:
        raise RunError(f"the methods' settings do not fit preset {preset.name!r}:\n  " + "\n  ".join(problems))


def _prepare_out(out: Path, resume: bool) -> bool:
    """Check the run directory can be written (rank 0); True if it already holds a run."""
    if not current().is_main:
        return False
    exists = RunDir(out).results.exists()
    if exists and not resume:
        log.info("%s already holds a run: continuing it (only what is missing is computed)", out)
    if resume and not exists:
        raise RunError(f"--resume given but {out} holds no run (no results.sqlite)")
    probe = out
    while not probe.exists():  # the nearest existing parent must be writable: create nothing yet
        probe = probe.parent
    import os

    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise RunError(f"cannot write to {out} ({probe} is not a writable directory); choose another --out")
    return exists


def run(preset: PresetConfig, out: Path, opts: RunOptions) -> Path:
    """Check everything that can be checked from the settings, then (and only then) create the run
    directory, take its lock and run. A start that fails leaves no directory behind."""
    _prepare_out(out, opts.resume)
    if opts.extend_methods:  # the run's recorded methods first, then the new ones (trained after them)
        recorded = current().broadcast(_recorded_methods(out) if current().is_main else None)
        opts = replace(opts, methods=[*recorded, *(m for m in opts.methods if m not in recorded)])
    if preset.threads:
        torch.set_num_threads(preset.threads)
    opts = replace(opts, jobs=run_jobs(preset, opts))  # a bad $HARNESS_JOBS stops the run here
    plans = {m: method_plan(preset, m, opts) for m in opts.methods}
    configs = {m: cfg for m, (cfg, _) in plans.items()}
    schedules = {m: sched for m, (_, sched) in plans.items()}
    check_layout(configs, current().world_size)
    check_methods(configs, preset)
    try:
        trackers = RunTrackers(preset.log_with if current().is_main else [], RunDir(out), frame_rate(preset))
    except TrackerError as exc:
        raise RunError(str(exc)) from exc
    if preset.adapter is not None:  # the model directory before the data, the metrics and any training
        check_adapter_dir(preset.adapter)
    evaluator = Evaluator(preset, opts.metrics)
    run_config = {"preset": preset.record(),
                  "methods": {m: method_record(preset, m, c, schedules[m]) for m, c in configs.items()},
                  "metrics": [m.identity for m in evaluator.metrics],
                  "training_signals": {m: c.training_signals() for m, c in configs.items()}}
    for line in evaluation_overlaps(run_config["training_signals"], run_config["metrics"]):
        log.warning(line)
    d = current()
    rundir = RunDir(out)
    if d.is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(f"cannot write to {out} ({exc.strerror}); choose another --out") from exc
    d.barrier()  # rank 0 prepared the directory
    try:
        # One writer per directory (rank 0 holds the lock for the group); only rank 0 opens the results
        # database; the other ranks sample and score their shards.
        with (rundir.lock() if d.is_main else _nothing()), \
                (ResultStore(rundir.results) if d.is_main else NoStore()) as store, trackers:
            _run(preset, rundir, opts, plans, evaluator, run_config, store, trackers)
    except RunDirError as exc:
        raise RunError(str(exc)) from exc
    return out


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _identity(rundir: RunDir, opts: RunOptions, store: ResultStore) -> tuple[str, list[int], dict | None]:
    """(run id, seeds, manifest) on rank 0: the run id recorded in the manifest (a copied or moved run is
    continued only with --adopt), and the seeds, which another --seeds changes only with --extend-seeds."""
    run_id, manifest = rundir.identity(opts.adopt)
    seeds = list(opts.seeds)
    recorded = store.seeds(run_id)
    if recorded is not None and sorted(recorded) != sorted(seeds):
        if not opts.extend_seeds:
            raise RunError(f"{rundir.root} holds a run of seeds {sorted(recorded)}, not {seeds}; to add seeds to it "
                           "pass --extend-seeds (they are recorded with the run), or choose another --out")
        seeds = sorted(set(recorded) | set(seeds))
    return run_id, seeds, manifest


def _run(preset: PresetConfig, rundir: RunDir, opts: RunOptions, plans: dict[str, tuple[TrainerConfig, Schedule]],
         evaluator: Evaluator, run_config: dict, store: ResultStore, trackers: RunTrackers) -> None:
    d = current()
    run_id, seeds, manifest = d.broadcast(_identity(rundir, opts, store) if d.is_main else None)
    prov = provenance()
    try:
        store.add_run(run_id, preset.name, run_config, seeds, prov)
    except ValueError as exc:  # same directory, different settings: never mix numbers
        recorded = store.run_config(run_id)
        added = _methods_added(recorded, run_config)
        if added is None:
            raise RunError(f"{rundir.root} holds a run with other settings ({exc}); to continue it, give the "
                           "recorded values with --set (a metric's backend can instead be changed on the recorded "
                           "run: `harness eval --run DIR --metrics M --set eval.backends.M.KEY=VALUE --replace`), "
                           "or choose another --out") from exc
        if not opts.extend_methods:
            raise RunError(f"{rundir.root} holds a run of methods {list(recorded['methods'])}; to add "
                           f"{', '.join(added)} to it pass --extend-methods (recorded with the run), or choose "
                           "another --out") from exc
        store.set_config(run_id, run_config)
    # The session records the jobs it trains with: training seconds measured beside another job are not costs.
    opts = RunOptions(**{**asdict(opts), "seeds": seeds,
                         "jobs": min(opts.jobs or 1, len(plans) * len(seeds))})
    store.begin_session(run_id, {"command": "run", **{k: v for k, v in asdict(opts).items() if k != "show_progress"}},
                        prov)
    if d.is_main and (manifest is None or manifest["options"].get("seeds") != seeds
                      or manifest["options"].get("methods") != opts.methods):
        store.set_seeds(run_id, seeds)
        rundir.write_manifest({**(manifest or {"run_id": run_id, "directory": str(rundir.root.resolve()),
                                               **run_config, **prov}), "options": opts.settings()})
    base_dir = rundir.checkpoint("base", 0, 0)
    base_dir.mkdir(parents=True, exist_ok=True)
    base_ckpt = store.checkpoint(run_id, "base", 0, 0, rundir.relative(base_dir), preset.sampler.model_dump())
    log.info("evaluating the base model (step 0)")
    evaluator.evaluate(store, base_ckpt, lambda: _eval_mode(base_adapter(preset)), base_dir / SAMPLES,
                       opts.show_progress, weights=base_weights(preset), final=True)
    trackers.open(run_id, "base", None).checkpoint(store, base_ckpt, 0, base_dir / SAMPLES)
    units = [(method, seed) for method in plans for seed in seeds]
    jobs = opts.jobs or 1
    if jobs > 1:
        log.info("training %d method-seed units in %d worker processes (jobs %d; progress is logged, not drawn)",
                 len(units), jobs, jobs)
        payload = _WorkerPayload(preset, rundir.root, opts, plans, run_id, store.session_id, torch.get_num_threads())
        try:
            run_units(Pool(_worker_state, _worker_unit, payload), units, jobs)
        except WorkerError as exc:
            if exc.kind == "RunError":
                raise RunError(str(exc)) from None
            where = f"{exc.unit[0]} seed {exc.unit[1]}: " if exc.unit else ""
            raise RunError(f"{where}{exc.kind}: {exc} (its traceback is above); what finished is stored, continue "
                           "with --resume") from None
        return
    for method, seed in units:
        cfg, schedule = plans[method]
        _train_one(preset, rundir, store, run_id, evaluator, method, cfg, schedule, seed, opts.show_progress,
                   lambda first, method=method, seed=seed: trackers.open(run_id, method, seed, first))


JOBS_ENV = "HARNESS_JOBS"


def run_jobs(preset: PresetConfig, opts: RunOptions) -> int:
    """Method-seed units trained at once: ``--jobs``, else ``$HARNESS_JOBS``, else the preset's ``jobs``; one
    under a process group (its ranks share each unit's work instead)."""
    import os

    jobs = opts.jobs
    if jobs is None and os.environ.get(JOBS_ENV):
        try:
            jobs = int(os.environ[JOBS_ENV])
        except ValueError:
            jobs = 0
        if jobs < 1:
            raise RunError(f"{JOBS_ENV}={os.environ[JOBS_ENV]!r}: give an integer >= 1, or unset it")
    jobs = jobs or preset.jobs
    if jobs > 1 and current().world_size > 1:
        log.info("jobs %d: under %d ranks the methods train one after another", jobs, current().world_size)
        return 1
    return jobs


@dataclass(frozen=True)
class _WorkerPayload:
    preset: PresetConfig
    root: Path
    opts: RunOptions
    plans: dict[str, tuple[TrainerConfig, Schedule]]
    run_id: str
    session_id: int | None
    threads: int  # the parent's: every op splits its work as in a sequential run, so the numbers are the same


@dataclass
class _Worker:
    payload: _WorkerPayload
    rundir: RunDir
    store: ResultStore
    evaluator: Evaluator
    trackers: RunTrackers


@contextmanager
def _worker_state(p: _WorkerPayload) -> Iterator[_Worker]:
    """A worker's own connection to the run's database (writing under the parent's session), evaluator and
    trackers (harness/workers.py)."""
    torch.set_num_threads(p.threads)
    rundir = RunDir(p.root)
    with ResultStore(rundir.results) as store, \
            RunTrackers(p.preset.log_with, rundir, frame_rate(p.preset)) as trackers:
        store.session_id = p.session_id
        yield _Worker(p, rundir, store, Evaluator(p.preset, p.opts.metrics), trackers)


def _worker_unit(w: _Worker, unit: tuple[str, int]) -> None:
    method, seed = unit
    cfg, schedule = w.payload.plans[method]
    _train_one(w.payload.preset, w.rundir, w.store, w.payload.run_id, w.evaluator, method, cfg, schedule, seed,
               False, lambda first: w.trackers.open(w.payload.run_id, method, seed, first))


def _recorded_methods(out: Path) -> list[str]:
    """The methods of the run in ``out`` as its manifest records them (none for a new run)."""
    try:
        manifest = RunDir(out).read_manifest() if RunDir(out).results.exists() else None
    except RunDirError as exc:
        raise RunError(str(exc)) from exc
    return list((manifest or {}).get("options", {}).get("methods", []))


_PER_METHOD = ("methods", "training_signals")  # the run config's sections keyed by method


def _methods_added(recorded: dict | None, config: dict) -> list[str] | None:
    """The methods ``config`` adds to a run recorded with ``recorded``, when adding them is its only
    difference (every other setting, and every recorded method's, the same); else None."""
    config = json.loads(json.dumps(config, default=str))  # as the store compares it
    if recorded is None or any(recorded.get(k) != config.get(k) for k in recorded.keys() | config.keys()
                               if k not in _PER_METHOD):
        return None
    for key in _PER_METHOD:
        old, new = recorded.get(key, {}), config.get(key, {})
        if any(new.get(m, ...) != v for m, v in old.items()):
            return None
    added = [m for m in config["methods"] if m not in recorded["methods"]]
    return added or None


def _eval_mode(adapter: ModelAdapter) -> ModelAdapter:
    adapter.model.eval()
    return adapter


def _recover(rundir: RunDir, store: ResultStore, run_id: str, method: str, seed: int, steps: list[int],
             sampler: Callable[[int], dict], probes: ProbeRunner) -> None:
    """After an interruption: store the training logs that complete checkpoints carry (a crash after a
    checkpoint was written but before its logs reached the store), then each checkpoint's probe
    aggregates from the logs up to its step. Both are upserts: storing twice changes nothing."""
    d = current()
    for step in steps:
        store.log_train(run_id, method, seed, rundir.checkpoint_logs(rundir.checkpoint(method, seed, step)))
    if not probes:
        return
    logs = d.broadcast(store.train_logs(run_id))
    logs = logs.query("method == @method and seed == @seed") if not logs.empty else logs
    for step in steps:
        ckpt = store.checkpoint(run_id, method, seed, step, rundir.relative(rundir.checkpoint(method, seed, step)),
                                sampler(step))
        probes.reset()
        probes.restore(logs, step)
        probes.store_checkpoint(store, ckpt)
    probes.reset()
    probes.restore(logs, steps[-1])


def _train_one(preset: PresetConfig, rundir: RunDir, store: ResultStore, run_id: str, evaluator: Evaluator,
               method: str, cfg: TrainerConfig, schedule: Schedule, seed: int, show_progress: bool,
               open_tracker: Callable[[int], Session]) -> None:
    log.info("%s seed %d: preparing the trainer", method, seed)
    torch.manual_seed(seed)
    try:
        adapter = base_adapter(preset, cfg.base_checkpoint)
    except BaseCheckpointError as exc:
        raise RunError(str(exc)) from exc
    try:
        # One cache for the run: rank 0 decides whether a file is there and is its only writer (the
        # ranks build its content together, trainers/preference.py:load_pairs).
        trainer = trainer_for(method, {"trainer": cfg.trainer})(adapter, preset, cfg, seed, workdir=rundir.cache)
        probes = ProbeRunner(preset, trainer, rundir.cache)
    except (PairsError, ValueError) as exc:  # unusable pairs, replay/offline sources, rewards
        raise RunError(f"{method} seed {seed}: {exc}") from exc
    d = current()

    def sampler(step: int) -> dict:  # each checkpoint is evaluated, and recorded, with the trainer's sampler for it
        return trainer.eval_sampler(step).model_dump()

    def record(path: Path, step: int) -> int:
        return store.checkpoint(run_id, method, seed, step, rundir.relative(path), sampler(step))

    if cfg.base_checkpoint or cfg.sampler:  # its own starting model or sampler: its own step 0
        path = rundir.checkpoint(method, seed, 0)
        path.mkdir(parents=True, exist_ok=True)
        adapter.model.eval()
        log.info("%s seed %d: evaluating step 0 (its own base model or sampler)", method, seed)
        evaluator.evaluate(store, record(path, 0), adapter, path / SAMPLES, show_progress, trainer.eval_sampler(0),
                           weights=base_weights(preset, cfg.base_checkpoint), final=True)
    done_steps = d.broadcast(rundir.complete_steps(method, seed, schedule.steps))  # rank 0's view of the disk
    start = done_steps[-1] if done_steps else 0

    def load(step: int) -> None:
        earlier = [s for s in done_steps if s < step]
        rundir.load_checkpoint(trainer, rundir.checkpoint(method, seed, step),
                               rundir.checkpoint(method, seed, earlier[-1]) if earlier else None)

    if start:
        load(start)
        log.info("%s seed %d: resuming from step %d", method, seed, start)
        _recover(rundir, store, run_id, method, seed, done_steps, sampler, probes)
    # Evaluate checkpoints that exist but were not fully evaluated (an interrupted evaluation).
    for step in done_steps:
        path = rundir.checkpoint(method, seed, step)

        def at(step: int = step) -> ModelAdapter:  # the checkpoint's weights, loaded only if needed
            load(step)
            return _eval_mode(trainer.adapter)

        evaluator.evaluate(store, record(path, step), at, path / SAMPLES, show_progress, trainer.eval_sampler(step),
                           weights=checkpoint_weights(preset, path, cfg.base_checkpoint),
                           final=is_final(step, schedule.steps))
    if start:  # the loaded state is the latest checkpoint again
        load(start)
    track = open_tracker(start + 1 if start else 0)  # what it logs from here on replaces an earlier session's
    logs: list[tuple[int, str, float]] = []
    extra_checkpoints = trainer.checkpoint_steps()
    if start < schedule.steps:
        log.info("%s seed %d: training steps %d-%d", method, seed, start + 1,
                 _segment_end(start, schedule, extra_checkpoints))
    else:
        log.info("%s seed %d: training already complete (step %d)", method, seed, start)
    if probes and start == 0:
        logs.extend(track.log(probes.measure(trainer, 0)))
    last_good = rundir.checkpoint(method, seed, start) if start else None
    # "seconds": time spent in training steps only (no probes, checkpoints or evaluation), carried
    # over a resume, so that methods' training costs compare (SHIFT's time relative to SFT).
    train_seconds = d.broadcast(_logged_seconds(store, run_id, method, seed, start) if d.is_main else None)
    bar = tqdm(range(start, schedule.steps), desc=f"train {method} seed {seed}", disable=not show_progress,
               initial=start, total=schedule.steps)
    for step in bar:
        adapter.model.train()
        try:
            t0 = time.perf_counter()
            values = trainer.counted_step(step)  # its logs plus compute/passes, compute/samples
            train_seconds += time.perf_counter() - t0
        except ValueError as exc:  # a data source ran dry, a reward cannot score, ...: say where, keep the rest
            raise RunError(f"{method} seed {seed} stopped at step {step}: {exc}; last good checkpoint: "
                           f"{last_good or 'the base model (step 0)'} (resume with --resume once fixed)") from exc
        if not all(math.isfinite(v) for v in values.values()):
            bad = {k: v for k, v in values.items() if not math.isfinite(v)}
            raise RunError(
                f"{method} seed {seed}: non-finite {bad} at step {step}; last good checkpoint: "
                f"{last_good or 'the base model (step 0)'}; lower the learning rate "
                f"(methods.{method}.lr) and resume with --resume")
        logs.extend(track.log((step + 1, k, float(v)) for k, v in values.items()))
        bar.set_postfix(loss=f"{values['loss']:.4f}")
        done = step + 1
        at_checkpoint = _is_checkpoint(done, schedule, extra_checkpoints)
        # Probes follow their own schedule (step 0, every probes.every steps, the last step), not the
        # checkpoints': a probe series means the same whatever eval_every is, and a dense curve of cheap
        # intermediate evaluations does not pay a probe at each point.
        if probes and (probes.due(done) or done == schedule.steps):
            logs.extend(track.log(probes.measure(trainer, done)))
        if at_checkpoint:
            # The order a crash anywhere can resume from: the checkpoint with its logs (complete or
            # absent), then the logs, the checkpoint's row and its probe aggregates, then evaluation.
            path = rundir.checkpoint(method, seed, done)
            logs.extend(track.log([(done, "seconds", train_seconds)]))
            state = trainer.state_dict()  # on every rank: under ZeRO it gathers the partitioned optimizer state
            if d.is_main:  # every rank holds the same state; rank 0 writes it
                rundir.save_checkpoint(state, path, done, logs)
            d.barrier()
            done_steps.append(done)
            store.log_train(run_id, method, seed, logs)
            logs, last_good = [], path
            ckpt = record(path, done)
            probes.store_checkpoint(store, ckpt)
            adapter.model.eval()
            log.info("%s seed %d: evaluating step %d", method, seed, done)
            evaluator.evaluate(store, ckpt, adapter, path / SAMPLES, show_progress, trainer.eval_sampler(done),
                               weights=checkpoint_weights(preset, path, cfg.base_checkpoint) if d.is_main else "",
                               final=is_final(done, schedule.steps))
            track.checkpoint(store, ckpt, done, path / SAMPLES)
            if done < schedule.steps:  # each training segment has its own line (benchmarks/bench_budget.py times them)
                log.info("%s seed %d: training steps %d-%d", method, seed, done + 1,
                         _segment_end(done, schedule, extra_checkpoints))
    log.info("%s seed %d: done", method, seed)  # the end of its last phase (benchmarks/bench_budget.py)


def _is_checkpoint(step: int, schedule: Schedule, extra_checkpoints: Collection[int]) -> bool:
    return step % schedule.eval_every == 0 or step == schedule.steps or step in extra_checkpoints


def _segment_end(start: int, schedule: Schedule, extra_checkpoints: Collection[int]) -> int:
    """The first checkpoint after ``start``: where the training segment that begins there ends."""
    return next(s for s in range(start + 1, schedule.steps + 1) if _is_checkpoint(s, schedule, extra_checkpoints))


def _logged_seconds(store: ResultStore, run_id: str, method: str, seed: int, step: int) -> float:
    if not step:
        return 0.0
    logs = store.train_logs(run_id)
    rows = logs[(logs["method"] == method) & (logs["seed"] == seed) & (logs["key"] == "seconds")
                & (logs["step"] <= step)] if not logs.empty else logs
    return float(rows.sort_values("step")["value"].iloc[-1]) if not rows.empty else 0.0
