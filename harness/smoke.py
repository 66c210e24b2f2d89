"""`harness run --smoke`: a run of seconds, made by shrinking what the user did not set.

The user's preset and ``--set`` values are validated first (a smoke run must not hide an invalid
value), then every smoke change whose field the user set (or a field inside it, or around it) is
left out, and the changes made are returned so the run can say what it changed.
"""

from __future__ import annotations

from typing import Any

from harness.config import PresetConfig

Path_ = tuple[str, ...]


def leaf_paths(override: dict[str, Any], prefix: Path_ = ()) -> list[Path_]:
    """The dotted fields an override sets: ``{'a': {'b': 1}}`` -> ``[('a', 'b')]``."""
    out: list[Path_] = []
    for k, v in override.items():
        if isinstance(v, dict) and v:
            out += leaf_paths(v, (*prefix, str(k)))
        else:
            out.append((*prefix, str(k)))
    return out


def _overlaps(a: Path_, b: Path_) -> bool:
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def smoke_changes(cfg: PresetConfig, methods: list[str], with_steps: bool) -> list[tuple[Path_, Any]]:
    """Every field a smoke run shrinks: 4 eval videos (the final checkpoints' set too: it is left unset,
    i.e. eval.num_videos), 4 sampler steps, small probe sets, one unit at a time (``jobs``; ``--jobs`` still
    wins) and, for each method, what its config
    shrinks (``TrainerConfig.smoke_changes``: with ``with_steps``, 2 training steps evaluated and probed
    after each step; small rollout, pair and buffer sets)."""
    from trainers.registry import trainer_for

    changes: list[tuple[Path_, Any]] = [(("eval", "num_videos"), 4), (("eval", "final_num_videos"), None),
                                        (("sampler", "num_steps"), 4),
                                        (("probes", "pairs"), 4), (("probes", "draws"), 1),
                                        # units of seconds: starting a worker process costs more than it saves
                                        (("jobs",), 1)]
    if with_steps:  # probed at every one of the 2 steps, as each is a checkpoint
        changes.append((("probes", "every"), 1))
    for m in methods:
        section = cfg.methods.get(m, {})
        config_class = trainer_for(m, section).config_class
        changes += [(("methods", m, *path), value) for path, value in config_class.smoke_changes(section, with_steps)]
    return changes


def apply_smoke(cfg: PresetConfig, methods: list[str], user: list[dict[str, Any]], with_steps: bool
                ) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """(overrides to apply after the user's, the changes made, the smoke changes skipped because the
    user set them), as dotted ``field=value`` strings."""
    mine = [p for o in user for p in leaf_paths(o)]
    overrides, made, kept = [], [], []
    for path, value in smoke_changes(cfg, methods, with_steps):
        dotted = f"{'.'.join(path)}={value}"
        if any(_overlaps(path, p) for p in mine):
            kept.append(dotted)
            continue
        nested: Any = value
        for part in reversed(path):
            nested = {part: nested}
        overrides.append(nested)
        made.append(dotted)
    return overrides, made, kept
