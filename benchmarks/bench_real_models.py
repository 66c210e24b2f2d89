"""Each real architecture with random weights: a few steps of every trainer (LoRA, gradient
checkpointing, the preset's dtype) and one sampling pass; seconds per step, peak memory and
model FLOPs utilisation (MFU).

    python benchmarks/bench_real_models.py [--presets svd-davis,wan22-ti2v,...] [--methods sft,dpo,...]
        [--size real|tiny] [--batch 2] [--zero2] [--models DIR] [--out FILE]

This is the GPU check of the real-models issue. ``--size real`` builds the published architectures
(``write_random_pipeline(size="real")``: Wan2.1 T2V 1.3B, I2V 14B, Wan2.2 TI2V 5B, SVD-XT) and runs
them at each preset's resolution and frame count; it needs a GPU. ``--size tiny`` runs the same code
on the tests' tiny random pipelines at a tiny geometry, on any machine, to check the script itself
(its figures say nothing about real sizes). ``--zero2`` puts each method's AdamW in a DeepSpeed
ZeRO-2 engine (one process, bf16 when the preset is).

Per preset, the footage is a folder of random-noise videos of the right shape (nothing is
downloaded), and SHIFT reads random discriminators of that clip shape. Per method: step 0 warms up,
step 1 is timed (CUDA synchronised) with the peak memory of that step, and step 2 runs under
``torch.utils.flop_counter.FlopCounterMode`` to count the model FLOPs of one step (matmuls,
convolutions, attention; forward and backward). MFU = FLOPs of a step / seconds of a step / the
device's dense bf16 peak (``--peak-tflops``; default 989 for an H100 or H200). A method that runs out
of memory is recorded as such and the others go on, as is one the preset's settings refuse when
the trainer is built (APO's trajectory-aware timesteps need a shifted schedule, not the few-step
preset's explicit timesteps).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_common import write_record

from harness.config import load_preset
from harness.data.video_io import write_video
from harness.models.registry import load_adapter
from harness.sampling import sample
from trainers.base import trainer_settings
from trainers.registry import trainer_for

PRESETS = ["svd-davis", "wan22-ti2v", "wan21-1.3b-fewstep", "wan21-i2v-dpo"]
METHODS = ["sft", "dpo", "pgdpo", "apo", "fcrm", "shift"]
# --size tiny: the tests' smallest geometry per family (frames, side); Wan2.2's VAE needs 32 px.
TINY_GEOMETRY = {"wan21-t2v": (5, 16), "wan21-i2v": (5, 16), "wan22-ti2v": (5, 32), "svd": (4, 16)}
SPLIT = "finetune"  # the one split of the random footage
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16 tensor-core peak (SXM)


def method_config(method: str, preset, batch: int, shift_paths: dict[str, str]) -> dict:
    """The preset's settings for ``method`` with a small batch and data from the random footage."""
    pairs = {"source": "footage", "split": SPLIT, "conditions": batch}
    small = {
        "sft": {"batch_size": batch, "split": SPLIT},
        "dpo": {"batch_size": batch, "pairs": pairs},
        "pgdpo": {"batch_size": batch, "pairs": pairs},
        "apo": {"batch_size": batch, "stages": [{"kind": "offline", "steps": 3, "pairs": pairs}]},
        "fcrm": {"conditions": 1, "group_size": batch, "batch_size": batch, "inner_steps": 1, "split": SPLIT,
                 "offline": {"split": SPLIT, "start": 0, "count": batch}, "reward": {"name": "luminance"}},
        "shift": {"batch_size": batch, "split": SPLIT, "anchor_split": SPLIT, "warmup_steps": 0,
                  "buffer": {"prompts": 1, "rollouts_per_prompt": batch, "passes": 1},
                  "real": {"split": SPLIT, "start": 0, "count": 4}, "reward_paths": shift_paths},
    }[method]
    return trainer_settings({**preset.methods.get(method, {}), **small})


def random_footage(root: Path, frames: int, height: int, width: int, videos: int = 4) -> None:
    rng = np.random.default_rng(0)
    rows = ["video,caption"]
    for i in range(videos):
        clip = rng.integers(0, 256, (frames + 2, height, width, 3), dtype=np.uint8)
        write_video(root / f"v{i}.mp4", clip, fps=8)
        rows.append(f"v{i}.mp4,random video {i}")
    (root / "captions.csv").write_text("\n".join(rows) + "\n")


def write_pipeline(family: str, size: str, directory: Path) -> None:
    if (directory / "model_index.json").exists():
        return  # written by an earlier run into --models
    from harness.models import svd, wan

    if family == "svd":
        svd.write_random_pipeline(directory, size=size, dtype=torch.bfloat16 if size == "real" else torch.float32)
    else:
        wan.write_random_pipeline(directory, family, size=size, device="cuda" if torch.cuda.is_available() else "cpu")


def shift_discriminators(preset, out: Path) -> dict[str, str]:
    from harness.scorers.motion_rm import MotionDiscriminator, save_discriminator

    paths = {}
    for kind in ("imr", "lmr"):
        torch.manual_seed(0)
        disc = MotionDiscriminator(kind, preset.adapter.num_frames, (preset.adapter.height, preset.adapter.width))
        save_discriminator(disc, out / kind, {"note": "random weights, benchmark only"})
        paths[kind] = str(out / kind)
    return paths


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    """The CUDA allocator's peak since the last reset; on a CPU the process's peak RSS so far."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def without_lora(adapter):
    """The adapter as loaded: the previous method's LoRA layers removed (peft's wrappers unwrapped), so
    that each method starts from the base weights without reading a large model from disk again."""
    if adapter.has_lora:
        adapter.model.unload_lora()
    return adapter


def bench_method(method: str, preset, adapter, batch: int, shift_paths: dict[str, str], workdir: Path,
                 peak_tflops: float | None) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    raw = method_config(method, preset, batch, shift_paths)
    cls = trainer_for(method, raw)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    try:
        trainer = cls(without_lora(adapter), preset, cls.config_class(**raw), 0, workdir=workdir / method)
    except ValueError as exc:  # the method does not apply to this preset (e.g. APO on a few-step schedule)
        return {"refused": str(exc).splitlines()[0]}
    sync()
    out: dict = {"batch_size": batch, "build_s": time.perf_counter() - t0,
                 "optimizer": type(trainer.optimizer).__name__}  # ZeroStep under --zero2
    trainer.train_step(0)  # warm-up (FCRM and SHIFT fill their rollouts here)
    reset_peak()
    sync()
    t0 = time.perf_counter()
    logs = trainer.train_step(1)
    sync()
    out.update(step_s=time.perf_counter() - t0, peak_gib=peak_gib(), loss=logs.get("loss"))
    counter = FlopCounterMode(display=False)
    with counter:
        trainer.train_step(2)
    flops = counter.get_total_flops()
    out["tflop_per_step"] = flops / 1e12
    out["mfu"] = flops / out["step_s"] / (peak_tflops * 1e12) if peak_tflops else None
    del trainer
    return out


def bench_sampling(preset, adapter) -> dict:
    adapter = without_lora(adapter)
    adapter.model.eval()
    first = torch.rand(1, 3, preset.adapter.height, preset.adapter.width) * 2 - 1
    cond = adapter.encode_condition(first, ["a random video"])
    reset_peak()
    sync()
    t0 = time.perf_counter()
    video = sample(adapter, cond, [0], preset.sampler)
    sync()
    assert torch.isfinite(video).all(), "the sampled video is not finite"
    return {"seconds_per_video": time.perf_counter() - t0, "peak_gib": peak_gib(),
            "sampler": preset.sampler.model_dump(mode="json")}


def bench_preset(name: str, methods: list[str], size: str, batch: int, models: Path, work: Path,
                 peak_tflops: float | None) -> dict:
    base = load_preset(name)
    family = base.adapter.family
    frames, height, width = (base.adapter.num_frames, base.adapter.height, base.adapter.width)
    if size == "tiny":
        frames, side = TINY_GEOMETRY[family]
        height = width = side
    model_dir = models / f"{family}-{size}"
    write_pipeline(family, size, model_dir)
    footage = work / name / "footage"
    random_footage(footage, frames, height, width)
    geometry = {"num_frames": frames, "height": height, "width": width}
    sets = {"adapter": {**base.adapter.model_dump(mode="json"), "path": str(model_dir), **geometry},
            "data": {"kind": "folder", "root": str(footage), "captions": "captions.csv", "fps": 8,
                     "splits": {**{k: 0.0 for k in base.data.splits}, SPLIT: 1.0},  # the preset's splits emptied
                     "cache_dir": str(work / name / "clips"), **geometry},
            "eval": {"batch_size": 1}}
    if size == "tiny":
        sets["adapter"]["dtype"] = "float32"
        sets["world"] = {"num_frames": frames, "resolution": height}
        sets["sampler"] = {"num_steps": 8}  # APO's trajectory-aware timesteps need low-noise steps
    preset = load_preset(name, [sets])
    shift_paths = shift_discriminators(preset, work / name / "discriminators") if "shift" in methods else {}
    result: dict = {"family": family, "geometry": geometry, "dtype": preset.adapter.dtype, "methods": {}}
    t0 = time.perf_counter()
    adapter = load_adapter(preset.adapter)  # once per preset: every method starts from it without its LoRA
    result["load_s"] = time.perf_counter() - t0
    for method in methods:
        try:
            result["methods"][method] = bench_method(method, preset, adapter, batch, shift_paths, work / name,
                                                     peak_tflops)
        except torch.cuda.OutOfMemoryError as exc:
            result["methods"][method] = {"error": f"out of memory: {str(exc).splitlines()[0]}"}
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        print(name, method, result["methods"][method], flush=True)
    result["sampling"] = bench_sampling(preset, adapter)
    return result


def zero2_env(bf16: bool) -> None:
    """One process under DeepSpeed ZeRO-2, as `accelerate launch` with harness/launch/accelerate-zero2.yaml
    sets it up."""
    os.environ.update(ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_ZERO_STAGE="2",
                      ACCELERATE_MIXED_PRECISION="bf16" if bf16 else "no", WORLD_SIZE="1", RANK="0",
                      LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29533"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--size", choices=["real", "tiny"], default="real")
    ap.add_argument("--batch", type=int, default=2, help="global batch of every method (pairs for the DPO family)")
    ap.add_argument("--zero2", action="store_true", help="each method's AdamW in a DeepSpeed ZeRO-2 engine")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the device (MFU)")
    ap.add_argument("--models", type=Path, default=None, help="where the random pipelines are written (reused)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.size == "real" and not torch.cuda.is_available():
        raise SystemExit("--size real builds the published architectures at their resolution: it needs a GPU "
                         "(use --size tiny to check the script on this machine)")
    device_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in device_name), None)
    out = args.out or Path(__file__).parent / "results" / f"real_models_{args.size}.json"
    presets, methods = args.presets.split(","), args.methods.split(",")
    if args.zero2:
        from harness.distributed import init_from_env

        zero2_env(bf16=args.size == "real")
        init_from_env()
    results: dict = {"device": device_name, "peak_tflops": peak, "size": args.size, "zero2": args.zero2,
                     "presets": {}}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack():
        models = args.models or Path(tmp) / "models"
        for name in presets:
            results["presets"][name] = bench_preset(name, methods, args.size, args.batch, models, Path(tmp) / "work",
                                                    peak)
    write_record(out, "real models", ",".join(presets), results)


if __name__ == "__main__":
    main()
