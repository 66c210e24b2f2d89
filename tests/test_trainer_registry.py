"""Method discovery (trainers/registry.py): the built-in methods are the `trainers` modules that register
a trainer, found without importing the helper modules; installed packages add methods through the
``harness.methods`` entry-point group; a broken method module stops discovery with its name."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint

import pytest

import trainers
from trainers import registry

TOY = '''
from trainers.registry import register_trainer
from trainers.sft import SFTTrainer


@register_trainer
class ToyTrainer(SFTTrainer):
    name = "toy"
    description = "a toy method"
'''


@pytest.fixture
def fresh_registry(monkeypatch):
    """A registry that forgets what a test registers (and discovers again)."""
    monkeypatch.setattr(registry, "TRAINERS", {})
    registry._discover.cache_clear()
    yield
    registry._discover.cache_clear()


def test_builtin_methods_are_found_without_importing_helpers():
    code = ("import sys; from trainers.registry import builtin_method_modules as b; print(b()); "
            "print(sorted(m for m in sys.modules if m.startswith('trainers.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    modules = ("apo", "awm", "diffusionnft", "dpo", "fcrm", "flow_grpo", "pgdpo", "sft", "shift")
    assert out[0] == str([f"trainers.{m}" for m in modules])
    assert out[1] == str(["trainers.registry"])
    assert registry.available_methods() == ["apo", "awm", "diffusionnft", "dpo", "fcrm", "flow-grpo", "pgdpo", "sft",
                                            "shift"]


def test_a_broken_method_module_is_named(fresh_registry, monkeypatch, tmp_path):
    (tmp_path / "broken_method.py").write_text(TOY + "\nraise ImportError('no such dependency')\n")
    (tmp_path / "broken_helper.py").write_text("raise ImportError('never imported')\n")
    monkeypatch.setattr(trainers, "__path__", [*trainers.__path__, str(tmp_path)])
    with pytest.raises(registry.MethodLoadError, match="trainers.broken_method failed to import: ImportError"):
        registry.available_methods()


def test_entry_point_adds_a_method(fresh_registry, monkeypatch, tmp_path):
    (tmp_path / "toy_method_ep.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "entry_points", lambda group: [EntryPoint("toy", "toy_method_ep", group)])
    assert "toy" in registry.available_methods()
    assert registry.get_trainer("toy").description == "a toy method"


def test_a_broken_entry_point_is_named(fresh_registry, monkeypatch):
    monkeypatch.setattr(registry, "entry_points",
                        lambda group: [EntryPoint("gone", "no_such_package.method", group)])
    with pytest.raises(registry.MethodLoadError, match="entry point gone = no_such_package.method"):
        registry.available_methods()
