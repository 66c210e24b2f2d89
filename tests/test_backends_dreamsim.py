"""DreamSim ensemble backend: upstream layouts load strictly, LoRA merge, batching, missing files, i2v_background."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

from harness import weights
from harness.scorers.backends.real import dreamsim as ds
from harness.scorers.backends.real import vit
from harness.scorers.backends.real.common import load_strict, read_state_dict
from harness.weights import WeightsError

ALL = ["dino_vitb16", *ds.WEIGHTS[1:]]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(weights.CACHE_ENV, str(root))
        weights.init_random(ALL, log=lambda _: None)
        ds._ensemble_from.cache_clear()
        yield root
        ds._ensemble_from.cache_clear()


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_modules_have_the_upstream_key_names_and_shapes():
    with torch.device("meta"):  # shapes only
        dino, clip, open_clip = (ds.make_branch(i) for i in range(3))
        lora = ds.lora_tree(16)
        dino_file = vit.DinoViT()  # the layout of dino_vitbase16_pretrain.pth
    d = _shapes(dino)
    assert d == _shapes(dino_file)
    assert d["pos_embed"] == (1, 197, 768) and d["blocks.11.attn.qkv.weight"] == (2304, 768) and len(d) == 150
    for c in (_shapes(clip), _shapes(open_clip)):  # DreamSim's CLIP-as-DINO conversion
        assert c["patch_embed.proj.weight"] == (768, 3, 16, 16) and c["patch_embed.proj.bias"] == (768,)
        assert c["pos_drop.weight"] == (768,) and c["pos_drop.bias"] == (768,)  # CLIP's ln_pre
        assert c["proj"] == (768, 512) and c["norm.weight"] == (768,)
        assert c["blocks.0.mlp.fc1.weight"] == (3072, 768) and c["blocks.11.attn.proj.bias"] == (768,)
        assert len(c) == 150 + 3
    assert all(m.eps == 1e-5 for m in clip.modules() if isinstance(m, torch.nn.LayerNorm))
    assert all(m.eps == 1e-6 for m in dino.modules() if isinstance(m, torch.nn.LayerNorm))
    lo = _shapes(lora)
    assert lo["base_model.model.extractor_list.0.model.blocks.0.attn.qkv.lora_A.weight"] == (16, 768)
    assert lo["base_model.model.extractor_list.2.model.blocks.11.attn.qkv.lora_B.weight"] == (2304, 16)
    assert len(lo) == 3 * 12 * 2


def test_random_files_are_in_the_upstream_layouts_and_load_strictly(cache):
    raw = torch.load(cache / "dreamsim" / "clip_vitb16_pretrain.pth.tar", weights_only=True)
    assert list(raw) == ["state_dict"] and tuple(raw["state_dict"]["proj"].shape) == (768, 512)
    config = json.loads((cache / "dreamsim" / "ensemble_lora" / "adapter_config.json").read_text())
    assert config["target_modules"] == ["qkv"] and ds.lora_scaling(config, "cfg") == (16, 0.5)
    for i, name in enumerate(ds.TOWER_WEIGHTS):
        branch = ds._load_branch(i, weights.resolve(name))
        assert torch.isfinite(branch.blocks[0].attn.qkv.weight).all()
    adapters, scaling = ds.load_adapters(weights.resolve(ds.LORA_WEIGHT), weights.resolve(ds.LORA_CONFIG))
    assert scaling == 0.5


def test_a_renamed_or_misshapen_tensor_is_refused_naming_it(cache):
    sd = read_state_dict(weights.resolve(ds.LORA_WEIGHT))
    key = "base_model.model.extractor_list.1.model.blocks.3.attn.qkv.lora_A.weight"
    sd[key.replace("lora_A", "lora_a")] = sd.pop(key)
    with pytest.raises(WeightsError, match=r"missing \['" + key.replace(".", r"\.") + r"'\].*unexpected"):
        load_strict(ds.lora_tree(16), sd, "lora")
    with torch.device("meta"):
        clip = ds.make_branch(1)
    sd = {k: torch.empty(v.shape, device="meta") for k, v in clip.state_dict().items()}
    sd["proj"] = torch.empty(768, 768, device="meta")
    with pytest.raises(WeightsError, match=r"proj: file \(768, 768\) vs model \(768, 512\)"):
        load_strict(clip, sd, "clip")
    with pytest.raises(WeightsError, match="target_modules"):
        ds.lora_scaling({"r": 16, "lora_alpha": 8, "target_modules": ["qkv", "proj"]}, "cfg")


def test_lora_merge_equals_the_unmerged_adapter_forward():
    torch.manual_seed(0)
    small = dict(dim=32, depth=2, heads=2)
    model = ds.DreamSimEnsemble([ds.make_branch(i, **small) for i in range(3)]).eval()
    adapters = ds.lora_tree(4, dim=32, depth=2)
    for p in adapters.parameters():
        torch.nn.init.normal_(p, std=0.3)
    qkv = model.branches[2].blocks[1].attn.qkv
    lora = adapters.base_model.model.extractor_list[2].model.blocks[1].attn.qkv
    x = torch.randn(5, 32)
    expected = qkv(x) + 0.25 * lora.lora_B(lora.lora_A(x))  # PEFT: base + scaling * B(A(x))
    ds.merge_lora(model, adapters, 0.25)
    torch.testing.assert_close(qkv(x), expected, atol=1e-5, rtol=1e-5)


def test_embedding_is_the_centred_concatenation_batched_equals_per_frame(cache):
    batched, single = ds.DreamSimEmbedder(device="cpu", batch=4), ds.DreamSimEmbedder(device="cpu", batch=1)
    assert batched.identity == "dreamsim-ensemble+random-weights"
    torch.manual_seed(0)
    small = ds.DreamSimEnsemble([ds.make_branch(i, depth=1, dim=64, heads=2) for i in range(3)])
    for p in small.parameters():
        torch.nn.init.normal_(p, std=0.05)
    batched.model = single.model = small.eval()  # batching is model-agnostic: a small ensemble keeps it fast
    rng = np.random.default_rng(0)
    videos = [
        rng.integers(0, 256, (3, 40, 72, 3), dtype=np.uint8),
        rng.integers(0, 256, (4, 64, 48, 3), dtype=np.uint8),
    ]
    x = batched.transform(videos[0], "cpu")
    assert tuple(x.shape) == (3, 3, 224, 224) and float(x.min()) < 0.0 < 1.0 < float(x.max())  # float bicubic
    with torch.no_grad():
        raw = small(x)
    assert raw.shape == (3, 64 + 512 + 512) and torch.allclose(raw.mean(-1), torch.zeros(3), atol=1e-5)
    for video, feats in zip(videos, batched.embed_many(videos), strict=True):
        per_frame = np.concatenate([single.embed(f[None]) for f in video])
        np.testing.assert_allclose(feats, per_frame, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-6)  # normalised in float32


def test_a_missing_file_names_itself_and_the_prefetch_command(cache):
    path = cache / "dreamsim" / "ensemble_lora" / "adapter_model.safetensors"
    path.rename(path.with_name("moved"))
    try:
        with pytest.raises(
            WeightsError,
            match=r"ensemble_lora/adapter_model\.safetensors.*"
            r"harness weights prefetch dreamsim_ensemble_lora",
        ):
            ds.DreamSimEmbedder(device="cpu")
    finally:
        path.with_name("moved").rename(path)


def test_the_release_zip_in_place_of_a_member_is_read_through_it(cache, tmp_path):
    member = ds.zip_member(ds.LORA_CONFIG)
    assert member == "ensemble_lora/adapter_config.json"
    src = weights.resolve(ds.LORA_CONFIG)
    archive = tmp_path / "dreamsim_ensemble_checkpoint.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("dino_vitb16_pretrain.pth", b"unused")
        zf.write(src.path, member)
    with ds.opened(weights.ResolvedWeight(src.name, archive, "x", "upstream-unpinned")) as f:
        assert json.loads(f.path.read_text()) == json.loads(src.path.read_text())
    with ds.opened(src) as f:
        assert f.path == src.path


def test_i2v_background_with_dreamsim_features(cache):
    from metrics import VideoSample, get_metric
    from metrics.synthetic import translating_texture

    frames = translating_texture(1.0, num_frames=3, size=24)
    m = get_metric("i2v_background", features="dreamsim")  # the real-size ensemble from the random files
    assert "dreamsim-ensemble+random-weights" in m.identity
    value = m.update(VideoSample("v", frames, 8.0, first_frame=frames[0]))["value"]
    assert np.isfinite(value) and 0.0 <= value <= 1.0
