"""Loading upstream checkpoints into our modules: unwrap, strip prefixes, load strictly.

Every real backend loads the upstream file's own state-dict layout, so a user drops the
published file into the weight cache unchanged. Where our module comes from a library
(transformers) with other parameter names, the backend converts the upstream keys and
``load_strict`` still checks that every upstream tensor was used and every parameter filled.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import torch

from harness.weights import EXECUTABLE_FORMATS, ResolvedWeight, WeightsError, verified_bytes, weight_format

WRAPPER_KEYS = ("state_dict", "model", "module", "model_state", "params")


def load_torchscript(weight: ResolvedWeight, map_location="cpu") -> torch.jit.ScriptModule:
    """A TorchScript archive, loaded (it can run code) only from bytes whose sha256 is pinned."""
    data = verified_bytes(weight)  # refuses an unpinned or changed file before torch sees it
    try:
        return torch.jit.load(io.BytesIO(data), map_location=map_location)
    except Exception as exc:  # noqa: BLE001 - any reason the archive does not load
        raise WeightsError(f"{weight.path} ({weight.name}) is not a TorchScript archive ({_first_line(exc)}); "
                           f"fetch it again with `harness weights prefetch {weight.name}`") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _safe_load_reason(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in a few words (torch says it in a page)."""
    text = str(exc)
    if "TorchScript archive" in text:
        return "it is a TorchScript archive"
    for line in text.splitlines():
        if "WeightsUnpickler error:" in line:  # e.g. "Unsupported global: GLOBAL foo.Bar was not an allowed global"
            return line.split("WeightsUnpickler error:", 1)[1].split(" by default")[0].strip()[:200]
    return f"{type(exc).__name__}: {_first_line(exc)}"


def read_state_dict(weight: ResolvedWeight, strip_prefixes: tuple[str, ...] = ("module.",)) -> dict[str, torch.Tensor]:
    """Tensors of a torch pickle, TorchScript archive or safetensors file, unwrapped and de-prefixed.

    A pickle is read with ``weights_only=True`` (no code runs). Only an entry whose manifest
    format is ``torchscript`` may then be opened with ``torch.jit.load``, and only with a
    pinned digest (``load_torchscript``); any other file that the safe loader refuses is an error.
    """
    path = weight.path
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd: Mapping = load_file(str(path))
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as pickle_error:  # noqa: BLE001 - a TorchScript archive is the other upstream format
            fmt = weight_format(weight.name)
            if fmt not in EXECUTABLE_FORMATS:
                raise WeightsError(f"{path} ({weight.name}) is not a torch state dict that loads without running "
                                   f"code ({_safe_load_reason(pickle_error)}); its manifest format is {fmt}, so it "
                                   f"is not opened any other way; fetch it again with "
                                   f"`harness weights prefetch {weight.name}`") from pickle_error
            sd = load_torchscript(weight).state_dict()
    while isinstance(sd, Mapping) and len(sd) == 1 and next(iter(sd)) in WRAPPER_KEYS:
        sd = next(iter(sd.values()))
    if isinstance(sd, Mapping):
        for key in WRAPPER_KEYS[:2]:  # checkpoints that also carry optimizer state, epoch, ...
            if key in sd and isinstance(sd[key], Mapping):
                sd = sd[key]
                break
    if not isinstance(sd, Mapping):
        raise WeightsError(f"{path} ({weight.name}) does not hold a state dict")
    out = {}
    for key, value in sd.items():
        for prefix in strip_prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
        if isinstance(value, torch.Tensor):
            out[key] = value
    return out


def load_strict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists what is missing or extra."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state_dict)) if tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or shapes:
        raise WeightsError(f"{what}: the checkpoint does not match the architecture: "
                           f"{len(missing)} missing {missing[:6]}, {len(unexpected)} unexpected {unexpected[:6]}, "
                           f"{len(shapes)} shape mismatches {shapes[:4]}; is it the right file?")
    module.load_state_dict(state_dict, strict=True)


def save_random(state_dict: Mapping[str, torch.Tensor], path) -> None:
    """Write a random-init state dict as a plain torch pickle (what ``read_state_dict`` reads)."""
    torch.save({k: v.detach().clone().contiguous() for k, v in state_dict.items()}, path)
