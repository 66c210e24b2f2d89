"""`--smoke`'s changes, pinned: the list each method and variant of the tiny preset gets (the preset-wide
part from harness/smoke.py, the per-method part from each method's config) is exactly the one recorded
here (computed by the code before the per-method part moved into the config classes)."""

from __future__ import annotations

import pytest

from harness.config import load_preset
from harness.smoke import smoke_changes

PRESET_WIDE = [(("eval", "num_videos"), 4), (("eval", "final_num_videos"), None), (("sampler", "num_steps"), 4),
               (("probes", "pairs"), 4), (("probes", "draws"), 1), (("jobs",), 1)]
PROBED_EACH_STEP = [(("probes", "every"), 1)]  # with steps: each of the 2 steps is a checkpoint and is probed
_APO_PAIRS = {"source": "rollouts", "split": "prompts", "conditions": 8, "per_condition": 4, "judge": "latent_rm"}
# issue #26: the tiny `apo` is the paper's online, half-online, offline curriculum
APO_STAGES = [{"kind": "online", "steps": 7, "ranker": "latent_rm", "split": "prompts", "conditions": 8},
              {"kind": "half_online", "steps": 7, "pairs": _APO_PAIRS},
              {"kind": "offline", "steps": 6, "pairs": _APO_PAIRS}]
SHIFT_BUFFER = {"prompts": 2, "rollouts_per_prompt": 2, "passes": 1}


def _steps(m: str) -> list:
    return [(("methods", m, "steps"), 2), (("methods", m, "eval_every"), 1)]


def _rollouts(m: str, offline: bool) -> list:
    return [(("methods", m, "conditions"), 2), (("methods", m, "group_size"), 2), (("methods", m, "batch_size"), 2),
            *([(("methods", m, "offline", "count"), 4)] if offline else [])]


def _shift(m: str) -> list:
    return [(("methods", m, "buffer"), SHIFT_BUFFER), (("methods", m, "batch_size"), 2),
            (("methods", m, "real", "count"), 16)]


CASES = {
    "built-in methods": (
        ["sft", "dpo", "pgdpo", "apo", "fcrm", "shift"], True, None,
        [*_steps("sft"),
         *_steps("dpo"), (("methods", "dpo", "pairs", "conditions"), 8),
         *_steps("pgdpo"), (("methods", "pgdpo", "pairs", "conditions"), 8),
         *_steps("apo"), (("methods", "apo", "stages"), APO_STAGES),
         *_steps("fcrm"), *_rollouts("fcrm", offline=True),
         *_steps("shift"), *_shift("shift")]),
    "variants": (
        ["dpo-oracle", "fcrm-onpolicy", "fcrm-fewstep", "shift-a0"], True, None,
        [*_steps("dpo-oracle"), (("methods", "dpo-oracle", "pairs", "conditions"), 8),
         *_steps("fcrm-onpolicy"), *_rollouts("fcrm-onpolicy", offline=False),  # its section: offline: null
         *_steps("fcrm-fewstep"), *_rollouts("fcrm-fewstep", offline=True),
         *_steps("shift-a0"), *_shift("shift-a0")]),
    "without steps": (
        ["apo", "fcrm-offline"], False, None,
        [(("methods", "apo", "stages"), APO_STAGES), *_rollouts("fcrm-offline", offline=True)]),
    "online stage": (
        ["apo"], True, [{"methods": {"apo": {"stages": [{"kind": "offline", "steps": 10},
                                                        {"kind": "online", "steps": 10}]}}}],
        [*_steps("apo"), (("methods", "apo", "stages"), [{"kind": "offline", "steps": 10},
                                                         {"kind": "online", "steps": 10, "conditions": 8}])]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_smoke_changes_are_pinned(case):
    methods, with_steps, overrides, per_method = CASES[case]
    wide = [*PRESET_WIDE, *(PROBED_EACH_STEP if with_steps else [])]
    assert smoke_changes(load_preset("tiny", overrides), methods, with_steps) == [*wide, *per_method]


def test_every_tiny_method_gets_steps_first():
    """Every method and variant of the tiny preset shrinks its steps (2) and evaluates after each."""
    cfg = load_preset("tiny")
    for m in cfg.methods:
        assert smoke_changes(cfg, [m], True)[len(PRESET_WIDE) + len(PROBED_EACH_STEP):][:2] == _steps(m)
