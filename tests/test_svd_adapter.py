"""SVDAdapter on a tiny random SVD directory: diffusers' own pipeline pieces are the reference."""

import json
import re
import shutil

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline, UNetSpatioTemporalConditionModel
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from harness.models.components import ModelDirError
from harness.models.svd import (
    PeftUNetSpatioTemporalConditionModel,
    SVDAdapter,
    load_svd_lora,
    svd_configs,
    write_random_pipeline,
)
from harness.sampling import SamplerConfig, integrate, sample

T, H, W = 4, 32, 32


@pytest.fixture(scope="module")
def svd_dir(tmp_path_factory):
    return write_random_pipeline(tmp_path_factory.mktemp("svd") / "tiny", size="tiny", seed=0)


@pytest.fixture(scope="module")
def pipe(svd_dir):
    return StableVideoDiffusionPipeline.from_pretrained(svd_dir)


def _adapter(svd_dir, **kw):
    return SVDAdapter.from_pretrained(svd_dir, num_frames=T, height=H, width=W, **kw)


@pytest.fixture(scope="module")
def adapter(svd_dir):
    return _adapter(svd_dir)


def _image(seed=0):
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray((rng.random((H, W, 3)) * 255).astype("uint8"))


def _inputs(adapter, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(adapter.latent_shape(b), generator=g)
    cond = adapter.encode_condition(torch.rand(b, 3, H, W, generator=g) * 2 - 1, ["a red ball", ""][:b])
    return x, cond


def _edm_velocity(pipe, adapter, x_t, t, cond, t_next=None):
    """Velocity (and optionally one Euler step) from diffusers' pieces, as StableVideoDiffusionPipeline runs them."""
    b = x_t.shape[0]
    sigma, sigma_next = t / (1 - t), (0.0 if t_next is None else t_next / (1 - t_next))
    scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(sigmas=[sigma, sigma_next])
    timestep = scheduler.timesteps[0]
    latents = (x_t / (1 - t)).transpose(1, 2)  # x_edm in the pipeline's (B, T, C, h, w)
    model_in = scheduler.scale_model_input(latents, timestep)
    image_latents = cond.first_frame.unsqueeze(1).repeat(1, x_t.shape[2], 1, 1, 1)
    model_in = torch.cat([model_in, image_latents], dim=2)
    added = pipe._get_add_time_ids(adapter.fps - 1, adapter.motion_bucket_id, adapter.noise_aug_strength,
                                   torch.float32, b, 1, False)
    with torch.no_grad():
        out = pipe.unet(model_in, timestep, encoder_hidden_states=cond.text, added_time_ids=added,
                        return_dict=False)[0]
    step = scheduler.step(out, timestep, latents)
    velocity = (x_t - step.pred_original_sample.transpose(1, 2)) / t
    prev = None if t_next is None else step.prev_sample.transpose(1, 2) * (1 - t_next)  # back to flow space
    return velocity, prev


def test_random_dir_is_a_diffusers_svd_pipeline(svd_dir, pipe):
    index = json.loads((svd_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableVideoDiffusionPipeline"
    assert index["unet"] == ["diffusers", "UNetSpatioTemporalConditionModel"]
    assert index["feature_extractor"] == ["transformers", "CLIPImageProcessor"]
    frames = pipe(_image(), height=H, width=W, num_frames=T, num_inference_steps=2, output_type="pt").frames
    assert frames.shape[:2] == (1, T) and torch.isfinite(frames).all()


def test_shapes(adapter):
    x, cond = _inputs(adapter)
    assert adapter.latent_shape(2) == (2, 4, T, H // 8, W // 8)
    video = torch.rand(2, 3, T, H, W) * 2 - 1
    latents = adapter.encode_video(video)
    assert latents.shape == adapter.latent_shape(2)
    assert adapter.decode_latents(latents).shape == video.shape
    assert cond.first_frame.shape == (2, 4, H // 8, W // 8) and cond.text.shape == (2, 1, 32)
    assert cond.captions == ("a red ball", "") and cond.image is None
    with torch.no_grad():
        assert adapter.predict(x, torch.tensor([0.3, 1.0]), cond).shape == x.shape
        assert torch.isfinite(adapter.predict(x, 1.0, cond)).all()  # t = 1 (pure noise) is finite
        assert torch.isfinite(adapter.predict(x, 0.0, cond)).all()


def test_encoders_match_the_pipeline(adapter, pipe):
    image = _image(3)
    first = pipe.video_processor.preprocess(image, height=H, width=W)  # (1, 3, H, W) in [-1, 1]
    cond = adapter.encode_condition(first, ["ignored"])
    torch.testing.assert_close(cond.text, pipe._encode_image(image, "cpu", 1, False), atol=1e-5, rtol=0)
    noisy = first + adapter.noise_aug_strength * adapter.augmentation_noise(1, (3, H, W))
    torch.testing.assert_close(cond.first_frame, pipe._encode_vae_image(noisy, "cpu", 1, False), atol=1e-5, rtol=0)
    ids = pipe._get_add_time_ids(adapter.fps - 1, adapter.motion_bucket_id, adapter.noise_aug_strength,
                                 torch.float32, 3, 1, False)
    assert torch.equal(adapter.added_time_ids(3), ids)
    # Deterministic and batch-independent: the same frame gives the same condition in any batch.
    other = adapter.encode_condition(torch.cat([first, -first]), ["", ""])
    torch.testing.assert_close(other.first_frame[:1], cond.first_frame, atol=1e-6, rtol=0)
    video = torch.rand(1, 3, T, H, W) * 2 - 1
    frames = video.transpose(1, 2).flatten(0, 1)
    expected = pipe.vae.encode(frames).latent_dist.mode() * pipe.vae.config.scaling_factor
    torch.testing.assert_close(adapter.encode_video(video)[0].transpose(0, 1), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(adapter.decode_latents(adapter.encode_video(video)),
                               pipe.decode_latents(adapter.encode_video(video).transpose(1, 2), T, T),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_change_of_variables_is_exact(adapter, pipe, t):
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(adapter.latent_shape(2), generator=g), torch.randn(adapter.latent_shape(2), generator=g)
    _, cond = _inputs(adapter)
    x_t = adapter.add_noise(x0, noise, torch.tensor(t))
    expected, _ = _edm_velocity(pipe, adapter, x_t, t, cond)
    with torch.no_grad():
        torch.testing.assert_close(adapter.predict(x_t, torch.full((2,), t), cond), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(adapter.predict(x_t, t, cond), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("t1,t2", [(0.9, 0.5), (0.5, 0.1)])
def test_euler_step_equals_the_scheduler_step(adapter, pipe, t1, t2):
    x_t, cond = _inputs(adapter, seed=2)
    _, expected = _edm_velocity(pipe, adapter, x_t, t1, cond, t_next=t2)
    with torch.no_grad():
        ours = integrate(lambda x, s: adapter.predict(x, s, cond), x_t, torch.tensor([t1, t2], dtype=torch.float64),
                         SamplerConfig(kind="ode"))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_sampling_and_cfg_null_branch(adapter):
    x, cond = _inputs(adapter)
    null = cond.null_text()
    assert torch.all(null.text == 0) and torch.all(null.first_frame == 0) and null.captions == ("", "")
    assert cond.text.abs().sum() > 0 and cond.first_frame.abs().sum() > 0
    with torch.no_grad():
        assert not torch.allclose(adapter.predict(x, 0.5, cond), adapter.predict(x, 0.5, null))
    for guidance in (1.0, 2.5):
        videos = sample(adapter, cond, [0, 1], SamplerConfig(kind="ode", num_steps=2, guidance_scale=guidance))
        assert videos.shape == (2, 3, T, H, W) and torch.isfinite(videos).all()


def test_lora_targets_only_temporal_attention(svd_dir):
    adapter = _adapter(svd_dir)
    adapter.add_lora()
    lora = [n for n, m in adapter.model.named_modules() if isinstance(m, LoraLayer)]
    temporal = re.compile(r".*\.temporal_transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)")
    assert lora and all(temporal.fullmatch(n) for n in lora)
    blocks = [n for n, _ in adapter.model.named_modules() if re.fullmatch(r".*\.temporal_transformer_blocks\.\d+", n)]
    assert len(lora) == 8 * len(blocks)  # attn1 + attn2, four projections each
    spatial = [n for n, m in adapter.model.named_modules()
               if re.fullmatch(r".*\.transformer_blocks\.\d+\.attn[12]\..*", n) and isinstance(m, LoraLayer)]
    assert not spatial and not any(".transformer_blocks." in n and "temporal_" not in n for n in lora)
    trainable = [n for n, p in adapter.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert adapter.model.peft_config["default"].r == 32


def _perturbed_lora(adapter, rank=4, alpha=8):
    adapter.add_lora(rank, alpha)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in adapter.model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def test_lora_reference_and_diffusers_round_trip(svd_dir, tmp_path):
    adapter = _adapter(svd_dir)
    x, cond = _inputs(adapter)
    sigma = torch.tensor([0.4, 0.8])
    with torch.no_grad():
        base = adapter.predict(x, sigma, cond)
        _perturbed_lora(adapter)
        tuned = adapter.predict(x, sigma, cond)
        with adapter.reference():
            # equal up to float rounding: with the adapters injected (even disabled) some hosts' oneDNN
            # takes another kernel path for the same base weights (bitwise equal on others)
            torch.testing.assert_close(adapter.predict(x, sigma, cond), base, atol=1e-6, rtol=0)
        assert torch.equal(adapter.predict(x, sigma, cond), tuned) and not torch.allclose(tuned, base, atol=1e-4)
    weights = adapter.save_lora(tmp_path / "lora")
    assert weights.name == "pytorch_lora_weights.safetensors"
    with safe_open(str(weights), "pt") as f:
        assert all(k.startswith("unet.") and ".lora_" in k for k in f.keys())
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert meta["unet.lora_alpha"] == 8 and meta["unet.r"] == 4

    # The stock SVD UNet has no LoRA loader in diffusers 0.42.1 (why the adapter adds PeftAdapterMixin).
    assert not hasattr(UNetSpatioTemporalConditionModel, "load_lora_adapter")

    # 1. diffusers' loader on a fresh UNet, which the stock pipeline accepts as its `unet`.
    unet = PeftUNetSpatioTemporalConditionModel.from_pretrained(svd_dir, subfolder="unet")
    state, alphas, meta = StableDiffusionLoraLoaderMixin.lora_state_dict(tmp_path / "lora", return_lora_metadata=True)
    StableDiffusionLoraLoaderMixin.load_lora_into_unet(state, alphas, unet, metadata=meta)
    loaded = StableVideoDiffusionPipeline.from_pretrained(svd_dir, unet=unet)
    fresh = _adapter(svd_dir)
    fresh.model = loaded.unet
    with torch.no_grad():
        torch.testing.assert_close(fresh.predict(x, sigma, cond), tuned, atol=1e-5, rtol=0)
    # 2. the UNet of a pipeline loaded as usual, through load_svd_lora.
    stock = StableVideoDiffusionPipeline.from_pretrained(svd_dir)
    fresh.model = load_svd_lora(stock.unet, tmp_path / "lora")
    with torch.no_grad():
        torch.testing.assert_close(fresh.predict(x, sigma, cond), tuned, atol=1e-5, rtol=0)
        with fresh.reference():
            torch.testing.assert_close(fresh.predict(x, sigma, cond), base, atol=1e-6, rtol=0)
    # The subclass saves under the upstream class name.
    unet.save_pretrained(tmp_path / "unet")
    assert json.loads((tmp_path / "unet" / "config.json").read_text())["_class_name"] == \
        "UNetSpatioTemporalConditionModel"


def test_gradient_checkpointing_gives_equal_gradients(svd_dir):
    adapter = _adapter(svd_dir)
    x, cond = _inputs(adapter)
    sigma = torch.tensor([0.3, 0.7])

    def grads():
        adapter.model.zero_grad(set_to_none=True)
        adapter.predict(x, sigma, cond).square().mean().backward()
        return [p.grad.clone() for p in adapter.model.parameters()]

    plain = grads()
    adapter.enable_gradient_checkpointing()
    assert adapter.model.is_gradient_checkpointing
    for a, b in zip(plain, grads(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_model_dir_errors(svd_dir, tmp_path):
    missing = shutil.copytree(svd_dir, tmp_path / "missing")
    shutil.rmtree(missing / "vae")
    with pytest.raises(ModelDirError, match="vae"):
        _adapter(missing)
    wrong = shutil.copytree(svd_dir, tmp_path / "wrong")
    index = json.loads((wrong / "model_index.json").read_text())
    index["unet"] = ["diffusers", "UNet2DConditionModel"]
    (wrong / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelDirError, match="UNet2DConditionModel.*UNetSpatioTemporalConditionModel"):
        _adapter(wrong)
    with pytest.raises(ValueError, match=r"height must be a multiple of 8 .*20 = 2 \* 8 \+ 4; use 16 or 24"):
        SVDAdapter.from_pretrained(svd_dir, num_frames=T, height=20, width=W)


def test_real_configs_match_svd_xt():
    cfg = svd_configs("real")
    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel(**cfg["unet"])
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg["image_encoder"]))
    assert sum(p.numel() for p in unet.parameters()) == 1_524_623_082
    assert unet.config.cross_attention_dim == clip.config.projection_dim == 1024
    assert unet.config.num_frames == 25 and unet.config.in_channels == 8
    assert 0.6e9 < sum(p.numel() for p in clip.parameters()) < 0.66e9
    assert cfg["scheduler"]["prediction_type"] == "v_prediction" and cfg["scheduler"]["sigma_max"] == 700.0
