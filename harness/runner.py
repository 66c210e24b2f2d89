"""`harness run`: the one outer loop every method goes through.

    for each method, for each seed:
        step 0 is the base model (evaluated once per run, stored as method 'base')
        train; every `eval_every` steps and at the end: checkpoint, then evaluate

Run directory layout::

    run.json                      options, preset and provenance
    results.sqlite                the ResultStore
    checkpoints/base/step000000/  samples.npz
    checkpoints/<method>/seed<k>/step<NNNNNN>/
        lora.safetensors  trainer_state.pt  samples.npz  DONE

A checkpoint directory is written under a temporary name and renamed when complete
(DONE marks it); `--resume` continues each (method, seed) from its last complete
checkpoint with the trainer's full state (LoRA, optimiser, random generator), so a
resumed run computes the same numbers, and evaluates only what is missing.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from harness.config import PresetConfig, package_path
from harness.data.preferences import PairsError
from harness.distributed import DistributedConfigError, NoStore, check_divisible, current
from harness.evaluate import Evaluator
from harness.models.base import ModelAdapter
from harness.models.registry import check_adapter_dir, load_adapter
from harness.models.tiny_wan import TinyWanAdapter
from harness.probing import ProbeRunner
from harness.provenance import provenance
from harness.store import ResultStore
from trainers.base import Trainer, TrainerConfig
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


def method_config(preset: PresetConfig, method: str, opts: RunOptions) -> TrainerConfig:
    raw = dict(preset.methods.get(method, {}))
    parent = raw.get("trainer")
    if parent and parent != method:  # a named variant starts from its trainer's own section
        raw = {**preset.methods.get(parent, {}), **raw}
    try:
        cls = trainer_for(method, raw)
    except KeyError as exc:
        raise RunError(f"method {method!r}: {exc.args[0]}") from exc
    if opts.steps is not None:
        raw["steps"] = opts.steps
    if opts.eval_every is not None:
        raw["eval_every"] = opts.eval_every
    try:
        return cls.config_class(**raw)
    except Exception as exc:  # pydantic ValidationError: name the method section
        raise RunError(f"invalid settings for method {method!r} (preset section methods.{method}): {exc}") from exc


def base_adapter(preset: PresetConfig, checkpoint: str | None = None) -> ModelAdapter:
    """The model every method starts from: the preset's real family, else the tiny model (or a
    method's own tiny starting checkpoint, e.g. a few-step generator)."""
    if preset.adapter is not None:
        if checkpoint:
            raise RunError(f"methods.*.base_checkpoint={checkpoint!r} is for the tiny model; preset "
                           f"{preset.name!r} loads {preset.adapter.family} from adapter.path")
        return load_adapter(preset.adapter)
    return TinyWanAdapter.load(package_path(checkpoint) if checkpoint else preset.base_checkpoint_path())


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
        problems += pairs_problems(probe_pairs, preset, "probes")
    if problems:
        raise RunError(f"the methods' settings do not fit preset {preset.name!r}:\n  " + "\n  ".join(problems))


def _checkpoint_dir(out: Path, method: str, seed: int, step: int) -> Path:
    if method == "base":
        return out / "checkpoints" / "base" / f"step{step:06d}"
    return out / "checkpoints" / method / f"seed{seed}" / f"step{step:06d}"


def _complete_steps(out: Path, method: str, seed: int, max_step: int) -> list[int]:
    root = out / "checkpoints" / method / f"seed{seed}"
    steps = [int(p.name[4:]) for p in root.glob("step*") if (p / "DONE").exists() and p.name[4:].isdigit()]
    return current().broadcast(sorted(s for s in steps if s <= max_step))  # rank 0's view of the disk


def _latest_complete(out: Path, method: str, seed: int, max_step: int) -> int | None:
    steps = _complete_steps(out, method, seed, max_step)
    return steps[-1] if steps else None


def _save_checkpoint(trainer: Trainer, path: Path, step: int, logs: list[dict]) -> None:
    d = current()
    state = trainer.state_dict()  # on every rank: under ZeRO it gathers the partitioned optimiser state
    if not d.is_main:  # every rank holds the same state; rank 0 writes it
        d.barrier()
        return
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.pop("lora").items()}, tmp / "lora.safetensors")
    torch.save({"step": step, **state}, tmp / "trainer_state.pt")
    (tmp / "DONE").write_text(json.dumps({"step": step, "logs_since_last": len(logs)}))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    d.barrier()


def _load_checkpoint(trainer: Trainer, path: Path) -> None:
    from safetensors.torch import load_file

    state = torch.load(path / "trainer_state.pt", weights_only=True)
    state["lora"] = load_file(path / "lora.safetensors")
    trainer.load_state_dict(state)


def _prepare_out(out: Path, resume: bool) -> None:
    if not current().is_main:
        return
    exists = (out / "results.sqlite").exists()
    if exists and not resume:
        log.info("%s already holds a run: continuing it (only what is missing is computed)", out)
    if resume and not exists:
        raise RunError(f"--resume given but {out} holds no run (no results.sqlite)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write-test").write_text("")
        (out / ".write-test").unlink()
    except OSError as exc:
        raise RunError(f"cannot write to {out} ({exc.strerror}); choose another --out") from exc


def run(preset: PresetConfig, out: Path, opts: RunOptions) -> Path:
    _prepare_out(out, opts.resume)
    if preset.threads:
        torch.set_num_threads(preset.threads)
    configs = {m: method_config(preset, m, opts) for m in opts.methods}
    check_layout(configs, current().world_size)
    check_methods(configs, preset)
    if preset.adapter is not None:  # the model directory before the data, the metrics and any training
        check_adapter_dir(preset.adapter)
    evaluator = Evaluator(preset, opts.metrics)
    run_config = {"preset": preset.record(),
                  "methods": {m: c.model_dump() for m, c in configs.items()},
                  "metrics": [m.identity for m in evaluator.metrics]}
    d = current()
    d.barrier()  # rank 0 prepared the directory
    # Only rank 0 opens the results database; the other ranks sample and score their shards.
    with ResultStore(out / "results.sqlite") if d.is_main else NoStore() as store:
        _run(preset, out, opts, configs, evaluator, run_config, store)
    return out


def _run(preset: PresetConfig, out: Path, opts: RunOptions, configs: dict[str, TrainerConfig],
         evaluator: Evaluator, run_config: dict, store: ResultStore) -> None:
    run_id = out.resolve().name
    prov = provenance()
    try:
        store.add_run(run_id, preset.name, run_config, opts.seeds, prov)
    except ValueError as exc:  # same directory, different settings: never mix numbers
        raise RunError(f"{out} holds a run with other settings ({exc}); choose another --out") from exc
    if current().is_main and not (out / "run.json").exists():
        (out / "run.json").write_text(json.dumps({"run_id": run_id, "options": asdict(opts), **run_config,
                                                  **prov}, indent=2))
    sampler = preset.sampler.model_dump()
    base_dir = _checkpoint_dir(out, "base", 0, 0)
    base_dir.mkdir(parents=True, exist_ok=True)
    base_ckpt = store.checkpoint(run_id, "base", 0, 0, str(base_dir), sampler)
    base = base_adapter(preset)
    base.model.eval()
    log.info("evaluating the base model (step 0)")
    evaluator.evaluate(store, base_ckpt, base, base_dir / "samples.npz", opts.show_progress)
    for method, cfg in configs.items():
        for seed in opts.seeds:
            _train_one(preset, out, store, run_id, evaluator, method, cfg, seed, opts.show_progress)


def _train_one(preset: PresetConfig, out: Path, store: ResultStore, run_id: str, evaluator: Evaluator,
               method: str, cfg: TrainerConfig, seed: int, show_progress: bool) -> None:
    log.info("%s seed %d: preparing the trainer", method, seed)
    torch.manual_seed(seed)
    adapter = base_adapter(preset, cfg.base_checkpoint)
    try:
        # One cache for the run: rank 0 decides whether a file is there and is its only writer (the
        # ranks build its content together, trainers/preference.py:load_pairs).
        cache = out / "cache"
        trainer = trainer_for(method, {"trainer": cfg.trainer})(adapter, preset, cfg, seed, workdir=cache)
        probes = ProbeRunner(preset, trainer, cache)
    except (PairsError, ValueError) as exc:  # unusable pairs, replay/offline sources, rewards
        raise RunError(f"{method} seed {seed}: {exc}") from exc
    sampler_cfg = trainer.sampler
    sampler = sampler_cfg.model_dump()
    if cfg.base_checkpoint or cfg.sampler:  # its own starting model or sampler: its own step 0
        path = _checkpoint_dir(out, method, seed, 0)
        path.mkdir(parents=True, exist_ok=True)
        ckpt = store.checkpoint(run_id, method, seed, 0, str(path), sampler)
        adapter.model.eval()
        log.info("%s seed %d: evaluating step 0 (its own base model or sampler)", method, seed)
        evaluator.evaluate(store, ckpt, adapter, path / "samples.npz", show_progress, sampler_cfg)
    start = _latest_complete(out, method, seed, cfg.steps) or 0
    if start:
        _load_checkpoint(trainer, _checkpoint_dir(out, method, seed, start))
        log.info("%s seed %d: resuming from step %d", method, seed, start)
    # Evaluate checkpoints that exist but were not fully evaluated (an interrupted evaluation).
    for step in _complete_steps(out, method, seed, start):
        path = _checkpoint_dir(out, method, seed, step)
        ckpt = store.checkpoint(run_id, method, seed, step, str(path), sampler)
        evaluator.evaluate(store, ckpt, None if (path / "samples.npz").exists() else _at(trainer, path),
                           path / "samples.npz", show_progress, sampler_cfg)
    if start:  # the loaded state is the latest checkpoint again
        _load_checkpoint(trainer, _checkpoint_dir(out, method, seed, start))
        logs_so_far = current().broadcast(store.train_logs(run_id))
        probes.restore(logs_so_far.query("method == @method and seed == @seed"), start)
    logs: list[tuple[int, str, float]] = []
    extra_checkpoints = trainer.checkpoint_steps()
    log.info("%s seed %d: training steps %d-%d", method, seed, start + 1, cfg.steps)
    if probes and start == 0:
        logs.extend(probes.measure(trainer, 0))
    last_good = _checkpoint_dir(out, method, seed, start) if start else None
    # "seconds": time spent in training steps only (no probes, checkpoints or evaluation), carried
    # over a resume, so that methods' training costs compare (SHIFT's time relative to SFT).
    d = current()
    train_seconds = d.broadcast(_logged_seconds(store, run_id, method, seed, start) if d.is_main else None)
    bar = tqdm(range(start, cfg.steps), desc=f"train {method} seed {seed}", disable=not show_progress,
               initial=start, total=cfg.steps)
    for step in bar:
        adapter.model.train()
        try:
            t0 = time.perf_counter()
            values = trainer.train_step(step)
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
        logs.extend((step + 1, k, float(v)) for k, v in values.items())
        bar.set_postfix(loss=f"{values['loss']:.4f}")
        done = step + 1
        at_checkpoint = done % cfg.eval_every == 0 or done == cfg.steps or done in extra_checkpoints
        if probes and (at_checkpoint or probes.due(done)):
            logs.extend(probes.measure(trainer, done))
        if at_checkpoint:
            path = _checkpoint_dir(out, method, seed, done)
            logs.append((done, "seconds", train_seconds))
            _save_checkpoint(trainer, path, done, logs)
            store.log_train(run_id, method, seed, logs)
            logs, last_good = [], path
            ckpt = store.checkpoint(run_id, method, seed, done, str(path), sampler)
            probes.store_checkpoint(store, ckpt)
            adapter.model.eval()
            log.info("%s seed %d: evaluating step %d", method, seed, done)
            evaluator.evaluate(store, ckpt, adapter, path / "samples.npz", show_progress, sampler_cfg)


def _logged_seconds(store: ResultStore, run_id: str, method: str, seed: int, step: int) -> float:
    if not step:
        return 0.0
    logs = store.train_logs(run_id)
    rows = logs[(logs["method"] == method) & (logs["seed"] == seed) & (logs["key"] == "seconds")
                & (logs["step"] <= step)] if not logs.empty else logs
    return float(rows.sort_values("step")["value"].iloc[-1]) if not rows.empty else 0.0


def _at(trainer: Trainer, path: Path) -> ModelAdapter:
    """The trainer's adapter with the weights of checkpoint ``path``."""
    _load_checkpoint(trainer, path)
    trainer.adapter.model.eval()
    return trainer.adapter
