import json
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


def test_console_script_help():
    exe = Path(sys.executable).with_name("harness")
    for args in ([], ["pretrain"]):
        out = subprocess.run([str(exe), *args, "--help"], capture_output=True, text=True, check=True).stdout
        assert "Usage: harness" in out
    top = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("pretrain", "sample", "world", "list"):
        assert command in top


def test_pretrain_writes_checkpoint_and_record_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "ckpt"
    res = runner.invoke(app, ["pretrain", "--out", str(out), *QUICK])
    assert res.exit_code == 0, res.output
    files = {p.name for p in out.iterdir()}
    assert {"diffusion_pytorch_model.safetensors", "config.json", "adapter.json", "training_record.json"} <= files
    record = json.loads((out / "training_record.json").read_text())
    assert len(record["loss_curve"]) >= 1 and record["train_seconds"] > 0
    assert record["git"]["commit"] and record["versions"]["diffusers"] and "reproduce" in record
    assert record["oracle_at_end"]["n"] == 2
    before = (out / "diffusion_pytorch_model.safetensors").read_bytes()

    res = runner.invoke(app, ["pretrain", "--out", str(out), *QUICK, "--set", "pretrain.seed=5"])
    assert res.exit_code == 2 and "--force" in res.output
    assert (out / "diffusion_pytorch_model.safetensors").read_bytes() == before

    res = runner.invoke(app, ["pretrain", "--out", str(out), *QUICK, "--set", "pretrain.seed=5", "--force"])
    assert res.exit_code == 0, res.output
    assert (out / "diffusion_pytorch_model.safetensors").read_bytes() != before


def test_unwritable_output_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    res = runner.invoke(app, ["pretrain", "--out", str(blocker / "ckpt"), *QUICK])
    assert res.exit_code == 2 and "cannot write" in res.output and "--out" in res.output


def test_nan_loss_stops_with_the_step_and_writes_nothing(tmp_path):
    out = tmp_path / "ckpt"
    res = runner.invoke(app, ["pretrain", "--out", str(out), *QUICK, "--steps", "4", "--set", "pretrain.lr=.inf"])
    assert res.exit_code == 2 and "at step" in res.output and "pretrain.lr" in res.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["pretrain", "--preset", "nope"],
         "unknown preset 'nope'; allowed: svd-davis, tiny, tiny-long, wan21-1.3b-fewstep, wan21-i2v-dpo, wan22-ti2v"),
        (["pretrain", "--set", "sampler.kind=heun"], "'ode' or 'sde'"),
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
    assert res.exit_code == 2 and "adapter.json" in res.output and "harness pretrain" in res.output
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_train_reward_on_a_real_preset_needs_pairs(tmp_path):
    """A real preset has no oracle: `train-reward` asks for preference pairs, and a bad spec is named."""
    res = runner.invoke(app, ["train-reward", "--preset", "wan21-1.3b-fewstep", "--out", str(tmp_path / "rm")])
    assert res.exit_code != 0 and "no oracle" in res.output and "--pairs footage" in res.output
    res = runner.invoke(app, ["train-reward", "--preset", "tiny", "--pairs", "videos", "--out", str(tmp_path / "rm")])
    assert res.exit_code != 0 and "--pairs 'videos': give footage[:SPLIT]" in res.output
