"""Stable Video Diffusion (img2vid-xt) behind the harness's flow-matching interface.

Upstream SVD is an EDM model with v-prediction (diffusers' ``EulerDiscreteScheduler`` with
``prediction_type="v_prediction"``, ``timestep_type="continuous"``): for a noise level
``s`` (sigma_edm) and ``x_edm = x0 + s * noise`` the UNet output ``F`` gives

    D(x_edm, s) = c_skip * x_edm + c_out * F(c_in * x_edm, c_noise),
    c_skip = 1 / (s^2 + 1),  c_out = -s / sqrt(s^2 + 1),  c_in = 1 / sqrt(s^2 + 1),  c_noise = 0.25 log s

(``scale_model_input`` divides by sqrt(s^2 + 1); the pipeline passes ``scheduler.timesteps`` =
0.25 log s as the UNet timestep; ``step`` forms ``D`` with the two v-prediction coefficients).

The harness integrates in flow time t in [0, 1] with x_t = (1 - t) x0 + t noise. The exact change
of variables is s = t / (1 - t), x_edm = x_t / (1 - t), which gives with d = t^2 + (1 - t)^2

    c_in  x_edm = x_t / sqrt(d),   c_skip x_edm = (1 - t) x_t / d,   c_out = -t / sqrt(d),
    x0_hat = (1 - t) x_t / d - t F / sqrt(d),
    velocity = (x_t - x0_hat) / t = (2t - 1) / d * x_t + F / sqrt(d),

the last form being the same quantity with the division by t carried out in closed form, so it is
finite on all of [0, 1] (at t = 1, pure noise: velocity = x_t + F) and needs no guard near t = 0.
Only c_noise needs care: s is clamped to the scheduler's ``sigma_max`` (700; t = 1 would give
s = inf) and to ``C_NOISE_SIGMA_MIN`` (t = 0 would give log 0); for s in between, i.e.
1e-5 <= t <= 700/701, ``predict`` is exactly upstream's denoiser in flow variables. The flow ODE
dx_t/dt = velocity is the same probability-flow ODE as upstream's Euler sampler
(dx_edm/ds = (x_edm - D) / s) written in another time variable, and one Euler step in t from t1 to
t2 equals one ``EulerDiscreteScheduler`` step from s(t1) to s(t2) (both are the DDIM step
(1 - t2) x0_hat + t2 eps_hat). Upstream starts sampling at s = 700, i.e. t = 700/701, where
x_t = x0/701 + (700/701) noise; the harness starts at t = 1 (x_t = noise), where c_noise is that of
s = 700: a negligible difference in the start point.

Training with the harness's flow-matching loss on this velocity is not upstream's EDM loss: the
velocity error is (x0 - x0_hat) / t, so the loss weights the x0 error by 1 / t^2, where EDM's
weighting lambda(s) = (s^2 + 1) / s^2 (sigma_data = 1) gives (t^2 + (1 - t)^2) / t^2 in flow time.
The two differ by the factor 1 / (t^2 + (1 - t)^2), between 1 (t = 0 or 1) and 2 (t = 1/2), on top
of whatever timestep density the trainer samples (upstream trains with a log-normal density on s).

Conditioning follows ``StableVideoDiffusionPipeline``: the CLIP image embedding of the first frame
(resized to 224 with diffusers' antialiased resize, CLIP mean/std) is the UNet's
``encoder_hidden_states`` and lives in ``Conditioning.text``; the first frame plus
``noise_aug_strength`` Gaussian noise, VAE-encoded (latent mode, *not* scaled by the scaling
factor) is repeated over frames and concatenated along channels (4 + 4 = 8 UNet in-channels) and
lives in ``Conditioning.first_frame``; the unconditional branch zeroes both, as upstream's CFG.
Captions are kept but unused. The added time ids (fps - 1, motion_bucket_id, noise_aug_strength)
come from the adapter's attributes. The augmentation noise is drawn per video from a CPU
``torch.Generator`` seeded with ``noise_aug_seed`` (0 by default), so a first frame always gets
the same condition, independent of the batch it is encoded in and of the device.

LoRA: diffusers 0.42.1's ``UNetSpatioTemporalConditionModel`` lacks ``PeftAdapterMixin``, the SVD
pipeline has no ``load_lora_weights``, ``UNet2DConditionLoadersMixin.load_attn_procs`` only takes
Custom Diffusion weights, and ``StableDiffusionLoraLoaderMixin.load_lora_into_unet`` calls
``unet.load_lora_adapter``, which the stock class does not have. The adapter therefore runs the UNet
as ``PeftUNetSpatioTemporalConditionModel`` (the same class plus diffusers' own ``PeftAdapterMixin``;
same config, weights and forward) and ``save_lora`` writes with
``StableDiffusionLoraLoaderMixin.save_lora_weights``: ``pytorch_lora_weights.safetensors``, peft keys
with the ``unet.`` prefix and the ``LoraConfig`` as ``lora_adapter_metadata``. It loads with::

    unet = PeftUNetSpatioTemporalConditionModel.from_pretrained(model_dir, subfolder="unet")
    sd, alphas, meta = StableDiffusionLoraLoaderMixin.lora_state_dict(lora_dir, return_lora_metadata=True)
    StableDiffusionLoraLoaderMixin.load_lora_into_unet(sd, alphas, unet, metadata=meta)
    pipe = StableVideoDiffusionPipeline.from_pretrained(model_dir, unet=unet)

or, for the UNet of a pipeline loaded as usual, ``load_svd_lora(pipe.unet, lora_dir)`` (which gives
that UNet the mixin and then makes the same diffusers call).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar, Literal

import torch
from diffusers import (
    AutoencoderKLTemporalDecoder,
    EulerDiscreteScheduler,
    StableVideoDiffusionPipeline,
    UNetSpatioTemporalConditionModel,
)
from diffusers.loaders import PeftAdapterMixin, StableDiffusionLoraLoaderMixin
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing
from peft import LoraConfig
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from harness.models.base import Conditioning, ModelAdapter
from harness.models.components import Component, check_model_dir

FAMILY = "Stable Video Diffusion (img2vid-xt)"
HF_REPO = "stabilityai/stable-video-diffusion-img2vid-xt"
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
# Attention projections of the temporal transformer blocks only (SHIFT's LoRA placement): the
# frame-axis self-attention (attn1) and the image-embedding cross-attention (attn2) of every
# TemporalBasicTransformerBlock; the spatial ``transformer_blocks`` are left alone.
TEMPORAL_ATTENTION_TARGETS = r".*temporal_transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)"
C_NOISE_SIGMA_MIN = 1e-5  # keeps c_noise = 0.25 log(sigma_edm) finite at t = 0
CLIP_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP, as in SVD's preprocessor_config.json
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Accepted class names for the feature extractor: transformers 5 records the backend it fell back to.
_PROCESSORS = ("CLIPImageProcessor", "CLIPImageProcessorPil", "CLIPImageProcessorFast", "CLIPFeatureExtractor")
COMPONENTS = [
    Component("unet", ("UNetSpatioTemporalConditionModel",)),
    Component("vae", ("AutoencoderKLTemporalDecoder",)),
    Component("image_encoder", ("CLIPVisionModelWithProjection",)),
    Component("feature_extractor", _PROCESSORS, files=("preprocessor_config.json",), weights=False),
    Component("scheduler", ("EulerDiscreteScheduler",), files=("scheduler_config.json",), weights=False),
]


class PeftUNetSpatioTemporalConditionModel(UNetSpatioTemporalConditionModel, PeftAdapterMixin):
    """diffusers' SVD UNet with diffusers' LoRA API (``add_adapter``, ``load_lora_adapter``,
    ``disable_adapters``, ...), which every other diffusers UNet/transformer has. Nothing else
    changes; a saved config keeps the upstream class name so the stock pipeline still loads it."""

    def to_json_string(self) -> str:
        data = json.loads(super().to_json_string())
        data["_class_name"] = UNetSpatioTemporalConditionModel.__name__
        return json.dumps(data, indent=2, sort_keys=True) + "\n"


def load_svd_lora(unet: UNetSpatioTemporalConditionModel, lora_dir: str | Path,
                  adapter_name: str = "default") -> UNetSpatioTemporalConditionModel:
    """Load a ``save_lora`` directory into an SVD UNet with diffusers' loader.

    A stock ``UNetSpatioTemporalConditionModel`` (e.g. ``pipe.unet``) is given ``PeftAdapterMixin``
    in place (its class becomes the subclass above; modules and weights are untouched), then
    ``StableDiffusionLoraLoaderMixin.lora_state_dict`` + ``load_lora_into_unet`` do the loading.
    The adapter is named ``default``, as the harness's own (so ``SVDAdapter.reference()`` etc. work).
    """
    if not isinstance(unet, UNetSpatioTemporalConditionModel):
        raise TypeError(f"expected a UNetSpatioTemporalConditionModel, got {type(unet).__name__}")
    if not isinstance(unet, PeftAdapterMixin):
        unet.__class__ = PeftUNetSpatioTemporalConditionModel
    loader = StableDiffusionLoraLoaderMixin
    state, alphas, metadata = loader.lora_state_dict(str(lora_dir), return_lora_metadata=True)
    loader.load_lora_into_unet(state, alphas, unet, adapter_name=adapter_name, metadata=metadata)
    return unet


def _check_divisible(height: int, width: int, factor: int) -> None:
    for name, size in (("height", height), ("width", width)):
        if size <= 0:
            raise ValueError(f"{name} must be positive, got {size}")
        if size % factor:
            lo = size // factor * factor
            raise ValueError(f"{name} must be a multiple of {factor} (the VAE downsamples by {factor}): {size} = "
                             f"{size // factor} * {factor} + {size % factor}; use {lo or factor} or {lo + factor}")


def _variant(folder: Path) -> str | None:
    """``fp16`` where a component folder holds only the fp16 variant (as some SVD downloads do)."""
    full = [p for p in folder.glob("*.safetensors") if ".fp16." not in p.name]
    full += [p for p in folder.glob("*.bin") if ".fp16." not in p.name]
    return "fp16" if not full and any(folder.glob("*.fp16.*")) else None


class SVDAdapter(ModelAdapter):
    prediction_type = "flow"
    native_prediction: ClassVar[str] = "v (EDM)"
    latent_channels = 4

    def __init__(self, unet: PeftUNetSpatioTemporalConditionModel, vae: AutoencoderKLTemporalDecoder,
                 image_encoder: CLIPVisionModelWithProjection, scheduler_config: dict, num_frames: int,
                 height: int, width: int, fps: int = 7, motion_bucket_id: int = 127,
                 noise_aug_strength: float = 0.02, lora_targets: str | list[str] | None = None,
                 image_mean: tuple[float, ...] = CLIP_MEAN, image_std: tuple[float, ...] = CLIP_STD,
                 decode_chunk_size: int | None = None, noise_aug_seed: int = 0):
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        _check_divisible(height, width, self.vae_scale_factor)
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if scheduler_config.get("prediction_type") != "v_prediction" or \
                scheduler_config.get("timestep_type") != "continuous":
            raise ValueError("SVDAdapter implements EDM v-prediction with continuous timesteps (0.25 log sigma); the "
                             f"scheduler says prediction_type={scheduler_config.get('prediction_type')!r}, "
                             f"timestep_type={scheduler_config.get('timestep_type')!r}")
        self.model, self.vae, self.image_encoder = unet, vae, image_encoder
        self.scheduler_config = dict(scheduler_config)
        self.sigma_max = float(scheduler_config.get("sigma_max") or 700.0)
        self.sigma_min = float(scheduler_config.get("sigma_min") or 0.002)  # upstream's smallest sampling sigma
        self.num_frames, self.height, self.width = num_frames, height, width
        self.fps, self.motion_bucket_id, self.noise_aug_strength = fps, motion_bucket_id, noise_aug_strength
        self.noise_aug_seed = noise_aug_seed
        self.lora_targets = lora_targets
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.decode_chunk_size = decode_chunk_size or num_frames  # the pipeline's default
        for frozen in (self.vae, self.image_encoder):
            frozen.requires_grad_(False).eval()

    # -- loading -------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, num_frames: int, height: int, width: int,
                        dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", fps: int = 7,
                        motion_bucket_id: int = 127, noise_aug_strength: float = 0.02,
                        lora_targets: str | list[str] | None = None, decode_chunk_size: int | None = None,
                        noise_aug_seed: int = 0) -> SVDAdapter:
        """Load a local diffusers SVD directory. The UNet runs in ``dtype``; the VAE and CLIP run in float32
        on CPU, elsewhere in ``dtype`` (the VAE in float32 for float16 when its config asks to upcast)."""
        _check_divisible(height, width, 8)
        path = Path(path)
        check_model_dir(path, COMPONENTS, FAMILY, HF_REPO)
        device = torch.device(device)
        side_dtype = torch.float32 if device.type == "cpu" else dtype
        unet = PeftUNetSpatioTemporalConditionModel.from_pretrained(
            path, subfolder="unet", torch_dtype=dtype, variant=_variant(path / "unet"))
        upcast = AutoencoderKLTemporalDecoder.load_config(path, subfolder="vae").get("force_upcast", True)
        vae_dtype = torch.float32 if side_dtype == torch.float16 and upcast else side_dtype
        vae = AutoencoderKLTemporalDecoder.from_pretrained(path, subfolder="vae", torch_dtype=vae_dtype,
                                                           variant=_variant(path / "vae"))
        image_encoder = CLIPVisionModelWithProjection.from_pretrained(
            path / "image_encoder", dtype=side_dtype, variant=_variant(path / "image_encoder"))
        scheduler_config = dict(EulerDiscreteScheduler.load_config(path, subfolder="scheduler"))
        processor = json.loads((path / "feature_extractor" / "preprocessor_config.json").read_text())
        return cls(unet.to(device), vae.to(device), image_encoder.to(device), scheduler_config,
                   num_frames, height, width, fps=fps, motion_bucket_id=motion_bucket_id,
                   noise_aug_strength=noise_aug_strength, lora_targets=lora_targets,
                   image_mean=processor.get("image_mean", CLIP_MEAN), image_std=processor.get("image_std", CLIP_STD),
                   decode_chunk_size=decode_chunk_size, noise_aug_seed=noise_aug_seed)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    # -- spaces ----------------------------------------------------------------------
    def latent_shape(self, batch: int) -> tuple[int, ...]:
        f = self.vae_scale_factor
        return (batch, self.latent_channels, self.num_frames, self.height // f, self.width // f)

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] -> (B, 4, T, H/8, W/8): VAE latent mode x scaling_factor, frame by frame."""
        b, _, t = video.shape[:3]
        frames = video.transpose(1, 2).flatten(0, 1).to(self.vae.device, self.vae.dtype)
        latents = torch.cat([self.vae.encode(chunk).latent_dist.mode()
                             for chunk in frames.split(self.decode_chunk_size)])
        latents = latents * self.vae.config.scaling_factor
        return latents.reshape(b, t, *latents.shape[1:]).transpose(1, 2).float()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 4, T, h, w) -> (B, 3, T, H, W): latents / scaling_factor through the temporal decoder,
        ``decode_chunk_size`` frames at a time (temporal layers see one chunk, as in the pipeline).
        Chunks never span two videos (the pipeline chunks the flattened batch)."""
        b, _, t = latents.shape[:3]
        z = (latents / self.vae.config.scaling_factor).transpose(1, 2).to(self.vae.device, self.vae.dtype)
        videos = []
        for clip in z:  # (T, 4, h, w)
            frames = [self.vae.decode(chunk, num_frames=chunk.shape[0]).sample
                      for chunk in clip.split(self.decode_chunk_size)]
            videos.append(torch.cat(frames))
        return torch.stack(videos).transpose(1, 2).float()

    # -- conditions ------------------------------------------------------------------------
    def clip_pixels(self, first_frame: torch.Tensor) -> torch.Tensor:
        """The pipeline's CLIP preprocessing: antialiased resize to 224 in [-1, 1], then CLIP mean/std."""
        image = _resize_with_antialiasing(first_frame.float(), (CLIP_SIZE, CLIP_SIZE))
        image = (image + 1.0) / 2.0
        mean = torch.tensor(self.image_mean, device=image.device).view(1, -1, 1, 1)
        std = torch.tensor(self.image_std, device=image.device).view(1, -1, 1, 1)
        return (image - mean) / std

    def augmentation_noise(self, batch: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Per-video N(0, 1) noise from a CPU generator seeded with ``noise_aug_seed``: batch-independent."""
        return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(self.noise_aug_seed))
                            for _ in range(batch)])

    @torch.no_grad()
    def encode_condition(self, first_frame: torch.Tensor, captions: list[str]) -> Conditioning:
        if first_frame.shape[0] != len(captions):
            raise ValueError(f"{first_frame.shape[0]} first frames but {len(captions)} captions")
        if first_frame.ndim != 4 or first_frame.shape[1] != 3:
            raise ValueError(f"first_frame must be (B, 3, H, W), got {tuple(first_frame.shape)}")
        if tuple(first_frame.shape[-2:]) != (self.height, self.width):
            raise ValueError(f"first frame is {tuple(first_frame.shape[-2:])} but the adapter generates "
                             f"{(self.height, self.width)}; resize it first")
        enc = self.image_encoder
        pixels = self.clip_pixels(first_frame.to(enc.device)).to(enc.dtype)
        embeds = enc(pixel_values=pixels).image_embeds.unsqueeze(1).float()  # (B, 1, D)
        noise = self.augmentation_noise(first_frame.shape[0], tuple(first_frame.shape[1:]))
        noisy = first_frame.float().cpu() + self.noise_aug_strength * noise
        image_latents = self.vae.encode(noisy.to(self.vae.device, self.vae.dtype)).latent_dist.mode().float()
        return Conditioning(image_latents, embeds, tuple(captions), null_zeroes=("text", "first_frame"))

    def added_time_ids(self, batch: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(B, 3): fps - 1 (SVD was trained on fps - 1), motion_bucket_id, noise_aug_strength."""
        ids = torch.tensor([[self.fps - 1, self.motion_bucket_id, self.noise_aug_strength]],
                           dtype=dtype or self.dtype, device=self.device)
        return ids.repeat(batch, 1)

    # -- forward ------------------------------------------------------------------------
    def c_noise(self, t: torch.Tensor) -> torch.Tensor:
        """0.25 log sigma_edm with sigma_edm = t / (1 - t) clamped to [C_NOISE_SIGMA_MIN, sigma_max]."""
        sigma_edm = t / (1 - t).clamp_min(1e-20)
        return 0.25 * sigma_edm.clamp(C_NOISE_SIGMA_MIN, self.sigma_max).log()

    def predict(self, x_t: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        b, _, f, h, w = x_t.shape
        t = torch.as_tensor(sigma, dtype=torch.float32, device=x_t.device)
        t = t.expand(b) if t.ndim == 0 else t.reshape(b)
        d = (t**2 + (1 - t) ** 2).view(b, 1, 1, 1, 1)
        x = x_t.float()
        latent_in = (x / d.sqrt()).transpose(1, 2)  # c_in * x_edm, (B, T, C, h, w)
        image = cond.first_frame.to(latent_in).unsqueeze(1).expand(b, f, *cond.first_frame.shape[1:])
        dtype = self.dtype
        out = self.model(
            torch.cat([latent_in, image], dim=2).to(dtype),
            self.c_noise(t),
            encoder_hidden_states=cond.text.to(x_t.device, dtype),
            added_time_ids=self.added_time_ids(b, dtype),
            return_dict=False,
        )[0]
        out = out.float().transpose(1, 2)  # F, (B, C, T, h, w)
        # (x_t - x0_hat) / t with x0_hat = (1 - t) x_t / d - t F / sqrt(d), divided out exactly.
        tt = t.view(b, 1, 1, 1, 1)
        return ((2 * tt - 1) / d * x + out / d.sqrt()).to(x_t.dtype)

    # -- LoRA ------------------------------------------------------------------------------
    def add_lora(self, rank: int = 32, alpha: float = 32, target_modules: str | list[str] | None = None) -> None:
        """peft LoRA on the temporal attention projections by default (a regex, see
        ``TEMPORAL_ATTENTION_TARGETS``); everything else is frozen."""
        targets = target_modules or self.lora_targets or TEMPORAL_ATTENTION_TARGETS
        self.model.requires_grad_(False)
        self.model.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets))

    def save_lora(self, directory: str | Path) -> Path:
        """``pytorch_lora_weights.safetensors`` via ``StableDiffusionLoraLoaderMixin.save_lora_weights``
        (``unet.``-prefixed peft keys + LoraConfig metadata); load it with ``load_svd_lora`` or the
        diffusers calls in the module docstring."""
        if not self.has_lora:
            raise RuntimeError("save_lora() needs LoRA adapters; call add_lora() first")
        directory = Path(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.lora_state_dict().items()}
        config = self.model.peft_config["default"].to_dict()
        StableDiffusionLoraLoaderMixin.save_lora_weights(
            directory, unet_lora_layers=state, unet_lora_adapter_metadata=config, weight_name=LORA_WEIGHT_NAME,
            safe_serialization=True)
        return directory / LORA_WEIGHT_NAME


# -- random-weight directories ------------------------------------------------------------
def svd_configs(size: Literal["tiny", "real"] = "tiny") -> dict[str, dict]:
    """Configs for unet, vae, image_encoder (CLIPVisionConfig kwargs), feature_extractor and scheduler.

    ``real`` is SVD-XT (stabilityai/stable-video-diffusion-img2vid-xt): the diffusers defaults of
    ``UNetSpatioTemporalConditionModel`` (1.52B parameters, 25 frames), the SD VAE encoder with the
    temporal decoder, OpenCLIP ViT-H/14 (projection 1024), Karras EDM Euler with sigma in [0.002, 700].
    """
    scheduler = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
                     num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002,
                     steps_offset=1, timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True)
    processor = dict(crop_size={"height": 224, "width": 224}, do_center_crop=True, do_convert_rgb=True,
                     do_normalize=True, do_rescale=True, do_resize=True, image_mean=list(CLIP_MEAN),
                     image_std=list(CLIP_STD), resample=3, rescale_factor=1 / 255, size={"shortest_edge": 224})
    if size == "real":
        unet = dict(sample_size=96, in_channels=8, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
                    addition_time_embed_dim=256, projection_class_embeddings_input_dim=768, layers_per_block=2,
                    cross_attention_dim=1024, transformer_layers_per_block=1, num_attention_heads=(5, 10, 20, 20),
                    num_frames=25)
        vae = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                   block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=768,
                   scaling_factor=0.18215, force_upcast=True)
        clip = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                    image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu", layer_norm_eps=1e-5)
    elif size == "tiny":
        unet = dict(sample_size=4, in_channels=8, out_channels=4,
                    down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
                    up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
                    block_out_channels=(32, 64), addition_time_embed_dim=8, projection_class_embeddings_input_dim=24,
                    layers_per_block=1, cross_attention_dim=32, transformer_layers_per_block=1,
                    num_attention_heads=(2, 4), num_frames=4)
        vae = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                   block_out_channels=(32, 32, 32, 32), layers_per_block=1, latent_channels=4, sample_size=32,
                   scaling_factor=0.18215, force_upcast=True)
        clip = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=224,
                    patch_size=32, projection_dim=32, hidden_act="gelu", layer_norm_eps=1e-5)
    else:
        raise ValueError(f"size must be 'tiny' or 'real', got {size!r}")
    return {"unet": unet, "vae": vae, "image_encoder": clip, "feature_extractor": processor, "scheduler": scheduler}


def write_random_pipeline(path: str | Path, size: Literal["tiny", "real"] = "tiny", seed: int = 0,
                          dtype: torch.dtype = torch.float32) -> Path:
    """A complete diffusers SVD directory with random weights, written by
    ``StableVideoDiffusionPipeline.save_pretrained``. ``real`` builds the full 2.1B-parameter model
    (minutes and ~9 GB of memory in float32)."""
    from transformers import CLIPImageProcessor

    cfg = svd_configs(size)
    torch.manual_seed(seed)

    def cast(module: torch.nn.Module) -> torch.nn.Module:
        return module if dtype == torch.float32 else module.to(dtype)

    pipe = StableVideoDiffusionPipeline(
        vae=cast(AutoencoderKLTemporalDecoder(**cfg["vae"])),
        image_encoder=cast(CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg["image_encoder"]))),
        unet=cast(UNetSpatioTemporalConditionModel(**cfg["unet"])),
        scheduler=EulerDiscreteScheduler(**cfg["scheduler"]),
        feature_extractor=CLIPImageProcessor(**cfg["feature_extractor"]),
    )
    path = Path(path)
    pipe.save_pretrained(path, safe_serialization=True)
    # Without torchvision, transformers 5 instantiates (and records) CLIPImageProcessorPil; record
    # upstream's name, which every transformers version resolves to an available backend.
    index_file = path / "model_index.json"
    index = json.loads(index_file.read_text())
    index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return path
