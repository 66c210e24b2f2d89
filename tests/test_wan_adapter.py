"""WanAdapter on tiny random diffusers pipeline directories (Wan2.1 T2V, Wan2.1 I2V, Wan2.2 TI2V)."""

import json
import shutil
import warnings

import numpy as np
import PIL.Image
import pytest
import torch

from harness.models.components import ModelDirError
from harness.models.wan import (
    VARIANTS,
    WanAdapter,
    build_component,
    component_configs,
    parameter_count,
    write_random_pipeline,
)
from harness.sampling import SamplerConfig, integrate, sample, sample_latents

SIZES = {"wan21-t2v": 16, "wan21-i2v": 32, "wan22-ti2v": 64}  # I2V at the tiny CLIP resolution; TI2V: 2x2 tokens
NUM_FRAMES, MAX_LEN = 5, 16
CAPTIONS = ["a red circle moves left fast", "blue square stays still"]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {v: write_random_pipeline(root / v, v, size="tiny", seed=0) for v in VARIANTS}


def _load(dirs, variant, **kw):
    torch.manual_seed(0)
    size = SIZES[variant]
    return WanAdapter.from_pretrained(dirs[variant], variant, num_frames=NUM_FRAMES, height=size, width=size,
                                      max_sequence_length=MAX_LEN, **kw)


def _frames_uint8(variant, b=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(b, SIZES[variant], SIZES[variant], 3), dtype=np.uint8)


def _to_pixels(frames: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> (B, 3, H, W) in [-1, 1], computed as diffusers' VaeImageProcessor does."""
    x = torch.from_numpy(frames.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    return 2.0 * x - 1.0


def _inputs(adapter, variant, b=2):
    g = torch.Generator().manual_seed(1)
    cond = adapter.encode_condition(_to_pixels(_frames_uint8(variant, b)), CAPTIONS[:b])
    x = torch.randn(adapter.latent_shape(b), generator=g)
    return x, torch.tensor([0.3, 0.8])[:b], cond


def _pipeline(dirs, variant, image: bool):
    from diffusers import WanImageToVideoPipeline, WanPipeline

    cls = WanImageToVideoPipeline if image else WanPipeline
    return cls.from_pretrained(dirs[variant], local_files_only=True)


# -- shapes, spaces, conditions ------------------------------------------------------------------

@pytest.mark.parametrize("variant", list(VARIANTS))
def test_shapes_and_conditions(dirs, variant):
    adapter = _load(dirs, variant)
    size, b = SIZES[variant], 2
    z, spatial = (48, 16) if variant == "wan22-ti2v" else (16, 8)
    assert adapter.prediction_type == "flow" and adapter.family == "wan" and adapter.variant == variant
    assert adapter.latent_shape(b) == (b, z, 2, size // spatial, size // spatial)
    video = torch.rand(b, 3, NUM_FRAMES, size, size) * 2 - 1
    latents = adapter.encode_video(video)
    assert latents.shape == adapter.latent_shape(b)
    decoded = adapter.decode_latents(latents)
    assert decoded.shape == video.shape and torch.isfinite(decoded).all()

    x, sigma, cond = _inputs(adapter, variant)
    assert cond.text.shape == (b, MAX_LEN, 32) and cond.null_zeroes == ("text",)
    if variant == "wan21-t2v":
        assert cond.first_frame.shape == (b, 0) and cond.image is None
    elif variant == "wan21-i2v":
        assert cond.first_frame.shape == (b, 4 + z, 2, size // spatial, size // spatial)
        assert torch.equal(cond.first_frame[:, :4, 0], torch.ones_like(cond.first_frame[:, :4, 0]))
        assert torch.equal(cond.first_frame[:, :4, 1:], torch.zeros_like(cond.first_frame[:, :4, 1:]))
        assert cond.image.shape == (b, 17, 32)  # CLIP penultimate hidden states: CLS + 4x4 patches
    else:
        assert cond.first_frame.shape == (b, z, 1, size // spatial, size // spatial) and cond.image is None
    with torch.no_grad():
        v = adapter.predict(x, sigma, cond)
        assert v.shape == x.shape == adapter.latent_shape(b) and torch.isfinite(v).all()
        assert torch.equal(adapter.predict(x, 0.3, cond)[0], adapter.predict(x, torch.tensor([0.3, 0.3]), cond)[0])
        null = cond.null_text()
        empty = adapter.encode_text([""])  # the pipelines' default negative prompt, for every row
        assert torch.equal(null.text, empty.expand_as(cond.text)) and torch.equal(null.first_frame, cond.first_frame)
        assert not torch.allclose(adapter.predict(x, sigma, null), v)


def test_text_embeddings_match_pipeline_and_cache(dirs):
    from diffusers import WanPipeline

    adapter = _load(dirs, "wan21-t2v")
    pipe = _pipeline(dirs, "wan21-t2v", image=False)
    with torch.no_grad():
        ref = WanPipeline._get_t5_prompt_embeds(pipe, CAPTIONS, max_sequence_length=MAX_LEN,
                                                device=torch.device("cpu"))
    text = adapter.encode_text(CAPTIONS)
    assert torch.allclose(text, ref, atol=1e-6, rtol=0)
    n_tokens = adapter.tokenizer(CAPTIONS[1]).attention_mask.count(1)
    assert torch.all(text[1, n_tokens:] == 0) and torch.all(text[1, :n_tokens].abs().sum(-1) > 0)
    assert len(adapter.text_cache) == 2 and adapter.text_cache.misses == 2
    again = adapter.encode_text([CAPTIONS[1], CAPTIONS[1], CAPTIONS[0]])  # served from the cache
    assert adapter.text_cache.misses == 2 and adapter.text_cache.hits >= 2
    assert torch.equal(again[0], text[1]) and torch.equal(again[1], text[1]) and torch.equal(again[2], text[0])


def test_ti2v_first_frame_velocity_is_the_training_target(dirs):
    adapter = _load(dirs, "wan22-ti2v")
    size, g = SIZES["wan22-ti2v"], torch.Generator().manual_seed(3)
    video = torch.rand(2, 3, NUM_FRAMES, size, size, generator=g) * 2 - 1
    cond = adapter.encode_condition(video[:, :, 0], CAPTIONS)
    x0 = adapter.encode_video(video)
    assert torch.allclose(x0[:, :, :1], cond.first_frame, atol=1e-5)  # causal VAE: frame 0 alone
    noise, sigma = torch.randn(x0.shape, generator=g), torch.tensor([0.2, 0.9])
    x_t = adapter.add_noise(x0, noise, sigma)
    with torch.no_grad():
        v = adapter.predict(x_t, sigma, cond)
    target = adapter.training_target(x0, noise, sigma)
    assert torch.allclose(v[:, :, 0], target[:, :, 0], atol=1e-4)  # the conditioning frame adds no loss
    assert not torch.allclose(v[:, :, 1:], target[:, :, 1:], atol=1e-2)


# -- sampling ------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", list(VARIANTS))
def test_sampling_gives_finite_videos(dirs, variant):
    adapter = _load(dirs, variant)
    _, _, cond = _inputs(adapter, variant)
    size = SIZES[variant]
    for cfg in (SamplerConfig(kind="ode", num_steps=2), SamplerConfig(kind="ode", num_steps=2, guidance_scale=3.0)):
        videos = sample(adapter, cond, [0, 1], cfg)
        assert videos.shape == (2, 3, NUM_FRAMES, size, size) and torch.isfinite(videos).all()
        assert videos.abs().max() <= 1
    if variant == "wan22-ti2v":  # the ODE lands the first latent frame on the clean condition
        latents = sample_latents(adapter, cond, [0, 1], SamplerConfig(kind="ode", num_steps=2))
        assert torch.allclose(latents[:, :, :1], cond.first_frame, atol=1e-5)


# -- LoRA ----------------------------------------------------------------------------------------

def _perturb_lora(adapter, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapter.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_lora_roundtrip_through_diffusers(dirs, variant, tmp_path):
    adapter = _load(dirs, variant)
    x, sigma, cond = _inputs(adapter, variant)
    with torch.no_grad():
        base = adapter.predict(x, sigma, cond)
    adapter.add_lora(rank=4, alpha=8)
    trainable = [n for n, p in adapter.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    modules = {n.split(".lora_")[0].split(".", 2)[-1] for n in trainable}  # e.g. attn1.to_q
    expected = {f"{a}.{p}" for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0")}
    if variant == "wan21-i2v":
        expected |= {"attn2.add_k_proj", "attn2.add_v_proj"}
    assert modules == expected
    assert not any(p.requires_grad for m in (adapter.vae, adapter.text_encoder) for p in m.parameters())
    with torch.no_grad():
        assert torch.equal(adapter.predict(x, sigma, cond), base)  # B = 0 at start
    _perturb_lora(adapter)
    with torch.no_grad():
        tuned = adapter.predict(x, sigma, cond)
        assert not torch.allclose(tuned, base)
        with adapter.reference():
            assert torch.equal(adapter.predict(x, sigma, cond), base)
        assert torch.equal(adapter.predict(x, sigma, cond), tuned)

    weights = adapter.save_lora(tmp_path / "lora")
    assert weights.name == "pytorch_lora_weights.safetensors" and weights.is_file()
    pipe = _pipeline(dirs, variant, image=variant == "wan21-i2v")
    pipe.load_lora_weights(tmp_path / "lora")
    inputs = {"hidden_states": torch.randn(2, adapter.model.config.in_channels, *adapter.latent_shape(2)[2:]),
              "timestep": torch.tensor([300.0, 800.0]), "encoder_hidden_states": cond.text,
              "encoder_hidden_states_image": cond.image, "return_dict": False}
    with torch.no_grad():
        ours = adapter.model(**inputs)[0]
        theirs = pipe.transformer(**inputs)[0]
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradient_checkpointing_gives_the_same_gradients(dirs, variant):
    adapter = _load(dirs, variant)
    x, sigma, cond = _inputs(adapter, variant)
    adapter.add_lora(rank=4, alpha=4)
    _perturb_lora(adapter)

    def grads():
        adapter.model.zero_grad(set_to_none=True)
        adapter.predict(x, sigma, cond).pow(2).mean().backward()
        return {n: p.grad.clone() for n, p in adapter.model.named_parameters() if p.requires_grad}

    plain = grads()
    adapter.enable_gradient_checkpointing()
    assert adapter.model.gradient_checkpointing
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    assert any(g.abs().sum() > 0 for g in plain.values())
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-5, rtol=0), name


# -- the adapter against the diffusers pipeline itself ------------------------------------------

@pytest.mark.parametrize("variant", list(VARIANTS))
def test_euler_steps_match_the_diffusers_pipeline(dirs, variant):
    """Same noise, prompt embeddings and first frame: the pipeline with a flow-matching Euler scheduler
    (shift 1) and our velocity integrated on the pipeline's sigmas give the same latents, so timestep,
    channel concatenation, first-frame mask, CLIP embedding and expand_timesteps assembly agree."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    adapter = _load(dirs, variant)
    size, image = SIZES[variant], variant != "wan21-t2v"
    frames = _frames_uint8(variant, b=1, seed=5)
    cond = adapter.encode_condition(_to_pixels(frames), CAPTIONS[:1])
    noise = torch.randn(adapter.latent_shape(1), generator=torch.Generator().manual_seed(7))

    pipe = _pipeline(dirs, variant, image=image)
    if variant == "wan22-ti2v":
        assert pipe.config.expand_timesteps
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    kwargs = {"image": PIL.Image.fromarray(frames[0])} if image else {}
    calls = []
    hook = pipe.transformer.register_forward_hook(
        lambda m, args, kw, out: calls.append((kw["hidden_states"].clone(), kw["timestep"].clone(), out[0].clone())),
        with_kwargs=True)
    out = pipe(prompt_embeds=cond.text, height=size, width=size, num_frames=NUM_FRAMES, num_inference_steps=2,
               guidance_scale=1.0, latents=noise.clone(), output_type="latent", return_dict=False,
               max_sequence_length=MAX_LEN, **kwargs)[0]
    hook.remove()
    sigmas = pipe.scheduler.sigmas.to(torch.float64)
    assert len(calls) == 2 and torch.allclose(sigmas, torch.tensor([1.0, 0.001, 0.0], dtype=torch.float64))

    # One Euler step: our velocity at sigma = 1 is the pipeline's transformer output on the same input.
    with torch.no_grad():
        v = adapter.predict(noise, 1.0, cond)
    v_pipe = calls[0][2]
    if variant == "wan22-ti2v":
        per_frame = (size // 16 // 2) ** 2  # tokens per latent frame
        assert calls[0][1].shape == (1, 2 * per_frame)
        assert torch.all(calls[0][1][0, :per_frame] == 0)  # first-frame tokens at timestep 0 ...
        assert torch.all(calls[0][1][0, per_frame:] == 1000)  # ... the rest at 1000
        v_pipe = v_pipe[:, :, 1:]  # the pipeline discards the first frame's velocity; ours is (x - c) / sigma
        v, v_first = v[:, :, 1:], v[:, :, :1]
        assert torch.allclose(v_first, noise[:, :, :1] - cond.first_frame, atol=1e-6)
    assert torch.allclose(v, v_pipe, atol=1e-5, rtol=0)

    # The whole 2-step trajectory on the pipeline's sigmas.
    with torch.no_grad():
        ours = integrate(lambda x, s: adapter.predict(x, s, cond), noise.clone(), sigmas,
                         SamplerConfig(kind="ode", num_steps=2))
    assert torch.allclose(ours, out, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cfg_matches_the_diffusers_pipeline(dirs, variant, monkeypatch):
    """CFG 3 with the pipeline's default negative prompt (""): the transformer's unconditional call in
    the pipeline is our prediction on ``cond.null_text()`` (UMT5 of "", image conditions kept), and
    the guided 2-step trajectories agree."""
    import importlib
    from types import SimpleNamespace

    from diffusers import FlowMatchEulerDiscreteScheduler

    from harness.sampling import guided_velocity

    # The pipelines clean prompts with ftfy, which is not a dependency; it leaves "" unchanged.
    for module in ("pipeline_wan", "pipeline_wan_i2v"):
        monkeypatch.setattr(importlib.import_module(f"diffusers.pipelines.wan.{module}"), "ftfy",
                            SimpleNamespace(fix_text=lambda text: text), raising=False)

    adapter = _load(dirs, variant)
    size, image = SIZES[variant], variant != "wan21-t2v"
    frames = _frames_uint8(variant, b=1, seed=5)
    cond = adapter.encode_condition(_to_pixels(frames), CAPTIONS[:1])
    assert not torch.equal(cond.null_text().text, torch.zeros_like(cond.text))  # not a zero caption
    noise = torch.randn(adapter.latent_shape(1), generator=torch.Generator().manual_seed(7))
    pipe = _pipeline(dirs, variant, image=image)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    kwargs = {"image": PIL.Image.fromarray(frames[0])} if image else {}
    calls = []
    hook = pipe.transformer.register_forward_hook(
        lambda m, args, kw, out: calls.append((kw["encoder_hidden_states"].clone(), out[0].clone())),
        with_kwargs=True)
    out = pipe(prompt_embeds=cond.text, height=size, width=size, num_frames=NUM_FRAMES, num_inference_steps=2,
               guidance_scale=3.0, latents=noise.clone(), output_type="latent", return_dict=False,
               max_sequence_length=MAX_LEN, **kwargs)[0]
    hook.remove()
    assert len(calls) == 4  # conditional, then unconditional, per step
    torch.testing.assert_close(calls[1][0], cond.null_text().text, atol=1e-6, rtol=0)
    with torch.no_grad():
        v_null = adapter.predict(noise, 1.0, cond.null_text())
        first = slice(1, None) if variant == "wan22-ti2v" else slice(None)  # see the Euler-step test
        torch.testing.assert_close(v_null[:, :, first], calls[1][1][:, :, first], atol=1e-5, rtol=0)
        sigmas = pipe.scheduler.sigmas.to(torch.float64)
        ours = integrate(guided_velocity(adapter, cond, 3.0, 0.0, []), noise.clone(), sigmas,
                         SamplerConfig(kind="ode", num_steps=2, guidance_scale=3.0))
    torch.testing.assert_close(ours, out, atol=1e-5, rtol=0)


# -- directory validation and geometry ----------------------------------------------------------

def test_missing_component_folder(dirs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(dirs["wan21-i2v"], broken)
    shutil.rmtree(broken / "image_encoder")
    with pytest.raises(ModelDirError, match="image_encoder") as err:
        WanAdapter.from_pretrained(broken, "wan21-i2v", num_frames=5, height=32, width=32)
    assert "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers" in str(err.value)
    with pytest.raises(ModelDirError, match="image_encoder"):  # a T2V directory is not an I2V model
        WanAdapter.from_pretrained(dirs["wan21-t2v"], "wan21-i2v", num_frames=5, height=32, width=32)


def test_wrong_class_in_model_index(dirs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(dirs["wan21-t2v"], broken)
    index = json.loads((broken / "model_index.json").read_text())
    index["vae"] = ["diffusers", "AutoencoderKL"]
    (broken / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelDirError) as err:
        WanAdapter.from_pretrained(broken, "wan21-t2v", num_frames=5, height=16, width=16)
    assert "AutoencoderKL " in str(err.value) and "AutoencoderKLWan" in str(err.value)


def test_ti2v_needs_expand_timesteps(dirs):
    with pytest.raises(ModelDirError, match="expand_timesteps"):
        WanAdapter.from_pretrained(dirs["wan21-t2v"], "wan22-ti2v", num_frames=5, height=32, width=32)


def test_geometry_is_checked(dirs):
    with pytest.raises(ValueError, match=r"4k\+1.*nearest valid: 5 or 9"):
        WanAdapter.from_pretrained(dirs["wan21-t2v"], "wan21-t2v", num_frames=8, height=16, width=16)
    with pytest.raises(ValueError, match="width=24 is not divisible by 16 = VAE spatial factor 8 x transformer patch"):
        WanAdapter.from_pretrained(dirs["wan21-t2v"], "wan21-t2v", num_frames=5, height=16, width=24)
    with pytest.raises(ValueError, match="height=48 is not divisible by 32"):
        WanAdapter.from_pretrained(dirs["wan22-ti2v"], "wan22-ti2v", num_frames=5, height=48, width=32)
    with pytest.raises(ValueError, match="unknown Wan variant"):
        WanAdapter.from_pretrained(dirs["wan21-t2v"], "wan3", num_frames=5, height=16, width=16)


# -- the published architectures, without memory -------------------------------------------------

@pytest.mark.parametrize("variant,billions", [("wan21-t2v", 1.42), ("wan21-i2v", 16.39), ("wan22-ti2v", 5.00)])
def test_real_configs_have_the_published_sizes(variant, billions):
    cfgs = component_configs(variant, "real")
    with torch.device("meta"):
        counts = {name: parameter_count(build_component(name, cfg)) for name, cfg in cfgs.items()}
    assert counts["transformer"] / 1e9 == pytest.approx(billions, abs=0.01)
    assert counts["text_encoder"] / 1e9 == pytest.approx(5.68, abs=0.01)  # UMT5-XXL encoder
    assert counts["vae"] / 1e6 == pytest.approx(705 if variant == "wan22-ti2v" else 127, abs=1)
    if variant == "wan21-i2v":
        assert counts["image_encoder"] / 1e6 == pytest.approx(631, abs=1)  # ViT-H/14 vision tower
        assert cfgs["transformer"]["in_channels"] == 36 and cfgs["transformer"]["added_kv_proj_dim"] == 5120
    assert len(cfgs["vae"]["latents_mean"]) == len(cfgs["vae"]["latents_std"]) == cfgs["vae"]["z_dim"]


def test_bfloat16_transformer(dirs):
    """bf16 transformer, float32 VAE / encoders on the CPU; float32 LoRA; outputs follow the input dtype."""
    adapter = _load(dirs, "wan22-ti2v", dtype=torch.bfloat16)
    assert adapter.dtype == torch.bfloat16 and adapter.vae.dtype == adapter.text_encoder.dtype == torch.float32
    x, sigma, cond = _inputs(adapter, "wan22-ti2v")
    adapter.add_lora(rank=4, alpha=4)
    assert {p.dtype for p in adapter.trainable_parameters()} == {torch.float32}
    v = adapter.predict(x, sigma, cond)
    assert v.dtype == torch.float32 and torch.isfinite(v).all()
    v.pow(2).mean().backward()
    assert all(p.grad is not None for p in adapter.trainable_parameters())
    latents = sample_latents(adapter, cond, [0, 1], SamplerConfig(kind="ode", num_steps=2))
    assert torch.allclose(latents[:, :, :1], cond.first_frame, atol=1e-5)  # exact despite bf16
