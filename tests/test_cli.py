import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app

runner = CliRunner()
QUICK = ["--steps", "2", "--set", "pretrain.batch_size=2", "--set", "pretrain.judge_videos=2",
         "--set", "pretrain.warmup_steps=1", "--no-progress"]


COMMANDS = ("run", "reproduce", "tune", "eval", "sample", "report", "export", "regress", "world", "list", "weights")
BUILDERS = ("base", "features", "latent-rm", "motion-rm", "fewstep")


def _help_commands(out: str) -> set[str]:
    """The command names of a --help page's command table (rows that start with a name, not an option)."""
    return set(re.findall(r"^│ ([a-z][a-z-]*) ", out, flags=re.MULTILINE))


def test_console_script_help():
    exe = Path(sys.executable).with_name("harness")
    for args in ([], ["build"], ["build", "base"]):
        out = subprocess.run([str(exe), *args, "--help"], capture_output=True, text=True, check=True).stdout
        assert "Usage: harness" in out
    top = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
    assert {*COMMANDS, "build"} <= _help_commands(top)


def test_commands_and_the_build_group():
    """Every top-level command stays; the asset builders are `harness build` sub-commands, not top-level ones."""
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    assert _help_commands(top.output) == {*COMMANDS, "build"}
    build = runner.invoke(app, ["build", "--help"])
    assert build.exit_code == 0 and _help_commands(build.output) == set(BUILDERS)
    for command in (*COMMANDS, *(f"build {b}" for b in BUILDERS)):
        assert runner.invoke(app, [*command.split(), "--help"]).exit_code == 0, command
    for old in ("pretrain", "train-features", "train-reward", "train-motion-reward", "distill-fewstep"):
        assert runner.invoke(app, [old, "--help"]).exit_code == 2, old


def test_pretrain_writes_checkpoint_and_record_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "ckpt"
    res = runner.invoke(app, ["build", "base", "--out", str(out), *QUICK])
    assert res.exit_code == 0, res.output
    files = {p.name for p in out.iterdir()}
    assert {"diffusion_pytorch_model.safetensors", "config.json", "adapter.json", "training_record.json"} <= files
    record = json.loads((out / "training_record.json").read_text())
    assert len(record["loss_curve"]) >= 1 and record["train_seconds"] > 0
    assert record["git"]["commit"] and record["versions"]["diffusers"] and "reproduce" in record
    assert record["oracle_at_end"]["n"] == 2
    before = (out / "diffusion_pytorch_model.safetensors").read_bytes()

    res = runner.invoke(app, ["build", "base", "--out", str(out), *QUICK, "--set", "pretrain.seed=5"])
    assert res.exit_code == 2 and "--force" in res.output
    assert (out / "diffusion_pytorch_model.safetensors").read_bytes() == before

    res = runner.invoke(app, ["build", "base", "--out", str(out), *QUICK, "--set", "pretrain.seed=5", "--force"])
    assert res.exit_code == 0, res.output
    assert (out / "diffusion_pytorch_model.safetensors").read_bytes() != before


def test_unwritable_output_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    res = runner.invoke(app, ["build", "base", "--out", str(blocker / "ckpt"), *QUICK])
    assert res.exit_code == 2 and "cannot write" in res.output and "--out" in res.output


def test_nan_loss_stops_with_the_step_and_writes_nothing(tmp_path):
    out = tmp_path / "ckpt"
    res = runner.invoke(app, ["build", "base", "--out", str(out), *QUICK, "--steps", "4",
                              "--set", "pretrain.lr=.inf"])
    assert res.exit_code == 2 and "at step" in res.output and "pretrain.lr" in res.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["build", "base", "--preset", "nope"],
         "unknown preset 'nope'; allowed: svd-davis, tiny, tiny-long, wan21-1.3b-fewstep, wan21-i2v-dpo, wan22-ti2v"),
        (["build", "base", "--set", "sampler.kind=heun"], "'ode' or 'sde'"),
        (["world", "--split", "train"], "allowed: pretrain, finetune, prompts, eval"),
    ],
)
def test_bad_input_names_the_problem(args, expected):
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and expected in res.output


def test_world_and_list(tmp_path):
    res = runner.invoke(app, ["world", "--split", "finetune", "-n", "2", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (tmp_path / "clips.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all((tmp_path / r["video"]).is_file() and r["caption"] for r in rows)
    assert "tiny" in runner.invoke(app, ["list", "presets"]).output


def test_sample_command_on_the_shipped_model(tmp_path):
    res = runner.invoke(app, ["sample", "-n", "2", "--out", str(tmp_path), "--set", "sampler.num_steps=4"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["videos"] == 2 and summary["sampler"]["num_steps"] == 4
    assert len(list(tmp_path.glob("*.mp4"))) == 2


def test_sample_with_missing_checkpoint(tmp_path):
    res = runner.invoke(app, ["sample", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "adapter.json" in res.output and "harness build base" in res.output
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_build_latent_rm_on_a_real_preset_needs_pairs(tmp_path):
    """A real preset has no oracle: `build latent-rm` asks for preference pairs, and a bad spec is named."""
    res = runner.invoke(app, ["build", "latent-rm", "--preset", "wan21-1.3b-fewstep",
                              "--out", str(tmp_path / "rm")])
    assert res.exit_code != 0 and "no oracle" in res.output and "--pairs footage" in res.output
    res = runner.invoke(app, ["build", "latent-rm", "--preset", "tiny", "--pairs", "videos",
                              "--out", str(tmp_path / "rm")])
    assert res.exit_code != 0 and "--pairs 'videos': give footage[:SPLIT]" in res.output
