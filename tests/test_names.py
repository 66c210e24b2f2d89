"""Method, variant and trainer names become run-directory parts: unsafe ones are refused before any work."""

from __future__ import annotations

import re

import pytest
import yaml
from typer.testing import CliRunner

import harness.runner
from harness.cli import app
from harness.config import ConfigError, available_presets, load_preset, parse_override
from harness.names import NAME_PATTERN, UnsafeNameError, check_name

UNSAFE = ["../evil", "/tmp/x", "..", ".", "a/b", "a\\b", "", "x" * 65, "-flag", "sft\n"]


def test_every_shipped_and_tested_name_is_safe():
    names = {"fcrm-b", "fcrm-x", "nope"}  # variants and trainers that the tests use
    for preset in available_presets():
        for key, section in load_preset(preset).methods.items():
            names |= {key, section.get("trainer") or key}
    assert {"fcrm-kl0.01", "shift-a0", "sft"} <= names
    assert [check_name("method", n) for n in sorted(names)] == sorted(names)


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_names_are_refused_with_the_rule(name):
    with pytest.raises(UnsafeNameError, match=re.escape(f"method {name!r} is not a safe name")) as err:
        check_name("method", name)
    assert NAME_PATTERN in str(err.value) and "\n" not in str(err.value).replace(repr(name), "")


@pytest.mark.parametrize("key", ["../evil", "/tmp/x"])
def test_a_preset_with_an_unsafe_method_key_does_not_load(tmp_path, key):
    path = tmp_path / "evil.yaml"
    path.write_text(yaml.safe_dump({"extends": "tiny", "name": "evil", "methods": {key: {"trainer": "sft"}}}))
    with pytest.raises(ConfigError, match=re.escape(f"methods key {key!r} is not a safe name")) as err:
        load_preset(str(path))
    assert NAME_PATTERN in str(err.value)


def test_an_unsafe_trainer_override_does_not_load():
    with pytest.raises(ConfigError, match=re.escape("methods.sft.trainer '../x' is not a safe name")):
        load_preset("tiny", [parse_override("methods.sft.trainer=../x")])


def _tree(root):
    return sorted(p.relative_to(root) for p in root.rglob("*"))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--preset", "{preset}", "--methods", "sft"], "methods key '../evil' is not a safe name"),
        (["--preset", "{preset}", "--methods", "../evil"], "--methods name '../evil' is not a safe name"),
        (["--methods", "/tmp/x"], "--methods name '/tmp/x' is not a safe name"),
        (["--methods", "sft", "--set", "methods.sft.trainer=../x"], "methods.sft.trainer '../x' is not a safe name"),
    ],
)
def test_run_refuses_unsafe_names_before_any_work(tmp_path, monkeypatch, args, expected):
    """The run loop is never reached and nothing is written, inside or outside --out."""
    calls = []
    monkeypatch.setattr(harness.runner, "run", lambda *a, **k: calls.append(a))
    preset = tmp_path / "evil.yaml"
    preset.write_text(yaml.safe_dump({"extends": "tiny", "name": "evil", "methods": {"../evil": {"trainer": "sft"}}}))
    before = _tree(tmp_path)
    out = tmp_path / "runs" / "r"
    res = CliRunner().invoke(app, ["run", *[a.format(preset=preset) for a in args], "--out", str(out),
                                   "--no-progress", "--no-report"])
    assert res.exit_code == 2, res.output
    assert expected in res.output and NAME_PATTERN in res.output
    assert calls == [] and _tree(tmp_path) == before
