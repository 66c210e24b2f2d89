"""The Evaluator: sample the fixed eval set from a checkpoint, compute every metric, store it.

Videos are sampled once per checkpoint with fixed per-video seeds and kept as
``samples.npz`` next to the checkpoint, so a resumed evaluation never re-samples;
only metrics without a stored aggregate are computed. Per-video records are written
first and the aggregate (with a bootstrap 95 % CI over videos) last: the aggregate's
presence marks the metric done, so an interruption between the two only means the
metric is computed again (records are upserted, never duplicated).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from harness.config import PresetConfig
from harness.data.source import clip_batch, frame_rate
from harness.data.video_io import tensor_to_frames
from harness.data.world import WorldCondition
from harness.distributed import current
from harness.models.base import ModelAdapter
from harness.rundir import LORA, SAMPLES, RunDir
from harness.sampling import SamplerConfig, sample, sigma_schedule
from harness.scorers.backends.features import shared_features
from harness.scorers.backends.flow import shared_flows
from harness.store import ResultStore, bootstrap_ci
from harness.weights import WeightsError
from metrics.base import Metric, VideoSample
from metrics.registry import expand_metrics, get_metric
from metrics.rollups import SHIFT_MOTION, VBENCH_I2V_RANGES, shift_rollup, vbench_i2v_rollup

log = logging.getLogger(__name__)
AdapterSource = ModelAdapter | Callable[[], ModelAdapter] | None  # a model, or a function that loads it
ROLLUP_DIMENSIONS = set(VBENCH_I2V_RANGES) | set(SHIFT_MOTION)


class Evaluator:
    def __init__(self, preset: PresetConfig, metric_names: Sequence[str] | None = None, batch_size: int | None = None):
        self.preset, self.batch_size = preset, batch_size or preset.eval.batch_size or 16
        names = list(metric_names or preset.eval.metrics)
        self.metrics: list[Metric] = []
        missing: list[str] = []
        for name, opts in expand_metrics(names, preset.eval.backends):
            try:
                metric = get_metric(name, **opts)
                metric.identity  # noqa: B018  (lazy backends resolve their weights here)
                self.metrics.append(metric)
            except WeightsError as exc:  # name every missing file at once, before any work
                missing.append(f"{name}: {exc}")
        twice = _duplicates([m.identity for m in self.metrics if m.spec.name in ROLLUP_DIMENSIONS])
        if twice:
            raise ValueError("a roll-up dimension is asked for twice, with two backends ("
                             + "; ".join(twice) + "); keep one in --metrics / eval.metrics")
        for metric in self.metrics:  # metrics whose reference is the preset's own real footage (FVD)
            if hasattr(metric, "use_source"):
                metric.use_source(preset)
        if missing:
            names = sorted(set(re.findall(r"harness weights prefetch (\w+)", "\n".join(missing))))
            raise WeightsError("weights missing from the local cache (see `harness weights status`):\n  "
                               + "\n  ".join(missing) + "\nfetch them all with: harness weights prefetch "
                               + " ".join(names))
        self._sets: dict[int, tuple] = {}
        self._told: set[str] = set()  # metrics already logged as final-set only
        self.use_set(final=False)

    def use_set(self, final: bool) -> int:
        """Switch to the final eval set (the base model and each method's last checkpoint:
        ``eval.final_num_videos``) or the intermediate one (``eval.num_videos``, its first clips with
        the same seeds); the number of videos. FVD's identity says how many videos it is computed on."""
        n = self.preset.eval.size(final)
        if n not in self._sets:
            clips = clip_batch(self.preset, "eval", range(n))
            seeds = [self.preset.eval.seed + i for i in range(n)]
            h = hashlib.sha256(np.ascontiguousarray(clips.first_frames).tobytes())
            h.update(json.dumps([list(clips.captions), seeds, list(clips.frames.shape)]).encode())
            self._sets[n] = (clips, seeds, h.hexdigest())
        self.eval, self.seeds, self.eval_digest = self._sets[n]
        self._count(n)
        return n

    def metrics_for(self, final: bool) -> list[Metric]:
        """The metrics a checkpoint is scored with: all of them on the final eval set; on an intermediate set
        smaller than the final one, not those whose estimate needs more videos than it holds (FVD: its feature
        dimension + 1, else the covariance is singular). Those are computed at the base model and each method's
        last checkpoint, on the final set, and the run log says so once; an intermediate checkpoint stores no
        value for them rather than an unreliable one."""
        n, n_final = self.preset.eval.size(False), self.preset.eval.size(True)
        if final or n >= n_final:
            return self.metrics
        kept = []
        for metric in self.metrics:
            need = metric.min_videos() if hasattr(metric, "min_videos") else 0
            if need <= n:
                kept.append(metric)
            elif metric.spec.name not in self._told:
                self._told.add(metric.spec.name)
                log.info("%s is computed on the final eval set only (%d videos): its estimate needs >= %d videos "
                         "and intermediate checkpoints take %d (eval.num_videos)", metric.spec.name, n_final, need, n)
        return kept

    def _count(self, n: int) -> None:
        for metric in self.metrics:  # set metrics biased by the sample count (FVD) name it in their identity
            if hasattr(metric, "set_generated"):
                metric.set_generated(n)

    # -- videos ------------------------------------------------------------------------
    def sample_videos(self, adapter: ModelAdapter, show_progress: bool = True,
                      sampler: SamplerConfig | None = None) -> np.ndarray:
        """(N, T, H, W, 3) uint8 for the eval conditions and seeds (the preset's sampler unless
        a method brings its own, e.g. a few-step generator's)."""
        sampler = sampler or self.preset.sampler
        n, d = len(self.seeds), current()
        steps = len(sigma_schedule(sampler)) - 1
        # With several ranks each samples every world-th batch; batches are the same as on one
        # process (same rows, same seeds), so the gathered frames are the single-process frames.
        batches = [slice(lo, min(n, lo + self.batch_size)) for lo in range(0, n, self.batch_size)]
        mine = [batches[k] for k in d.strided(len(batches))]
        out: dict[int, np.ndarray] = {}
        with torch.no_grad(), tqdm(total=sum(sl.stop - sl.start for sl in mine) * steps, desc="sampling",
                                   unit="video-step", disable=not show_progress or not d.is_main,
                                   leave=False) as bar:
            for sl in mine:
                cond = adapter.encode_condition(self.eval.first_frames[sl], self.eval.captions[sl])
                m = sl.stop - sl.start
                videos = sample(adapter, cond, self.seeds[sl], sampler,
                                progress=lambda k, m=m: bar.update(k * m))
                out.update((sl.start + j, tensor_to_frames(v)) for j, v in enumerate(videos))
        for part in d.gather(out) if d.enabled else []:
            out.update(part)
        return np.stack([out[i] for i in range(n)])

    def inputs_key(self, weights: str, sampler: SamplerConfig | None = None) -> dict:
        """What a checkpoint's eval samples and results are computed from: the weights (a digest or an
        identity), every sampler setting, and the eval set (conditions, captions and seeds)."""
        sampler = sampler or self.preset.sampler
        return {"weights": weights, "sampler": sampler.model_dump(mode="json"), "eval_set": self.eval_digest}

    def samples_for(self, adapter: AdapterSource, path: Path, show_progress: bool = True,
                    sampler: SamplerConfig | None = None, key: dict | None = None) -> np.ndarray:
        """The eval videos of ``path`` when they were sampled from the same inputs (``key``), else
        sampled again from ``adapter`` (a model, or a function that loads it) and saved with the key."""
        d = current()
        key_text = json.dumps(key, sort_keys=True)
        state = d.broadcast(_samples_state(path, key_text) if d.is_main else None)  # rank 0 decides
        if state == "ok":
            with np.load(path) as z:
                return z["frames"]
        if state == "other":
            log.warning("%s holds videos sampled from other inputs (another checkpoint, sampler or eval set); "
                        "sampling them again", path)
        if adapter is None:
            raise FileNotFoundError(f"{path} is missing (or made from other inputs) and no model was given to "
                                    "sample it")
        model = adapter if isinstance(adapter, ModelAdapter) else adapter()
        frames = self.sample_videos(model, show_progress, sampler)
        if d.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".partial.npz")
            np.savez_compressed(tmp, frames=frames, seeds=np.asarray(self.seeds), inputs=np.asarray(key_text))
            os.replace(tmp, path)
        d.barrier()
        return frames

    # -- metrics -----------------------------------------------------------------------
    def video_samples(self, frames: np.ndarray) -> list[VideoSample]:
        return [
            VideoSample(video_id=f"eval{i:04d}_seed{seed}", frames=f, fps=frame_rate(self.preset),
                        first_frame=self.eval.frames[i, 0], caption=self.eval.captions[i],
                        # ground truth (oracle judges) exists only for the synthetic world
                        condition=WorldCondition(self.eval.specs[i], self.preset.world)
                        if self.preset.data is None else None)
            for i, (f, seed) in enumerate(zip(frames, self.seeds, strict=True))
        ]

    def evaluate(self, store: ResultStore, checkpoint_id: int, adapter: AdapterSource,
                 samples_path: Path, show_progress: bool = True,
                 sampler: SamplerConfig | None = None, *, weights: str, final: bool = False) -> dict[str, float]:
        """Sample (or reload) the eval set for a checkpoint and compute what is missing. ``weights``
        identifies the model (a digest of its files): results and samples of the checkpoint made from
        other weights, sampler settings or eval set are dropped and computed again. ``final``: the
        larger eval set of the base model and of each method's last checkpoint (``eval.final_num_videos``)."""
        self.use_set(final)
        metrics = self.metrics_for(final)
        key = self.inputs_key(weights, sampler)
        bind_inputs(store, checkpoint_id, key, f"checkpoint {samples_path.parent}")
        if current().broadcast(any(not store.has_aggregate(checkpoint_id, m.identity) for m in metrics)):
            videos = self.video_samples(self.samples_for(adapter, samples_path, show_progress, sampler, key))
            return self.score(store, checkpoint_id, videos, show_progress, metrics)
        return self._rollups(store, checkpoint_id, {"eval_videos": len(self.seeds), "eval_set": self.eval_digest})

    def score(self, store: ResultStore, checkpoint_id: int, videos: list[VideoSample],
              show_progress: bool = True, metrics: list[Metric] | None = None) -> dict[str, float]:
        """Compute every metric (of ``metrics``, default all) without a stored aggregate on given videos,
        then the roll-ups."""
        d = current()
        self._count(len(videos))
        metrics = self.metrics if metrics is None else metrics
        done = d.broadcast([store.has_aggregate(checkpoint_id, m.identity) for m in metrics])
        todo = [m for m, have in zip(metrics, done, strict=True) if not have]
        rank, world = d.rank, d.world_size
        mine = videos[rank::world]  # with torch.distributed, each rank scores every world-th video
        # Each embedder runs once per video, batched across videos; each flow once per frame pair.
        set_extras = self._set_extras(videos)
        with shared_features(mine), shared_flows():
            for metric in tqdm(todo, desc="metrics", disable=not show_progress or rank > 0, leave=False):
                self._compute(store, checkpoint_id, metric, videos, mine, set_extras)
        return self._rollups(store, checkpoint_id, set_extras) if rank == 0 else {}

    def _set_extras(self, videos: list[VideoSample]) -> dict:
        """What every aggregate records about the videos it was computed on: their number and, for the
        eval set sampled from a checkpoint, the eval set's digest (the inputs binding's ``eval_set``)."""
        out: dict = {"eval_videos": len(videos)}
        if len(videos) == len(self.seeds) and all(v.video_id == f"eval{i:04d}_seed{s}"
                                                  for i, (v, s) in enumerate(zip(videos, self.seeds, strict=True))):
            out["eval_set"] = self.eval_digest
        return out

    def _compute(self, store: ResultStore, checkpoint_id: int, metric: Metric,
                 videos: list[VideoSample], mine: list[VideoSample], set_extras: dict | None = None) -> None:
        metric.reset()
        rows = metric.update_many(mine) if hasattr(metric, "update_many") else [metric.update(v) for v in mine]
        if len(mine) != len(videos):  # sharded: gather every rank's state and records on rank 0
            import torch.distributed as dist

            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (metric.state(), rows))
            if dist.get_rank() != 0:
                return
            metric.reset()
            metric.merge([state for state, _ in gathered])
            order = {v.video_id: i for i, v in enumerate(videos)}
            rows = sorted((r for _, rs in gathered for r in rs), key=lambda r: order[r["video_id"]])
        value = metric.compute()
        extras = dict(getattr(metric, "compute_extras", {}) or {})
        lo = hi = None
        kept = [(r["value"], r.get("weight", 1.0)) for r in rows
                if r.get("value") is not None and not _isnan(r["value"])]
        if metric.spec.kind == "per-video" and kept:
            vals, wts = np.array([k[0] for k in kept]), np.array([k[1] for k in kept])
            _, lo, hi = bootstrap_ci(vals, wts)
        if metric.spec.kind == "per-video":  # set metrics (FVD) have no per-video value
            store.add_records(checkpoint_id, metric.identity, rows)
        store.add_aggregate(checkpoint_id, metric.identity, value, len(kept) or len(rows), lo, hi,
                            {"spec": metric.spec.name, "version": metric.spec.version, **(set_extras or {}),
                             **extras})

    def _rollups(self, store: ResultStore, checkpoint_id: int, set_extras: dict | None = None) -> dict[str, float]:
        agg = store.aggregates()
        agg = agg[agg["checkpoint_id"] == checkpoint_id]
        identities = [m for m in agg["metric"] if m.split("[")[0] in ROLLUP_DIMENSIONS]
        by_name = {m.split("[")[0]: v for m, v in zip(agg["metric"], agg["value"], strict=True)
                   if not m.startswith("rollup:")}
        twice = _duplicates(identities)
        if twice:  # which one would count is arbitrary: no roll-up rather than a silent pick
            log.warning("checkpoint %d: no roll-ups, two identities of one dimension are stored (%s)",
                        checkpoint_id, "; ".join(twice))
            return by_name
        label = _rollup_label(identities)
        for name, (value, missing) in rollup_values(by_name).items():
            store.add_aggregate(checkpoint_id, f"{name}[{label}]", value, 1, None, None,
                                {"missing": missing, "inputs": identities, **(set_extras or {})})
        return by_name


def rollup_values(by_name: Mapping[str, float]) -> dict[str, tuple[float, list[str]]]:
    """The roll-ups of one checkpoint's dimension values (base name -> value), each under its name without the
    backend label (``rollup:shift_motion``, ``rollup:vbench_i2v_partial_total``, ...) with the dimensions it
    lacks; NaN roll-ups are left out. VBench-I2V's carry ``partial`` unless every dimension is present: never
    under the name of upstream's score."""
    out = {}
    for prefix, fn in (("vbench_i2v", vbench_i2v_rollup), ("shift", shift_rollup)):
        result = fn(by_name)
        if prefix == "vbench_i2v" and not result["complete"]:
            prefix = "vbench_i2v_partial"
        for key, value in result.items():
            if isinstance(value, float) and not _isnan(value):
                out[f"rollup:{prefix}_{key}"] = (value, result.get("missing", []))
    return out


def _duplicates(identities: Sequence[str]) -> list[str]:
    """'dim: id1, id2' for each base dimension with more than one identity."""
    by_base: dict[str, list[str]] = {}
    for i in identities:
        by_base.setdefault(i.split("[", 1)[0], []).append(i)
    return [f"{b}: {', '.join(ids)}" for b, ids in sorted(by_base.items()) if len(ids) > 1]


def bind_inputs(store: ResultStore, checkpoint_id: int, key: dict, what: str) -> None:
    """Tie a checkpoint's results to their inputs (rank 0's store); stale results are dropped, said once."""
    old = store.bind_inputs(checkpoint_id, key)
    if old:
        changed = sorted(k for k, v in json.loads(old).items() if key.get(k) != v)
        log.warning("%s: results stored from other inputs (%s changed) were dropped; computing them again",
                    what, ", ".join(changed) or "key")


def _samples_state(path: Path, key_text: str) -> str:
    """'ok' (sampled from these inputs), 'other' (from other inputs, or unverifiable) or 'missing'."""
    if not path.is_file():
        return "missing"
    try:
        with np.load(path) as z:
            stored = str(z["inputs"]) if "inputs" in z.files else None
    except Exception:  # a truncated or corrupt file is sampled again  # noqa: BLE001
        return "other"
    return "ok" if stored == key_text else "other"


def _rollup_label(identities: list[str]) -> str:
    """What a roll-up is made of: ``random-weights`` if any input is, else ``upstream`` when every
    input used upstream models, else ``tiny`` (weights-free or tiny-world backends)."""
    if any("random-weights" in i for i in identities):
        return "random-weights"
    # A substitute anywhere wins: flow_chain(flow=raft) is a weights-free tracker even on RAFT's flow.
    substitutes = ("tiny", "flow_chain", "flowinterp", "=dis", "farneback", "oracle", "sea-raft", "sea_raft")
    upstream = ("dino-vitb16", "clip-vit", "dreamsim", "amt-s", "raft", "musiq", "cotracker", "i3d", "videomae")
    if not identities or any(any(t in i for t in substitutes) for i in identities):
        return "tiny"
    return "upstream" if all(any(u in i for u in upstream) for i in identities) else "tiny"


def _isnan(x: object) -> bool:
    return isinstance(x, float) and math.isnan(x)


def is_final(step: int, steps: int | None) -> bool:
    """Whether a checkpoint takes the final (larger) eval set, ``eval.final_num_videos``: a starting model
    (step 0: the base model, or a method's own) or a method's last step; the others take ``eval.num_videos``."""
    return step == 0 or (steps is not None and step == steps)


# -- `harness eval`: a model directory, a run, or a folder of videos -------------------------------

def checkpoint_weights(preset: PresetConfig, path: Path, base_checkpoint: str | None = None) -> str:
    """The weights identity of a run checkpoint (its LoRA on the preset's base) or a model directory."""
    from harness.models.starting import base_weights
    from harness.rundir import dir_digest, file_digest

    if (path / LORA).is_file():
        return f"{base_weights(preset, base_checkpoint)}+lora:{file_digest(path / LORA)}"
    return f"tiny:{dir_digest(path)}"


def adapter_for(preset: PresetConfig, path: Path, methods: dict | None = None) -> ModelAdapter:
    """A full tiny model directory (adapter.json) or a run's LoRA checkpoint (lora.safetensors) on
    the preset's base: its real family (``adapter`` section) or the tiny model. A checkpoint's method
    settings (LoRA rank, its own starting model) come from ``methods``, else from the run.json of
    the run that holds it (``<run>/checkpoints/<method>/seed<k>/step<n>``)."""
    from safetensors.torch import load_file

    from harness.models.starting import base_adapter
    from harness.models.tiny_wan import TinyWanAdapter

    if (path / "adapter.json").is_file():
        adapter = TinyWanAdapter.load(path)
    elif (path / LORA).is_file():
        cfg = _method_settings(path, methods)
        adapter = base_adapter(preset, cfg.get("base_checkpoint"))
        adapter.add_lora(cfg["lora_rank"], cfg["lora_alpha"])
        try:
            state = load_file(path / LORA)
        except Exception as exc:  # truncated or corrupt safetensors
            raise ValueError(f"checkpoint file {path / LORA} is unreadable ({type(exc).__name__}: {exc}); "
                             "evaluate another checkpoint of its run, or train it again") from exc
        adapter.load_lora_state_dict(state)
    else:
        raise FileNotFoundError(f"{path}: neither a model directory (adapter.json) nor a run checkpoint "
                                "(lora.safetensors)")
    adapter.model.eval()
    return adapter


def _method_settings(path: Path, methods: dict | None) -> dict:
    """The settings of the method that wrote LoRA checkpoint ``path`` (from its run's manifest)."""

    where = RunDir.locate(path)
    if methods is None and where is None:
        raise FileNotFoundError(
            f"{path} holds a LoRA (lora.safetensors) but is not a checkpoint inside a run directory "
            "(<run>/checkpoints/<method>/seed<k>/step<n> next to <run>/run.json), so its method settings "
            "(LoRA rank, base model) are unknown; evaluate it where `harness run` wrote it")
    method = where[1] if where else path.parent.parent.name
    if methods is None:
        methods = (where[0].read_manifest() or {}).get("methods") or {}
    if method not in methods:
        raise FileNotFoundError(f"{path}: a LoRA checkpoint of method {method!r}, but its run's run.json does not "
                                f"describe that method (it has {', '.join(methods) or 'none'})")
    return methods[method]


def evaluate_run(run_dir: Path, metric_names: Sequence[str] | None, show_progress: bool = True,
                 backends: Mapping[str, Mapping[str, Any]] | None = None, replace: bool = False) -> Path:
    """Compute metrics missing from every checkpoint of a run (e.g. a metric added later), on the samples each
    checkpoint stored (sampled again only when they are missing or from other inputs).

    ``backends`` (metric -> options) scores the run's metrics with other backends than it recorded; with
    ``replace`` the results of ``metric_names`` under any other identity are deleted first (so a dimension is
    never stored twice, which would leave the checkpoint without roll-ups), and run.json and the store's run
    config record the new backends and identities, so a resumed run and later evaluations use them."""
    from harness.config import PresetConfig as Preset
    from harness.models.starting import base_adapter, base_weights

    run = RunDir(run_dir)
    info = run.read_manifest() or {}
    if replace and not metric_names:
        raise ValueError("--replace needs --metrics: the metrics whose stored results it replaces")
    recorded = dict(info["preset"])
    if backends:
        ev = dict(recorded.get("eval") or {})
        merged = {k: dict(v) for k, v in (ev.get("backends") or {}).items()}
        for name, opts in backends.items():
            merged[name] = {**merged.get(name, {}), **opts}
        recorded = {**recorded, "eval": {**ev, "backends": merged}}
    preset = Preset(**recorded)
    evaluator = Evaluator(preset, metric_names)
    with run.lock(), ResultStore(run.results) as store:  # never beside a `harness run` writing the same run
        from harness.provenance import provenance

        command = {"command": "eval --run", "metrics": metric_names,
                   **({"backends": {k: dict(v) for k, v in backends.items()}} if backends else {}),
                   **({"replace": True} if replace else {})}
        for run_id in store.runs()["run_id"]:  # a run directory's store holds its one run
            store.begin_session(run_id, command, provenance())
            if replace:
                new = {m.spec.name: m.identity for m in evaluator.metrics}
                for name, identity in new.items():
                    if dropped := store.drop_metric(run_id, name, keep=identity):
                        log.info("%s: %d stored result(s) of %s under another identity replaced by %s",
                                 run_dir, dropped, name, identity)
                store.drop_rollups(run_id)  # every checkpoint's roll-ups are computed again below
                _record_backends(run, store, run_id, info, recorded, new)
        for row in store.checkpoints().itertuples():
            path = run.resolve(row.path)
            # Re-sample with the settings the checkpoint was evaluated with (a method may have its own).
            sampler = SamplerConfig(**row.sampler) if isinstance(row.sampler, dict) and "kind" in row.sampler \
                else None
            cfg = (info.get("methods") or {}).get(row.method) or {}
            if row.method == "base" or not (path / LORA).is_file():
                weights = base_weights(preset, cfg.get("base_checkpoint"))
                def load(cfg=cfg):
                    return base_adapter(preset, cfg.get("base_checkpoint"))
            else:
                weights = checkpoint_weights(preset, path, cfg.get("base_checkpoint"))
                def load(path=path):
                    return adapter_for(preset, path, info["methods"])
            final = row.method == "base" or is_final(int(row.step), cfg.get("steps"))
            evaluator.evaluate(store, int(row.checkpoint_id), load, path / SAMPLES, show_progress, sampler,
                               weights=weights, final=final)
    return run.results


def _record_backends(run: RunDir, store: ResultStore, run_id: str, info: dict, preset: dict,
                     identities: Mapping[str, str]) -> None:
    """Record re-scored metrics in run.json and the store's run config: the preset with their backends, and the
    run's metric identities with each replaced one swapped for its new identity (in place, order kept; added at
    the end when the run did not list it)."""
    def swapped(metrics: Any) -> Any:
        if not isinstance(metrics, list):
            return metrics
        out = [identities.get(str(m).split("[", 1)[0], m) for m in metrics]
        return out + [i for i in identities.values() if i not in out]

    run.write_manifest({**info, "preset": preset, "metrics": swapped(info.get("metrics"))})
    config = store.run_config(run_id)
    if config is not None:
        store.set_config(run_id, {**config, "preset": preset, "metrics": swapped(config.get("metrics"))})


def _new_store(out: Path, run_id: str, preset: PresetConfig, config: dict) -> ResultStore:
    from harness.provenance import provenance

    out.mkdir(parents=True, exist_ok=True)
    store = ResultStore(RunDir(out).results)
    try:
        prov = provenance()
        store.add_run(run_id, preset.name, {"preset": preset.record(), **config}, [0], prov)
        store.begin_session(run_id, {"command": "eval", **config}, prov)
    except ValueError as exc:
        store.close()
        raise ValueError(f"{out} already holds results of {run_id!r} from other inputs or settings ({exc}); "
                         "choose another --out") from exc
    return store


def evaluate_checkpoint(preset: PresetConfig, path: Path, out: Path, metric_names: Sequence[str] | None,
                        show_progress: bool = True) -> Path:
    """Evaluate one checkpoint into ``out``. Its results and samples are tied to the digest of its
    weights: another checkpoint evaluated into the same ``out`` is stored under its own name and never
    reuses these samples; the same checkpoint with changed weights is sampled and scored again. It is scored
    on the final eval set (``eval.final_num_videos``), as the tables score a method's last checkpoint."""

    evaluator = Evaluator(preset, metric_names)
    where = RunDir.locate(path) if (path / LORA).is_file() else None
    if where is not None:
        run, method, seed, step = where
        methods = (run.read_manifest() or {}).get("methods") or {}
        base_ckpt = (methods.get(method) or {}).get("base_checkpoint")
        label = f"{method}-seed{seed}-step{step}"
    else:
        method, seed, step, base_ckpt, label = f"model:{path.name}", 0, 0, None, f"model-{path.name}"
    adapter = adapter_for(preset, path)
    weights = checkpoint_weights(preset, path, base_ckpt)
    run_id = f"eval-{label}"
    with _new_store(out, run_id, preset, {"checkpoint": str(path.resolve())}) as store:
        ckpt = store.checkpoint(run_id, method, seed, step, str(path.resolve()), preset.sampler.model_dump())
        evaluator.evaluate(store, ckpt, adapter, out / "samples" / f"{label}.npz", show_progress, weights=weights,
                           final=True)
    return RunDir(out).results


MIN_FRAMES = 2  # every video metric compares consecutive frames


def evaluate_videos(preset: PresetConfig, folder: Path, out: Path, metric_names: Sequence[str] | None,
                    fps: float | None = None, show_progress: bool = True,
                    conditions: Path | None = None) -> tuple[Path, list[str]]:
    """Score a folder of mp4 files; unreadable or too short ones, and ones without a usable conditioning
    image, are reported, recorded as skips, and left out. Results are tied to the files' content (a sha256
    per video and per image): when the folder or the conditions change (a video replaced, added or removed),
    the stored results are dropped and the folder is scored again. Metrics that compare a video with its
    conditioning image (i2v_subject, i2v_background) need ``conditions`` (harness/data/conditions.py)."""
    from harness.data.conditions import ConditionsError, conditioning_image, read_conditions
    from harness.data.video_io import VideoReadError, read_video
    from harness.rundir import file_digest

    if not folder.is_dir():
        raise FileNotFoundError(f"--videos {folder}: no such folder")
    evaluator = Evaluator(preset, metric_names or [m for m in preset.eval.metrics if m != "fvd"])
    needs_condition = [m.identity for m in evaluator.metrics
                       if getattr(m, "needs_condition", "condition" in m.spec.inputs)]
    if needs_condition:
        raise ValueError(f"metrics {', '.join(needs_condition)} need tiny-world conditions, which a folder of "
                         "videos does not have; pass --metrics with others")
    needs_image = [m.identity for m in evaluator.metrics if "first_frame" in m.spec.inputs]
    if needs_image and conditions is None:
        raise ValueError(f"metrics {', '.join(needs_image)} compare each video with the image it was conditioned "
                         "on; pass --conditions FILE (CSV or JSONL: video, image, prompt), or leave them out of "
                         "--metrics (they are never computed on a video's own first frame)")
    mapping = read_conditions(conditions) if conditions is not None else None
    files = sorted(folder.glob("*.mp4"))
    if not files:
        raise FileNotFoundError(f"no .mp4 files in {folder}")
    run_id = f"videos-{folder.resolve().name}"
    skipped: list[str] = []
    fps = fps or preset.world.fps
    key: dict = {"videos": {f.name: file_digest(f) for f in files}, "fps": fps}
    if mapping is not None:
        key["conditions"] = {name: [file_digest(c.image) if c.image.is_file() else None, c.prompt]
                             for name, c in sorted(mapping.items())}
    with _new_store(out, run_id, preset, {"videos": str(folder)}) as store:
        ckpt = store.checkpoint(run_id, "videos", 0, 0, str(folder), {"source": "files"})
        bind_inputs(store, ckpt, key, f"--videos {folder}")
        # A row naming a video the folder lacks: named and recorded, never silently dropped.
        for name in sorted(set(mapping or ()) - {f.name for f in files}):
            reason = f"{name} is listed in {conditions} but is not in {folder}"
            log.warning("skipping %s", reason)
            store.add_skip(ckpt, name, reason)
            skipped.append(name)
        videos = []
        for f in files:
            try:
                frames = read_video(f)
                if len(frames) < MIN_FRAMES:
                    raise VideoReadError(f"{f}: {len(frames)} frame(s); the metrics need at least {MIN_FRAMES}")
                image, prompt = None, None
                if mapping is not None:
                    if f.name not in mapping:
                        raise ConditionsError(f"{f.name} has no row in {conditions}")
                    image = conditioning_image(mapping[f.name], frames.shape[1], frames.shape[2])
                    prompt = mapping[f.name].prompt
            except (VideoReadError, ConditionsError) as exc:
                log.warning("skipping %s", exc)
                store.add_skip(ckpt, f.name, str(exc))
                skipped.append(f.name)
                continue
            videos.append(VideoSample(video_id=f.name, frames=frames, fps=fps, first_frame=image, caption=prompt))
        if not videos:
            raise ValueError(f"none of the {len(files)} videos in {folder} could be scored; see the skips above")
        evaluator.score(store, ckpt, videos, show_progress)
    return RunDir(out).results, skipped
