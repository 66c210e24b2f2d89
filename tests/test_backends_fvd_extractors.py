"""FVD feature extractors: upstream key layouts, strict loading, conversion, output contracts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from harness import weights
from harness.scorers.backends.real import i3d as i3d_mod  # imported before init_random: registers the initialisers
from harness.scorers.backends.real import videomae as vm
from harness.scorers.backends.real.common import load_strict
from harness.weights import WeightsError

QUIET = {"log": lambda _msg: None}
TINY = dict(image_size=28, patch_size=14, num_frames=4, tubelet_size=2, hidden_size=64, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=128)


# ---------------------------------------------------------------- I3D


@pytest.fixture(scope="module")
def i3d_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(weights.CACHE_ENV, str(root))
        weights.init_random(["i3d_kinetics400"], **QUIET)
        yield root


@pytest.fixture(scope="module")
def i3d_clips():
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 9, 3, 224, 224, generator=g) * 2 - 1  # 9 frames: the fewest the (2, 7, 7) pool accepts


def test_i3d_layout_matches_pytorch_i3d():
    sd = i3d_mod.InceptionI3d().state_dict()
    expected = {  # hand-copied from piergiaj/pytorch-i3d's InceptionI3d
        "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
        "Conv3d_1a_7x7.bn.running_mean": (64,),
        "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
        "Mixed_3b.b0.conv3d.weight": (64, 192, 1, 1, 1),
        "Mixed_3b.b1a.conv3d.weight": (96, 192, 1, 1, 1),
        "Mixed_3b.b1b.conv3d.weight": (128, 96, 3, 3, 3),
        "Mixed_4f.b2b.bn.running_var": (128,),
        "Mixed_5c.b3b.conv3d.weight": (128, 832, 1, 1, 1),
        "logits.conv3d.weight": (400, 1024, 1, 1, 1),
        "logits.conv3d.bias": (400,),
    }
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    # only the logits conv has a bias, and no BN
    assert not any(k.startswith("logits.bn") or (k.endswith("conv3d.bias") and not k.startswith("logits")) for k in sd)
    tops = {"Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3", *i3d_mod.MIXED, "logits"}
    assert {k.split(".")[0] for k in sd} == tops
    # 57 conv units (conv weight + 4 BN tensors + BN counter) + the logits conv (weight, bias)
    assert len(sd) == 57 * 6 + 2
    bn = i3d_mod.InceptionI3d().Mixed_4b.b1b.bn
    assert (bn.eps, bn.momentum) == (1e-3, 0.01)


def test_same_padding_is_tf_same():
    x = torch.zeros(1, 1, 9, 224, 223)
    # TF SAME for k=7, s=2: out = ceil(n / 2); total pad = (out - 1) * 2 + 7 - n, the odd pixel at the end
    padded = i3d_mod._same_pad(x, (7, 7, 7), (2, 2, 2))
    assert padded.shape[2:] == (9 + 6, 224 + 5, 223 + 6)
    assert i3d_mod.Unit3D(1, 2, (7, 7, 7), (2, 2, 2), bn=False)(x).shape[2:] == (5, 112, 112)


def test_i3d_random_file_loads_strictly(i3d_cache):
    ext = i3d_mod.I3DExtractor(device="cpu")
    assert ext.identity == "i3d-k400(pytorch-i3d)/logits/random-weights" and ext.dim == 400
    file_sd = torch.load(i3d_cache / "fvd" / "rgb_imagenet.pt", weights_only=True)
    assert not any(k.endswith("num_batches_tracked") for k in file_sd)  # the PyTorch 0.3 layout
    own = ext.model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in file_sd.items())


def test_i3d_missing_or_misshapen_tensor_is_named(i3d_cache):
    file_sd = torch.load(i3d_cache / "fvd" / "rgb_imagenet.pt", weights_only=True)
    model = i3d_mod.InceptionI3d()
    missing = {k: v for k, v in file_sd.items() if k != "Mixed_5c.b3b.conv3d.weight"}
    with pytest.raises(WeightsError, match=r"1 missing \['Mixed_5c\.b3b\.conv3d\.weight'\]"):
        load_strict(model, i3d_mod._fill_bn_counters(model, missing), "I3D")
    wrong = {**file_sd, "logits.conv3d.weight": torch.zeros(401, 1024, 1, 1, 1)}
    with pytest.raises(WeightsError, match=r"logits\.conv3d\.weight: file \(401, 1024, 1, 1, 1\)"):
        load_strict(model, i3d_mod._fill_bn_counters(model, wrong), "I3D")


def test_i3d_logits_shape_and_batch_consistency(i3d_cache, i3d_clips):
    ext = i3d_mod.I3DExtractor(output="logits")
    both = ext(i3d_clips)
    assert both.shape == (2, 400) and both.dtype == torch.float32 and torch.isfinite(both).all()
    singles = torch.cat([ext(i3d_clips[:1]), ext(i3d_clips[1:])])
    scale = both.abs().max()
    assert torch.allclose(both, singles, rtol=1e-5, atol=1e-5 * scale)
    assert not torch.allclose(both[0], both[1])


def test_i3d_pooled_shape_determinism_and_logits_relation(i3d_cache, i3d_clips):
    ext = i3d_mod.I3DExtractor(output="pooled")
    assert ext.identity == "i3d-k400(pytorch-i3d)/pooled/random-weights" and ext.dim == 1024
    a, b = ext(i3d_clips[:1]), ext(i3d_clips[:1])
    assert a.shape == (1, 1024) and a.dtype == torch.float32 and torch.equal(a, b)
    # with 9 frames one time step is left, so the logits are the 1x1x1 logits conv of the pooled features
    w, bias = ext.model.logits.conv3d.weight.flatten(1), ext.model.logits.conv3d.bias
    _, logits = ext.model(i3d_clips[:1].permute(0, 2, 1, 3, 4))
    assert torch.allclose(logits, a @ w.T + bias, rtol=1e-5, atol=1e-4)


def test_i3d_bad_arguments(i3d_cache):
    with pytest.raises(ValueError, match="pooled"):
        i3d_mod.I3DExtractor(output="features")
    ext = i3d_mod.I3DExtractor()
    with pytest.raises(ValueError, match=r"\(B, T, 3, H, W\)"):
        ext(torch.zeros(1, 3, 9, 224, 224))


def test_missing_weight_file_names_it(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path))
    with pytest.raises(WeightsError, match=r"fvd/rgb_imagenet\.pt.*prefetch i3d_kinetics400"):
        i3d_mod.I3DExtractor()
    with pytest.raises(WeightsError, match=r"vit_g_hybrid_pt_1200e_k710_ft\.pth"):
        vm.VideoMAEv2Extractor()


class _FakeStyleGANVI3D(torch.nn.Module):
    """Stands in for i3d_torchscript.pt: reports how it was called."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 400)
        out[:, 0], out[:, 1], out[:, 2] = float(rescale), float(resize), float(return_features)
        out[:, 3], out[:, 4], out[:, 5] = float(x.shape[1]), float(x.shape[2]), float(x.shape[3])
        out[:, 6], out[:, 7] = x.flatten(1).min(1).values, x.flatten(1).max(1).values
        return out


def test_i3d_torchscript_is_called_like_stylegan_v(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    (tmp_path / "src").mkdir()
    torch.jit.save(torch.jit.script(_FakeStyleGANVI3D()), str(tmp_path / "src" / "i3d_torchscript.pt"))
    (fetched,) = weights.prefetch(["i3d_torchscript"], source_dir=tmp_path / "src", **QUIET)
    weights.pin("i3d_torchscript", fetched.sha256, **QUIET)  # TorchScript runs code: loaded only once pinned
    ext = i3d_mod.I3DExtractor("i3d_torchscript")
    assert ext.identity == "i3d-k400(stylegan-v-torchscript)/logits" and ext.dim == 400
    clips = torch.linspace(-1, 1, 2 * 5 * 3 * 8 * 8).reshape(2, 5, 3, 8, 8)
    out = ext(clips)
    assert out.shape == (2, 400) and out.dtype == torch.float32
    # The plain call (protocol=harness: clips already resized here): rescale=False, resize=False,
    # return_features=True on (B, 3, T, H, W), values passed through in [-1, 1]. StyleGAN-V's own call
    # (rescale=True, resize=True on raw uint8) is detector_call, tested with the stylegan-v protocol.
    assert out[0, :6].tolist() == [0.0, 0.0, 1.0, 3.0, 5.0, 8.0]
    assert out[:, 6].min() == -1 and out[:, 7].max() == 1
    with pytest.raises(ValueError, match="TorchScript"):
        i3d_mod.I3DExtractor("i3d_torchscript", output="pooled")


# ---------------------------------------------------------------- VideoMAE-v2


def _sinusoid(n, d):
    """Upstream's get_sinusoid_encoding_table, vectorised: sin on even, cos on odd channels."""
    angle = torch.arange(n, dtype=torch.float64)[:, None] / 10000 ** (2 * (torch.arange(d) // 2) / d)
    return torch.where(torch.arange(d) % 2 == 0, angle.sin(), angle.cos()).float().unsqueeze(0)


def _random_upstream(config, num_classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.1 + (1.0 if "norm" in k and k.endswith("weight") else 0.0)
            for k, s in vm.upstream_layout(config, num_classes).items()}


def test_videomae_real_size_layout_on_meta(monkeypatch):
    from transformers.models.videomae import modeling_videomae

    # the table is not part of the state dict; the per-element numpy original takes seconds at 2048 x 1408
    monkeypatch.setattr(modeling_videomae, "get_sinusoid_encoding_table", _sinusoid)
    config = vm.videomae_v2_config()
    layout = vm.upstream_layout(config, 710)
    # spot checks against modeling_finetune.vit_giant_patch14_224 (embed 1408, depth 40, mlp_ratio 48/11)
    assert layout["patch_embed.proj.weight"] == (1408, 3, 2, 14, 14)
    assert layout["blocks.39.attn.qkv.weight"] == (4224, 1408) and layout["blocks.39.attn.q_bias"] == (1408,)
    assert layout["blocks.0.mlp.fc1.weight"] == (6144, 1408) and layout["head.weight"] == (710, 1408)
    assert len(layout) == 2 + 40 * 13 + 4 and "blocks.40.norm1.weight" not in layout
    assert sum(math.prod(s) for s in layout.values()) == pytest.approx(1.01e9, rel=0.01)
    with torch.device("meta"):
        model = vm.build_videomae_v2()
        converted = vm.convert_videomae_v2({k: torch.empty(s) for k, s in layout.items()}, 40)
    own = model.state_dict()
    assert set(converted) == set(own)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in own.items()}
    assert tuple(model.videomae.embeddings.position_embeddings.shape) == (1, 2048, 1408)  # fixed, not a parameter
    assert model.fc_norm.eps == 1e-6 and model.videomae.encoder.layer[0].layernorm_before.eps == 1e-6


def _reference_forward(sd, config, clips):
    """modeling_finetune.VisionTransformer.forward_features + head, written from its equations."""
    d, heads, t, p = config.hidden_size, config.num_attention_heads, config.tubelet_size, config.patch_size
    x = F.conv3d(clips.permute(0, 2, 1, 3, 4), sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"],
                 stride=(t, p, p)).flatten(2).transpose(1, 2)
    n = x.shape[1]
    x = x + _sinusoid(n, d)
    for i in range(config.num_hidden_layers):
        b = f"blocks.{i}."
        h = F.layer_norm(x, (d,), sd[b + "norm1.weight"], sd[b + "norm1.bias"], eps=1e-6)
        bias = torch.cat([sd[b + "attn.q_bias"], torch.zeros(d), sd[b + "attn.v_bias"]])
        q, k, v = F.linear(h, sd[b + "attn.qkv.weight"], bias).reshape(len(x), n, 3, heads, -1).permute(2, 0, 3, 1, 4)
        attn = ((q * (d // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        x = x + F.linear((attn @ v).transpose(1, 2).reshape(len(x), n, d), sd[b + "attn.proj.weight"],
                         sd[b + "attn.proj.bias"])
        h = F.layer_norm(x, (d,), sd[b + "norm2.weight"], sd[b + "norm2.bias"], eps=1e-6)
        x = x + F.linear(F.gelu(F.linear(h, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"])),
                         sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
    feats = F.layer_norm(x.mean(1), (d,), sd["fc_norm.weight"], sd["fc_norm.bias"], eps=1e-6)
    return feats, F.linear(feats, sd["head.weight"], sd["head.bias"])


def test_videomae_converter_round_trip_tiny():
    config = vm.videomae_v2_config(TINY)
    up = _random_upstream(config, 7)
    model = vm.build_videomae_v2(TINY, num_classes=7).eval()
    load_strict(model, vm.convert_videomae_v2(up, 2), "tiny")
    att = model.videomae.encoder.layer[1].attention.attention
    qkv = up["blocks.1.attn.qkv.weight"]
    assert torch.equal(att.query.weight, qkv[:64]) and torch.equal(att.key.weight, qkv[64:128])
    assert torch.equal(att.value.weight, qkv[128:])
    assert torch.equal(att.query.bias, up["blocks.1.attn.q_bias"])
    assert torch.equal(att.value.bias, up["blocks.1.attn.v_bias"])
    assert att.key.bias is None  # upstream's k bias is a constant zero
    clips = torch.rand(2, 4, 3, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        feats, logits = model(clips)
    ref_feats, ref_logits = _reference_forward(up, config, clips)
    assert torch.allclose(feats, ref_feats, atol=1e-4) and torch.allclose(logits, ref_logits, atol=1e-4)


def test_videomae_converter_names_missing_extra_and_misshapen():
    config = vm.videomae_v2_config(TINY)
    up = _random_upstream(config, 7)
    with pytest.raises(WeightsError, match=r"missing upstream tensor 'blocks\.1\.attn\.v_bias'"):
        vm.convert_videomae_v2({k: v for k, v in up.items() if k != "blocks.1.attn.v_bias"}, 2)
    with pytest.raises(WeightsError, match=r"blocks\.0\.gamma_1"):  # a layer-scale variant
        vm.convert_videomae_v2({**up, "blocks.0.gamma_1": torch.ones(64)}, 2)
    with pytest.raises(WeightsError, match=r"blocks\.2\.norm1\.weight"):  # a deeper model
        vm.convert_videomae_v2({**up, "blocks.2.norm1.weight": torch.ones(64)}, 2)
    model = vm.build_videomae_v2(TINY, num_classes=7)
    with pytest.raises(WeightsError, match=r"head\.weight: file \(8, 64\) vs model \(7, 64\)"):
        load_strict(model, vm.convert_videomae_v2({**up, "head.weight": torch.zeros(8, 64)}, 2), "tiny")


@pytest.fixture(scope="module")
def tiny_videomae_cache(tmp_path_factory):
    """A tiny upstream-layout file installed under the K710 entry's name, as `prefetch --from` would."""
    root = tmp_path_factory.mktemp("vm")
    (root / "src").mkdir()
    vm.write_random_videomae(root / "src" / "vit_g_hybrid_pt_1200e_k710_ft.pth", TINY)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(weights.CACHE_ENV, str(root / "cache"))
        weights.prefetch(["videomae_v2_g_k710"], source_dir=root / "src", **QUIET)
        yield root


def test_videomae_extractor_outputs(tiny_videomae_cache):
    ext = vm.VideoMAEv2Extractor(config_overrides=TINY)
    assert ext.identity == "videomae-v2(videomae_v2_g_k710)/fc_norm/norm=none/custom-config" and ext.dim == 64
    clips = torch.rand(2, 4, 3, 28, 28, generator=torch.Generator().manual_seed(5))
    both = ext(clips)
    assert both.shape == (2, 64) and both.dtype == torch.float32
    assert torch.equal(both, ext(clips))
    assert torch.allclose(both, torch.cat([ext(clips[:1]), ext(clips[1:])]), atol=1e-5)
    logits = vm.VideoMAEv2Extractor(output="logits", config_overrides=TINY)
    assert logits.dim == 710 and logits(clips).shape == (2, 710)
    # the file's fp16 values are what the model holds; output matches the reference forward of those values
    file_sd = torch.load(tiny_videomae_cache / "cache" / "fvd" / "vit_g_hybrid_pt_1200e_k710_ft.pth", weights_only=True)
    ref, _ = _reference_forward({k: v.float() for k, v in file_sd.items()}, vm.videomae_v2_config(TINY), clips)
    assert torch.allclose(both, ref, atol=1e-4)


def test_videomae_normalisation_and_bad_input(tiny_videomae_cache):
    plain = vm.VideoMAEv2Extractor(config_overrides=TINY)
    imnet = vm.VideoMAEv2Extractor(config_overrides=TINY, normalise="imagenet")
    assert imnet.identity.endswith("/norm=imagenet/custom-config")
    clips = torch.rand(1, 4, 3, 28, 28, generator=torch.Generator().manual_seed(6))
    mean = torch.tensor(vm.IMAGENET_MEAN).view(1, 1, 3, 1, 1)
    std = torch.tensor(vm.IMAGENET_STD).view(1, 1, 3, 1, 1)
    assert torch.allclose(imnet(clips), plain((clips - mean) / std), atol=1e-5)
    with pytest.raises(ValueError, match=r"\(B, 4, 3, 28, 28\)"):
        plain(torch.rand(1, 5, 3, 28, 28))
    with pytest.raises(ValueError, match="normalise"):
        vm.VideoMAEv2Extractor(config_overrides=TINY, normalise="clip")


def test_videomae_random_initialisers_registered():
    # the real-size writers (~2 GB each) are registered but not run here; their layout is checked on meta above
    assert {"i3d_kinetics400", "videomae_v2_g_k710", "videomae_v2_g_ssv2"} <= set(weights._RANDOM_WRITERS)
    assert "i3d_torchscript" not in weights._RANDOM_WRITERS


# ---------------------------------------------------------------- FVD reference from a preset's footage


def test_fvd_reference_is_the_presets_real_split(i3d_cache, tmp_path, monkeypatch):
    """ref=split:eval: the reference statistics are the features of the first n_ref clips of the
    preset's eval split as its data loader decodes them, cached once under a key of those clips;
    a preset without footage, an unknown split or an unbound metric is refused by name."""
    from types import SimpleNamespace

    import numpy as np

    from harness.data.folder import VideoDataConfig
    from harness.data.source import dataset_for
    from harness.data.video_io import write_video
    from metrics.base import VideoSample
    from metrics.fvd import FVD, cache_dir

    monkeypatch.setenv(weights.CACHE_ENV, str(i3d_cache))  # another module fixture may have set its own
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for i in range(4):
        base = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
        write_video(root / f"v{i}.mp4", np.stack([np.roll(base, 2 * t, axis=1) for t in range(10)]), fps=8)
    (root / "captions.csv").write_text("video,caption\n" + "".join(f"v{i}.mp4,clip {i}\n" for i in range(4)))
    data = VideoDataConfig(kind="folder", root=str(root), captions="captions.csv", num_frames=9, fps=8, height=32,
                           width=32, splits={"eval": 1.0}, disk_cache=False)
    preset = SimpleNamespace(name="real", data=data)

    fvd = FVD(features="i3d", ref="split:eval", clip_len=9, n_ref=3, protocol="harness")
    assert "ref=split:eval" in fvd.identity and "n_ref=3" in fvd.identity
    with pytest.raises(ValueError, match="no preset was bound"):
        fvd.reference()
    fvd.use_source(preset)
    stats = fvd.reference()
    clips = dataset_for(preset).split("eval")
    assert len(clips) == 4 and stats.n == 3
    by_hand = np.stack([fvd._clip_features(dataset_for(preset).clip(c)) for c in clips[:3]])
    np.testing.assert_allclose(stats.sum / stats.n, by_hand.mean(0), rtol=1e-6)
    assert len(list(cache_dir().glob("*.npz"))) == 1
    for i in range(3):  # generated videos against it: a finite distance with the counts recorded
        frames = np.stack([np.roll(rng.integers(0, 256, (32, 32, 3)).astype(np.uint8), t, axis=0) for t in range(9)])
        fvd.update(VideoSample(video_id=f"g{i}", frames=frames, fps=8))
    assert np.isfinite(fvd.compute()) and fvd.compute_extras["n_ref"] == 3

    # other clips: another cache entry
    wider = FVD(features="i3d", ref="split:eval", clip_len=9, n_ref=4, protocol="harness")
    wider.use_source(preset)
    assert wider.reference().n == 4 and len(list(cache_dir().glob("*.npz"))) == 2
    with pytest.raises(ValueError, match="has no `data`"):
        FVD(features="i3d", ref="split:eval", clip_len=9, protocol="harness").use_source(
            SimpleNamespace(name="tiny", data=None))
    with pytest.raises(ValueError, match="unknown split 'train'"):
        FVD(features="i3d", ref="split:train", clip_len=9, protocol="harness").use_source(preset)
    with pytest.raises(ValueError, match="names no split"):
        FVD(features="i3d", ref="split:", clip_len=9, protocol="harness")
