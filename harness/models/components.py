"""Local diffusers model directories: check every component before loading anything.

A real family loads from a directory in the diffusers layout (``model_index.json`` plus one
sub-folder per component). Nothing is fetched: a missing component or a component of the
wrong class fails before any weights are read, with one message that names every problem,
what was expected, and how to get the files onto the machine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

PREFETCH_HINT = ("download it on a machine with internet, e.g. `huggingface-cli download {repo} --local-dir {path}`, "
                 "and copy the directory here (nothing is downloaded at run time)")


class ModelDirError(FileNotFoundError):
    """A model directory that is missing, incomplete or holds the wrong classes."""


@dataclass(frozen=True)
class Component:
    name: str  # sub-folder and model_index.json key, e.g. "transformer"
    classes: tuple[str, ...]  # accepted class names (model_index.json's second field)
    files: tuple[str, ...] = ("config.json",)  # files that must exist in the sub-folder
    weights: bool = True  # needs *.safetensors / *.bin (or their index) in the sub-folder


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")) or any(folder.glob("*.index.json"))


def check_model_dir(path: str | Path, components: list[Component], family: str, repo: str) -> dict:
    """Validate ``path`` against ``components``; returns the parsed model_index.json."""
    path = Path(path)
    hint = PREFETCH_HINT.format(repo=repo, path=path)
    if not path.is_dir():
        raise ModelDirError(f"{family}: model directory {path} does not exist; {hint}")
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise ModelDirError(f"{family}: {index_file} is missing (not a diffusers pipeline directory); {hint}")
    try:
        index = json.loads(index_file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelDirError(f"{family}: {index_file} is not valid JSON ({exc}); {hint}") from exc
    problems = []
    for comp in components:
        entry = index.get(comp.name)
        if not (isinstance(entry, list) and len(entry) == 2):
            problems.append(f"model_index.json has no '{comp.name}' entry (expected one of {', '.join(comp.classes)})")
        elif entry[1] not in comp.classes:
            problems.append(f"'{comp.name}' is {entry[1]} but {family} needs {' or '.join(comp.classes)}")
        folder = path / comp.name
        if not folder.is_dir():
            problems.append(f"component folder {folder} is missing")
            continue
        problems += [f"{folder / f} is missing" for f in comp.files if not (folder / f).is_file()]
        if comp.weights and not _has_weights(folder):
            problems.append(f"{folder} holds no weight files (*.safetensors / *.bin)")
    if problems:
        raise ModelDirError(f"{family}: {path} is not a usable model directory:\n  - "
                            + "\n  - ".join(problems) + f"\n{hint}")
    return index
