"""Presets (YAML) -> validated configs, with errors that name the field and the allowed values."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from harness.data.folder import VideoDataConfig
from harness.data.world import WorldConfig
from harness.models.registry import AdapterConfig
from harness.models.tiny_wan import TinyModelConfig
from harness.names import UnsafeNameError, check_name
from harness.sampling import SamplerConfig


class ConfigError(ValueError):
    """A preset or override is invalid; the message says which field and what is allowed."""


class PretrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(2000, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    ema_decay: float = Field(0.998, ge=0, lt=1)
    caption_dropout: float = Field(0.1, ge=0, le=1, description="share of empty captions, for CFG")
    timestep_sampling: Literal["uniform", "logit_normal"] = "logit_normal"
    log_every: int = Field(25, ge=1)
    seed: int = 0
    judge_videos: int = Field(32, ge=0, description="eval videos sampled and judged at the end")


DEFAULT_METRICS = [
    "subject_consistency", "background_consistency", "temporal_flickering", "motion_smoothness",
    "dynamic_degree", "i2v_subject", "i2v_background", "motion_score", "fvd",
    "distortion_rate", "motion_adherence",
]


class EvalSetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_videos: int = Field(48, ge=1, description="videos of every intermediate checkpoint's eval set")
    final_num_videos: int | None = Field(
        None, ge=1, description="videos of the base model's (step 0) and each method's last checkpoint's eval set: "
                                "the first num_videos are the intermediate set (same clips, same seeds); "
                                "default (and at least) num_videos")
    seed: int = Field(1000, description="sampling seed of eval video i is seed + i")
    batch_size: int | None = Field(None, ge=1, description="videos sampled together (default 16); ranks take "
                                                         "whole batches")
    metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_METRICS))
    backends: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-metric backend options, e.g. {dynamic_degree: {flow: dis}}"
    )

    def size(self, final: bool) -> int:
        """Videos of the final eval set (base model, each method's last step) or of an intermediate one.
        The final set is never smaller than the intermediate one (``--set eval.num_videos=256`` on a preset
        whose final_num_videos is 192 evaluates every checkpoint on 256)."""
        return max(self.final_num_videos or 0, self.num_videos) if final else self.num_videos


class ProbesConfig(BaseModel):
    """Training probes (trainers/probes.py), measured on every method while it trains."""

    model_config = ConfigDict(extra="forbid")

    names: list[str] = Field(default_factory=lambda: ["likelihood_displacement", "chosen_logp_step", "gamma"])
    every: int = Field(25, ge=1, description="probe every this many steps, and at step 0 and the last step; not at "
                                             "other checkpoints: the series is the same whatever eval_every is")
    pairs: int = Field(16, ge=1, description="probe pairs: rollout pairs of conditions start.. of `split`")
    per_condition: int = Field(4, ge=2)
    # The held-out probe set: the same for every method and disjoint from every method's training
    # conditions (harness.probing.probe_set_problems refuses a run otherwise). No trainer draws from
    # `eval`, and the evaluator's videos are its first eval.final_num_videos clips, so in the tiny world 100000..
    # is apart from both; on real footage indices wrap around the split (the probes may share eval clips).
    split: str = Field("eval", description="split of the held-out probe conditions (no method may train on them)")
    start: int = Field(100_000, ge=0, description="first clip index of the probe conditions in `split`")
    draws: int = Field(4, ge=1, description="fixed (t, noise) draws per pair for the likelihood probe")
    seed: int = 12345
    beta: float = Field(100.0, gt=0, description="beta of the DPO step Gamma compares every method's step with "
                                                 "(the same for every method)")


class TuningConfig(BaseModel):
    """The learning-rate sweep every method gets (harness/tuning.py, `harness tune`, docs/tuning.md)."""

    model_config = ConfigDict(extra="forbid")

    points: int = Field(3, ge=2, description="learning rates per method")
    ratio: float = Field(3.0, gt=1, description="ratio of neighbouring learning rates; the preset's lr is the middle")
    seed: int = Field(0, ge=0, description="the one training seed of every candidate")
    split: str = Field("prompts", description="split of the validation conditions of methods trained on a judge "
                                              "(a method with none: held-out clips of the split it imitates)")
    start: int = Field(500_000, ge=0, description="first validation clip index (no method may train on them)")
    videos: int = Field(64, ge=2, description="validation videos (or clips) each candidate is scored on")
    record: str | None = Field(None, description="the recorded sweep (JSON written by `harness tune --record`), "
                                                 "relative to the preset file; read into `results`")
    results: dict[str, Any] | None = Field(None, description="the recorded sweep, as loaded from `record`")


class PresetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    threads: int | None = Field(None, ge=1, description="torch CPU threads; default: all cores")
    jobs: int = Field(1, ge=1, description="method-seed units `harness run` trains at once, in worker processes "
                                           "with the same thread count each (harness/workers.py): wall time only, "
                                           "never a number; --jobs and $HARNESS_JOBS replace it")
    world: WorldConfig = Field(default_factory=WorldConfig)
    model: TinyModelConfig = Field(default_factory=TinyModelConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    eval: EvalSetConfig = Field(default_factory=EvalSetConfig)
    probes: ProbesConfig = Field(default_factory=ProbesConfig)
    log_with: list[str] = Field(
        default_factory=list, description="experiment trackers (harness/tracking.py: tensorboard, wandb); "
                                          "`harness run --log-with` replaces it; default none")
    methods: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-method trainer settings, e.g. {sft: {steps: 300, lr: 5e-4}}"
    )
    base_checkpoint: str = Field(
        "assets/tiny/base", description="model directory; relative paths are inside the harness package"
    )
    adapter: AdapterConfig | None = Field(
        None, description="a real model family in a local directory; default: the tiny model (base_checkpoint)")
    data: VideoDataConfig | None = Field(
        None, description="real footage (a folder of videos with captions, or DAVIS); default: the synthetic world")
    tuning: TuningConfig | None = Field(
        None, description="the learning-rate sweep every method gets, and its recorded results (docs/tuning.md)")

    @field_validator("methods")
    @classmethod
    def _method_names_are_safe(cls, methods: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Method and variant names (and the trainer a variant names) become run-directory parts."""
        try:
            for key, section in methods.items():
                check_name("methods key", key)
                if section.get("trainer") is not None:
                    check_name(f"methods.{key}.trainer", section["trainer"])
        except UnsafeNameError as exc:
            raise PydanticCustomError("unsafe_name", str(exc)) from None
        return methods

    @model_validator(mode="after")
    def _geometry_agrees(self) -> PresetConfig:
        """The clips must have the shape the model generates: checked here, not mid-run."""
        if self.adapter is None:
            return self
        a = self.adapter
        if self.data is not None:
            got, where = (self.data.num_frames, self.data.height, self.data.width), "data"
        else:
            got, where = (self.world.num_frames, self.world.resolution, self.world.resolution), "world"
        want = (a.num_frames, a.height, a.width)
        if got != want:
            raise ValueError(f"{where} gives clips of (frames, height, width) = {got} but adapter "
                             f"{a.family} generates {want}; make them equal")
        return self

    def record(self) -> dict[str, Any]:
        """The preset as stored with a run. Sections added later (adapter, data, eval.batch_size) are
        left out while unset, so a run recorded before they existed still resumes and compares; ``log_with``
        and ``jobs`` are always left out."""
        out = self.model_dump(mode="json")
        del out["log_with"]  # where a copy of the numbers goes, not what they are: a run resumes with other trackers
        del out["jobs"]  # how fast, not what: the numbers are the same at any jobs
        for key in ("adapter", "data", "tuning"):
            if out[key] is None:
                del out[key]
        for key in ("batch_size", "final_num_videos"):
            if out["eval"][key] is None:
                del out["eval"][key]
        return out

    def base_checkpoint_path(self) -> Path:
        return package_path(self.base_checkpoint)


def package_path(path: str | Path) -> Path:
    """Relative paths of presets and assets are inside the harness package."""
    p = Path(path)
    return p if p.is_absolute() else Path(str(resources.files("harness"))) / p


def available_presets() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("harness.presets").iterdir()
                  if p.name.endswith(".yaml"))


def _format_validation_error(source: str, err: ValidationError) -> str:
    lines = [f"invalid config in {source}:"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
            parent = _model_at(PresetConfig, e["loc"][:-1])
            if parent is not None:
                msg += f"; allowed fields here: {', '.join(parent.model_fields)}"
        got = "" if e["type"] == "unsafe_name" else f" (got {e.get('input')!r})"  # the message names it
        lines.append(f"  field '{field}': {msg}{got}")
    return "\n".join(lines)


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def _deep_update(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for k, v in overrides.items():
        out[k] = _deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> dict[str, Any]:
    """'pretrain.steps=100' -> {'pretrain': {'steps': 100}} (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.field=value")
    key, raw = text.split("=", 1)
    value: Any = yaml.safe_load(raw)
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def _preset_data(name_or_path: str, chain: tuple[str, ...] = ()) -> tuple[str, dict[str, Any]]:
    """(source, mapping) of a preset file, with the preset it ``extends`` merged underneath."""
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        if not path.is_file():
            raise ConfigError(f"preset file {path} does not exist")
        source, text = str(path), path.read_text()
    else:
        names = available_presets()
        if name_or_path not in names:
            raise ConfigError(f"unknown preset {name_or_path!r}; allowed: {', '.join(names)} (or a YAML file path)")
        source = f"preset '{name_or_path}'"
        text = resources.files("harness.presets").joinpath(f"{name_or_path}.yaml").read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"malformed YAML in {source}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a YAML mapping of sections, got {type(data).__name__}")
    _read_tuning_record(data, source, path.parent if path.is_file() else None)
    parent = data.pop("extends", None)
    if parent is not None:
        # A variant names its parent and lists only what it changes; mappings merge, lists replace.
        if not isinstance(parent, str):
            raise ConfigError(f"{source}: `extends` must name one preset or YAML file, got {parent!r}")
        if Path(parent).suffix in {".yaml", ".yml"} and not Path(parent).is_absolute() and path.is_file():
            parent = str(path.parent / parent)  # a file's parent file is found next to it
        if parent in chain or parent == name_or_path:
            raise ConfigError(f"{source}: `extends` loops: {' -> '.join((*chain, name_or_path, parent))}")
        _, base = _preset_data(parent, (*chain, name_or_path))
        data = _deep_update(base, data)
    return source, data


def tuning_record_path(record: str, folder: Path | None) -> Path:
    """Where a preset's ``tuning.record`` lives: next to the preset file (a packaged preset's: in
    harness/presets)."""
    p = Path(record)
    if p.is_absolute():
        return p
    return (folder / p) if folder is not None else Path(str(resources.files("harness.presets"))) / p


def _read_tuning_record(data: dict[str, Any], source: str, folder: Path | None) -> None:
    """Load the sweep a preset's ``tuning.record`` names into ``tuning.results`` (in place)."""
    tuning = data.get("tuning")
    if not isinstance(tuning, dict) or not tuning.get("record"):
        return
    path = tuning_record_path(str(tuning["record"]), folder)
    if not path.is_file():
        raise ConfigError(f"{source}: tuning.record {path} does not exist; run `harness tune --record` or remove "
                          "tuning.record")
    try:
        tuning["results"] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{source}: tuning.record {path} is not readable JSON ({exc}); run `harness tune "
                          "--record` again") from exc


def load_preset(name_or_path: str, overrides: list[dict[str, Any]] | None = None) -> PresetConfig:
    """A preset by name (``tiny``) or a YAML file path, with dotted overrides applied."""
    source, data = _preset_data(name_or_path)
    for o in overrides or []:
        data = _deep_update(data, o)
    try:
        return PresetConfig(**data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source, exc)) from exc
