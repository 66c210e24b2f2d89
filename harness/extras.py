"""Optional packages: which extra of pyproject.toml provides them, and the error when one is missing.

The ``full`` extra holds torchvision only: transformers needs it to build the video processors of
Qwen2/2.5/3-VL (the VLM ranker of Diffusion-APO). The VBench backends (DINO/CLIP ViTs, DreamSim, MUSIQ,
RAFT, AMT, CoTracker) are implemented in this package and import neither timm nor open_clip.
"""

from __future__ import annotations

import importlib


class MissingExtraError(ImportError):
    """A package that a backend needs is not installed; the message names the extra that provides it."""


def has_module(name: str) -> bool:
    """Whether ``import name`` works (False also when ``sys.modules[name]`` is None)."""
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def missing_extra(package: str, extra: str, needed_by: str) -> MissingExtraError:
    return MissingExtraError(
        f"{needed_by} needs {package}, which is not installed; install the {extra!r} extra: "
        f"pip install -e '.[{extra}]' (scripts/install.sh adds it on machines with an NVIDIA GPU)")
