"""DINO / CLIP / LAION backends: upstream layouts load strictly, VBench preprocessing, batching, sharing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness import weights
from harness.scorers.backends.real import vit
from harness.scorers.backends.real.common import load_strict
from harness.weights import WeightsError


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(weights.CACHE_ENV, str(root))
        weights.init_random(["dino_vitb16", "clip_vit_b32"], log=lambda _: None)
        vit._dino_from.cache_clear(), vit._clip_from.cache_clear(), vit._aesthetic_from.cache_clear()
        yield root
        vit._dino_from.cache_clear(), vit._clip_from.cache_clear(), vit._aesthetic_from.cache_clear()


def test_dino_and_clip_modules_have_the_upstream_key_names_and_shapes():
    dino = {k: tuple(v.shape) for k, v in vit.DinoViT().state_dict().items()}
    assert dino["pos_embed"] == (1, 197, 768) and dino["cls_token"] == (1, 1, 768)
    assert dino["patch_embed.proj.weight"] == (768, 3, 16, 16)
    assert dino["blocks.11.attn.qkv.weight"] == (2304, 768) and dino["blocks.0.mlp.fc2.weight"] == (768, 3072)
    assert len(dino) == 4 + 12 * 12 + 2
    clip = {k: tuple(v.shape) for k, v in vit.ClipVisual(**vit.CLIP_CONFIGS["clip_vit_b32"]).state_dict().items()}
    assert clip["conv1.weight"] == (768, 3, 32, 32) and "conv1.bias" not in clip
    assert clip["positional_embedding"] == (50, 768) and clip["proj"] == (768, 512)
    assert clip["transformer.resblocks.0.attn.in_proj_weight"] == (2304, 768)
    assert clip["transformer.resblocks.11.mlp.c_proj.weight"] == (768, 3072)
    with torch.device("meta"):  # shapes only: no memory for 300M parameters
        l14 = vit.ClipVisual(**vit.CLIP_CONFIGS["clip_vit_l14"]).state_dict()
    assert tuple(l14["positional_embedding"].shape) == (257, 1024) and tuple(l14["proj"].shape) == (1024, 768)


def test_a_renamed_or_misshapen_tensor_is_refused_naming_it():
    model = vit.DinoViT(depth=1)
    sd = dict(model.state_dict())
    sd["blocks.0.attn.qkv_renamed.weight"] = sd.pop("blocks.0.attn.qkv.weight")
    with pytest.raises(WeightsError, match=r"missing \['blocks.0.attn.qkv.weight'\].*unexpected"):
        load_strict(model, sd, "dino")
    sd = dict(model.state_dict())
    sd["pos_embed"] = torch.zeros(1, 50, 768)
    with pytest.raises(WeightsError, match="pos_embed: file"):
        load_strict(model, sd, "dino")


def test_vbench_resize_semantics():
    x = torch.full((1, 3, 480, 832), 7.0)
    y = vit.resize_short(x, 224, "bilinear")
    assert tuple(y.shape[-2:]) == (224, 388)  # torchvision: long side int(224 * 832 / 480)
    # float frames (upstream's load_video) stay float: torchvision rounds only integer tensors
    ramp = torch.arange(480 * 832, dtype=torch.float32).remainder(251).reshape(1, 1, 480, 832).expand(1, 3, -1, -1)
    assert not torch.equal(vit.resize_short(ramp, 224, "bilinear"), vit.resize_short(ramp, 224, "bilinear").round())
    t = vit.Transform(256, "bicubic", 224, vit.IMAGENET_MEAN, vit.IMAGENET_STD)
    assert tuple(t(np.zeros((2, 480, 832, 3), np.uint8), "cpu").shape) == (2, 3, 224, 224)
    # centre crop as torchvision: top = round((h - size) / 2)
    z = torch.arange(5 * 7, dtype=torch.float32).reshape(1, 1, 5, 7)
    assert vit.center_crop(z, 3)[0, 0, 0, 0] == z[0, 0, 1, 2]


def test_dino_position_grid_follows_the_non_square_input():
    model = vit.DinoViT(depth=1)
    pos = model.pos_encoding(224, 388)
    assert pos.shape[1] == 1 + 14 * 24
    assert torch.equal(model.pos_encoding(224, 224), model.pos_embed)


@pytest.mark.parametrize("name", ["dino-vitb16", "dino-vitb16-i2v", "clip-vitb32"])
def test_batched_across_videos_equals_one_frame_at_a_time(cache, name):
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 256, (3, 40, 72, 3), dtype=np.uint8), rng.integers(0, 256, (4, 64, 48, 3),
                                                                                 dtype=np.uint8)]
    batched, single = vit.EMBEDDERS[name](device="cpu", batch=5), vit.EMBEDDERS[name](device="cpu", batch=1)
    assert "random-weights" in batched.identity
    # The batching logic is model-agnostic: a one-block model of the same family keeps the test fast.
    small = vit.DinoViT(depth=1) if name.startswith("dino") else vit.ClipVisual(patch=32, width=64, layers=1,
                                                                                   heads=2, output_dim=16)
    torch.manual_seed(0)
    for p in small.parameters():
        torch.nn.init.normal_(p, std=0.05)
    batched.model = single.model = small.eval()
    for video, feats in zip(videos, batched.embed_many(videos), strict=True):
        per_frame = np.concatenate([single.embed(f[None]) for f in video])
        np.testing.assert_allclose(feats, per_frame, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-9)


def test_real_feature_metrics_carry_the_random_weights_mark(cache):
    from metrics import VideoSample, get_metric

    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
    sample = VideoSample("v", frames, 8.0, first_frame=frames[0])
    for name, features in [("background_consistency", "clip-vitb32"), ("i2v_subject", "dino-vitb16-i2v")]:
        m = get_metric(name, features=features)  # the real-size model loaded from the random file
        assert "random-weights" in m.identity
        assert 0.0 <= m.update(sample)["value"] <= 1.0


def test_shared_features_compute_each_embedder_once_per_set(monkeypatch):
    from harness.scorers.backends import features
    from metrics import VideoSample, get_metric

    calls = []
    real = features.TinyEmbedder.embed_many
    monkeypatch.setattr(features.TinyEmbedder, "embed_many", lambda self, v: calls.append(len(v)) or real(self, v))
    rng = np.random.default_rng(2)
    vids = [VideoSample(f"v{i}", f, 8.0, first_frame=f[0])
            for i, f in enumerate(rng.integers(0, 256, (3, 5, 16, 16, 3), dtype=np.uint8))]
    metrics = [get_metric("subject_consistency"), get_metric("i2v_subject"), get_metric("background_consistency")]
    with features.shared_features(vids):
        shared = [[m.update(v)["value"] for v in vids] for m in metrics]
    # one batched call per head for the whole set, plus one per conditioning image (not in the set)
    assert sorted(c for c in calls if c == 3) == [3, 3]
    for m in metrics:
        m.reset()
    alone = [[m.update(v)["value"] for v in vids] for m in metrics]
    np.testing.assert_allclose(shared, alone, atol=1e-6)
