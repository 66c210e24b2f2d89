"""Every trainer runs on every real family: tiny random Wan2.1 T2V / I2V, Wan2.2 TI2V and SVD
pipelines (diffusers classes, random weights) load through the preset's `adapter` section, take
two steps of each method with LoRA and gradient checkpointing, and sample a video."""

from __future__ import annotations

import math

import pytest
import torch

from harness.config import ConfigError, load_preset
from harness.models.registry import load_adapter
from harness.sampling import sample
from trainers.base import trainer_settings
from trainers.registry import trainer_for

# family -> (frames, side) the family can take at the smallest size (Wan: 4k+1 frames; TI2V: 32 px)
GEOMETRY = {"wan21-t2v": (5, 16), "wan21-i2v": (5, 16), "wan22-ti2v": (5, 32), "svd": (4, 16)}
SMALL = {
    "sft": {"batch_size": 2},
    "dpo": {"batch_size": 2, "pairs": {"conditions": 2, "per_condition": 2}},
    "pgdpo": {"batch_size": 2, "pairs": {"conditions": 2, "per_condition": 2}},
    "apo": {"batch_size": 2, "stages": [{"kind": "offline", "steps": 2,
                                         "pairs": {"conditions": 2, "per_condition": 2}}]},
    "fcrm": {"conditions": 2, "group_size": 2, "batch_size": 2, "inner_steps": 1, "offline": {"count": 2},
             "reward": {"name": "luminance"}},
    "shift": {"batch_size": 2, "buffer": {"prompts": 2, "rollouts_per_prompt": 2, "passes": 1},
              "real": {"count": 4}, "warmup_steps": 0},
}


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    from harness.models import svd, wan

    root = tmp_path_factory.mktemp("families")
    for family in GEOMETRY:
        if family == "svd":
            svd.write_random_pipeline(root / family, size="tiny", seed=0)
        else:
            wan.write_random_pipeline(root / family, family, size="tiny", seed=0)
    return root


def _preset(root, family, **adapter):
    frames, side = GEOMETRY[family]
    section = {"family": family, "path": str(root / family), "num_frames": frames, "height": side, "width": side,
               "dtype": "float32", "gradient_checkpointing": True, **adapter}
    return load_preset("tiny", [{"adapter": section, "world": {"num_frames": frames, "resolution": side},
                                 "sampler": {"num_steps": 2}}])


def _shift_rewards(preset, tmp_path):
    """SHIFT's discriminators read the preset's clip shape: random ones of that shape (the shipped
    ones are trained for 8 frames at 16 px)."""
    from harness.scorers.motion_rm import MotionDiscriminator, save_discriminator

    paths = {}
    for kind in ("imr", "lmr"):
        torch.manual_seed(0)
        disc = MotionDiscriminator(kind, preset.world.num_frames, preset.world.resolution)
        save_discriminator(disc, tmp_path / kind, {"note": "random weights, test only"})
        paths[kind] = str(tmp_path / kind)
    return paths


@pytest.mark.parametrize("family", list(GEOMETRY))
def test_every_trainer_takes_two_steps_and_the_model_samples(pipelines, family, tmp_path):
    preset = _preset(pipelines, family)
    for method, small in SMALL.items():
        cfg_raw = trainer_settings({**preset.methods.get(method, {}), **small})
        if method == "shift":
            cfg_raw["reward_paths"] = _shift_rewards(preset, tmp_path)
        cls = trainer_for(method, cfg_raw)
        cfg = cls.config_class(**cfg_raw)
        torch.manual_seed(0)
        adapter = load_adapter(preset.adapter)
        trainer = cls(adapter, preset, cfg, 0, workdir=tmp_path / method)
        before = {n: p.detach().clone() for n, p in adapter.model.named_parameters() if p.requires_grad}
        assert before and all("lora_" in n for n in before), f"{family}/{method}: only LoRA trains"
        for step in range(2):
            logs = trainer.train_step(step)
            assert all(math.isfinite(v) for v in logs.values()), f"{family}/{method} step {step}: {logs}"
        moved = sum(float((p - before[n]).abs().sum()) for n, p in adapter.model.named_parameters()
                    if p.requires_grad)
        assert moved > 0, f"{family}/{method}: two steps left the LoRA unchanged"
    adapter.model.eval()
    frames, side = GEOMETRY[family]
    first = torch.rand(2, 3, side, side) * 2 - 1
    video = sample(adapter, adapter.encode_condition(first, ["a red circle moves left", "a cat"]), [1, 2],
                   preset.sampler)
    assert video.shape == (2, 3, frames, side, side) and torch.isfinite(video).all()


def test_geometry_is_refused_when_the_preset_is_read(pipelines):
    with pytest.raises(ConfigError, match=r"num_frames=8 is not 4k\+1.*use 5 or 9"):
        load_preset("tiny", [{"adapter": {"family": "wan21-i2v", "path": "x", "num_frames": 8, "height": 16,
                                          "width": 16}}])
    with pytest.raises(ConfigError, match="height=20 is not a multiple of 8; use 16 or 24"):
        load_preset("tiny", [{"adapter": {"family": "svd", "path": "x", "num_frames": 8, "height": 20,
                                          "width": 16}}])
    with pytest.raises(ConfigError, match=r"world gives clips .* \(8, 16, 16\) but adapter svd generates"):
        load_preset("tiny", [{"adapter": {"family": "svd", "path": "x", "num_frames": 4, "height": 16,
                                          "width": 16}}])


REAL_PRESETS = ["svd-davis", "wan22-ti2v", "wan21-1.3b-fewstep", "wan21-i2v-dpo"]


def _configs(preset):
    from harness.runner import RunOptions, method_config

    return {m: method_config(preset, m, RunOptions([m])) for m in preset.methods}


def test_real_presets_validate_and_refuse_a_world_size_that_does_not_divide():
    from harness.runner import RunError, check_layout

    for name in REAL_PRESETS:
        preset = load_preset(name)
        assert preset.adapter is not None and preset.data is not None
        check_layout(_configs(preset), 8)  # one 8-GPU node
    with pytest.raises(RunError, match=r"methods\.sft\.batch_size: global batch 40 must be a multiple of world size "
                                       r"3 x group size 1 = 3; 40 / 3 = 13.3333 per rank; use 39 or 42"):
        check_layout(_configs(load_preset("svd-davis")), 3)
    with pytest.raises(RunError, match=r"rollouts per round\): global batch 768 must be a multiple of world size 5 "
                                       r"x group size 32 = 160; 768 / 5 = 153.6 per rank, 153.6 / 32 = 4.8 groups"):
        check_layout(_configs(load_preset("wan21-1.3b-fewstep")), 5)


def test_a_model_directory_with_a_missing_component_is_named_before_any_work(pipelines, tmp_path):
    import shutil

    from harness.models.components import ModelDirError
    from harness.models.registry import check_adapter_dir

    broken = tmp_path / "svd"
    shutil.copytree(pipelines / "svd", broken)
    shutil.rmtree(broken / "image_encoder")
    cfg = _preset(pipelines, "svd").adapter.model_copy(update={"path": str(broken)})
    with pytest.raises(ModelDirError, match=r"image_encoder is missing"):
        check_adapter_dir(cfg)


def test_harness_run_trains_and_evaluates_on_a_folder_of_videos(pipelines, tmp_path):
    """The real-data path end to end: a folder of videos with a captions CSV, a random tiny SVD,
    SFT for two steps, evaluation of the base and the checkpoint, every record in the store."""
    import numpy as np

    from harness.data.video_io import write_video
    from harness.runner import RunOptions, run
    from harness.store import ResultStore

    frames, side = GEOMETRY["svd"]
    rows = ["video,caption"]
    for i in range(6):
        t = np.arange(24)[:, None, None]
        x = np.arange(side)[None, None, :]
        video = np.zeros((24, side, side, 3), np.uint8)
        video[..., i % 3] = ((x + (i + 1) * t) % side * (255 // side)).astype(np.uint8)[..., :].repeat(side, 1)
        write_video(tmp_path / "videos" / f"v{i}.mp4", video, fps=8)
        rows.append(f"v{i}.mp4,stripes moving at speed {i + 1}")
    (tmp_path / "videos" / "captions.csv").write_text("\n".join(rows) + "\n")
    preset = load_preset("tiny", [{
        "adapter": {"family": "svd", "path": str(pipelines / "svd"), "num_frames": frames, "height": side,
                    "width": side, "dtype": "float32"},
        "data": {"kind": "folder", "root": str(tmp_path / "videos"), "captions": "captions.csv",
                 "num_frames": frames, "fps": 8, "height": side, "width": side,
                 "splits": {"finetune": 0.5, "eval": 0.5}, "cache_dir": str(tmp_path / "clips")},
        "sampler": {"num_steps": 2}, "eval": {"num_videos": 3, "final_num_videos": None,
                                              "batch_size": 2, "metrics": ["dynamic_degree"],
                                              "backends": {"dynamic_degree": {"flow": "dis"}}},
        "probes": {"pairs": 2, "draws": 1, "split": "eval"},  # on footage: real clip vs reference sample
    }])
    out = run(preset, tmp_path / "run", RunOptions(["sft"], [0], steps=2, eval_every=2, show_progress=False))
    with ResultStore(out / "results.sqlite") as store:
        records, ckpts, aggs = store.records(), store.checkpoints(), store.aggregates()
    probed = aggs[aggs["metric"].str.startswith("likelihood_displacement")]
    assert len(probed) == 1 and np.isfinite(probed["value"]).all()  # the sft checkpoint's displacement
    (pairs_meta,) = (out / "cache" / "pairs").glob("*.json")
    assert '"source": "footage"' in pairs_meta.read_text()
    assert sorted(zip(ckpts["method"], ckpts["step"], strict=True)) == [("base", 0), ("sft", 2)]
    assert len(records) == 2 * 3 and records["value"].notna().all()
    # `harness eval --checkpoint` on the run's LoRA checkpoint: the SVD base plus that LoRA, scored again.
    from harness.evaluate import evaluate_checkpoint

    ckpt = out / "checkpoints" / "sft" / "seed0" / "step000002"
    with ResultStore(evaluate_checkpoint(preset, ckpt, tmp_path / "eval", None, show_progress=False)) as store:
        again = store.records()
    trained = records[records["checkpoint_id"] == int(ckpts[ckpts["method"] == "sft"]["checkpoint_id"].iloc[0])]
    assert sorted(again["value"]) == pytest.approx(sorted(trained["value"]), abs=1e-6)
    from safetensors.torch import load_file

    from harness.evaluate import adapter_for
    from harness.models.svd import SVDAdapter

    loaded, saved = adapter_for(preset, ckpt), load_file(ckpt / "lora.safetensors")
    assert isinstance(loaded, SVDAdapter) and any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k)
    assert all(torch.equal(loaded.lora_state_dict()[k], v) for k, v in saved.items())


def test_shift_discriminators_train_and_run_on_a_real_clip_shape(pipelines, tmp_path):
    """`build motion-rm` on a real family and real footage of a non-square shape (SVD, 4 frames of
    16x24): the discriminators record that shape, SHIFT takes two steps with them, and the shipped
    tiny-world ones are refused naming the command that builds the right ones."""
    import numpy as np

    from harness.build.motion_rm import train_motion_rewards
    from harness.data.video_io import write_video
    from harness.scorers.errors import RewardError
    from harness.scorers.motion_rm import load_discriminator

    rng = np.random.default_rng(0)
    rows = ["video,caption"]
    for i in range(6):
        base = rng.integers(0, 256, (16, 24, 3)).astype(np.uint8)
        write_video(tmp_path / "videos" / f"v{i}.mp4", np.stack([np.roll(base, (i + 1) * t, axis=1) for t in range(8)]),
                    fps=8)
        rows.append(f"v{i}.mp4,texture moving at speed {i + 1}")
    (tmp_path / "videos" / "captions.csv").write_text("\n".join(rows) + "\n")
    preset = load_preset("tiny", [{
        "adapter": {"family": "svd", "path": str(pipelines / "svd"), "num_frames": 4, "height": 16, "width": 24,
                    "dtype": "float32"},
        "data": {"kind": "folder", "root": str(tmp_path / "videos"), "captions": "captions.csv", "num_frames": 4,
                 "fps": 8, "height": 16, "width": 24, "splits": {"finetune": 1.0}, "cache_dir": str(tmp_path / "c")},
        "sampler": {"num_steps": 2}, "eval": {"batch_size": 4}}])
    from harness.data.preferences import PairsError
    from trainers.preference import PairsConfig, load_pairs

    with pytest.raises(PairsError, match="ranks rollouts of the tiny world, which real footage .* is not; "
                                         "use source=file"):
        load_pairs(load_adapter(preset.adapter), preset, PairsConfig(split="finetune", conditions=2), None)
    online = {"batch_size": 2, "stages": [{"kind": "online", "steps": 1, "split": "finetune"}]}
    apo = trainer_for("apo", online)
    with pytest.raises(ConfigError, match=r"methods.apo.stages\[0\] \(online\) is ranked by the tiny world's "
                                          r"latent_rm.*ranker: vlm"):
        apo(load_adapter(preset.adapter), preset, apo.config_class(**online), 0)
    with pytest.raises(RewardError, match="unknown split 'prompts'"):
        train_motion_rewards(preset, tmp_path / "rm", ["imr"], clips=6, show_progress=False)
    records = train_motion_rewards(preset, tmp_path / "rm", ["imr", "lmr"], clips=6, negatives=1, steps=2,
                                   batch_size=4, split="finetune", map_size=(8, 12), show_progress=False)
    assert records["imr"]["data"]["videos"] == 12 and records["imr"]["data"]["split"] == "finetune"
    for kind in ("imr", "lmr"):
        disc = load_discriminator(kind, str(tmp_path / "rm" / kind))
        assert (disc.num_frames, disc.frame_size, disc.map_size) == (4, (16, 24), (8, 12))
    section = {**SMALL["shift"], "split": "finetune", "anchor_split": "finetune",
               "real": {"split": "finetune", "start": 0, "count": 4}}
    cls = trainer_for("shift", section)
    torch.manual_seed(0)
    with pytest.raises(ConfigError, match="methods.shift: the imr reward model reads 8 frames of 16x16 px.*"
                                          "build motion-rm --preset tiny"):
        cls(load_adapter(preset.adapter), preset, cls.config_class(**section), 0, workdir=tmp_path / "w0")
    section["reward_paths"] = {k: str(tmp_path / "rm" / k) for k in ("imr", "lmr")}
    trainer = cls(load_adapter(preset.adapter), preset, cls.config_class(**section), 0, workdir=tmp_path / "w")
    for step in range(2):
        logs = trainer.train_step(step)
        assert all(math.isfinite(v) for v in logs.values()), logs
    assert trainer.buffer_feats["imr"].shape[-2:] == (8, 12)  # residual maps at the working size


def test_fcrm_latent_reward_model_is_fitted_to_pairs_on_a_real_family(pipelines, tmp_path):
    """`build latent-rm --pairs footage` on a random Wan2.1 T2V and a folder of videos: the head learns
    to rank real clips over base samples on the frozen backbone's block tokens; FCRM then scores its
    rollouts with it, through the policy's own base (LoRA disabled). Another model's weights, the
    tiny world's head and a UNet family are refused, each naming the fix."""
    import numpy as np

    from harness.build.latent_rm import train_reward_on_pairs
    from harness.data.video_io import write_video
    from harness.scorers.errors import RewardError
    from harness.scorers.latent_rm import block_features, load_reward_model
    from trainers.rewards import build_reward

    rng = np.random.default_rng(0)
    rows = ["video,caption"]
    for i in range(12):
        base = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
        write_video(tmp_path / "videos" / f"v{i}.mp4", np.stack([np.roll(base, i % 4 + 1, axis=1)] * 8), fps=8)
        rows.append(f"v{i}.mp4,texture {i}")
    (tmp_path / "videos" / "captions.csv").write_text("\n".join(rows) + "\n")
    frames, side = GEOMETRY["wan21-t2v"]
    preset = load_preset("tiny", [{
        "adapter": {"family": "wan21-t2v", "path": str(pipelines / "wan21-t2v"), "num_frames": frames,
                    "height": side, "width": side, "dtype": "float32"},
        "data": {"kind": "folder", "root": str(tmp_path / "videos"), "captions": "captions.csv",
                 "num_frames": frames, "fps": 8, "height": side, "width": side, "splits": {"prompts": 1.0},
                 "cache_dir": str(tmp_path / "c")},
        "sampler": {"num_steps": 2}, "eval": {"batch_size": 4}}])
    record = train_reward_on_pairs(preset, "footage", tmp_path / "rm", conditions=12, steps=60, batch_size=4,
                                   lr=3e-3, show_progress=False)
    assert record["family"] == "wan21-t2v" and record["data"]["count"] == 12
    assert record["held_out"]["pairs"] == 2 and record["train"]["accuracy"] >= 0.9, record  # it learned the pairs
    assert (tmp_path / "rm" / "pairs").is_dir()  # the footage pairs are cached with the head

    section = {**SMALL["fcrm"], "reward": {"name": "latent_rm", "path": str(tmp_path / "rm")}}
    cls = trainer_for("fcrm", section)
    torch.manual_seed(0)
    trainer = cls(load_adapter(preset.adapter), preset, cls.config_class(**section), 0, workdir=tmp_path / "w")
    assert trainer.reward.model.shared and trainer.reward.model.backbone is trainer.adapter
    for step in range(2):
        logs = trainer.train_step(step)
        assert all(math.isfinite(v) for v in logs.values()), logs
    # The score is the base model's: a trained LoRA does not move it, and scoring leaves the policy in
    # the mode it found it in.
    assert any(float(v.abs().sum()) > 0 for k, v in trainer.adapter.lora_state_dict().items() if "lora_B" in k)
    x0 = torch.randn(trainer.adapter.latent_shape(2))
    cond = trainer.adapter.encode_condition(torch.zeros(2, 3, side, side), ["a", "b"])
    fresh = load_reward_model(tmp_path / "rm", load_adapter(preset.adapter))
    trainer.adapter.model.train()
    torch.testing.assert_close(trainer.reward.model.score(x0, cond), fresh.score(x0, cond), rtol=1e-5, atol=1e-6)
    assert trainer.adapter.model.training

    with pytest.raises(RewardError, match="fitted on the features of .*not on this model.*build latent-rm --preset"):
        load_reward_model(tmp_path / "rm", load_adapter(preset.adapter.model_copy(
            update={"path": str(pipelines / "wan21-i2v"), "family": "wan21-i2v"})))
    shipped = {**SMALL["fcrm"], "reward": {"name": "latent_rm"}}
    with pytest.raises(ConfigError, match="shipped latent_rm reads the tiny world's model, not wan21-t2v.*--pairs "
                                          "footage"):
        cls(load_adapter(preset.adapter), preset, cls.config_class(**shipped), 0, workdir=tmp_path / "w2")
    with pytest.raises(RewardError, match="reads the tiny world's model, not wan21-t2v.*--pairs footage"):
        build_reward("latent_rm", trainer.adapter, preset)  # built on its own, the reward says the same
    svd = load_adapter(_preset(pipelines, "svd").adapter)
    with pytest.raises(RewardError, match="no `blocks` \\(a UNet\\); use reward aesthetic"):
        block_features(svd, torch.randn(svd.latent_shape(1)), svd.encode_condition(torch.zeros(1, 3, 16, 16), ["a"]),
                       2, 0.0)
