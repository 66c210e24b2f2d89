"""The walk-throughs are true: the example method of docs/adding-a-method.md (its module and its preset
file, taken from the document as written) and the example metric of docs/adding-a-metric.md run through
`harness run --smoke`; the method trains, is evaluated and stored, and the metric's numbers are stored.

The method module is loaded as a third-party package would add it (the ``harness.methods`` entry-point
group); the metric module is imported, as metrics/__init__.py would import it. Both registries are
restored afterwards."""

from __future__ import annotations

import importlib
import json
import re
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from tiny_runs import shared_cache
from typer.testing import CliRunner

import metrics.registry
from harness.cli import app
from harness.store import ResultStore
from trainers import registry

DOCS = Path(__file__).resolve().parents[1] / "docs"
METRIC = "luma_change[stat=std]"  # the preset's eval.backends picks the std statistic


def doc_block(doc: str, first_line: str) -> str:
    """The fenced code block of ``docs/<doc>`` whose first line is ``first_line``."""
    for block in re.findall(r"```\w*\n(.*?)```", (DOCS / doc).read_text(), re.S):
        if block.splitlines()[0] == first_line:
            return block
    raise AssertionError(f"docs/{doc} has no code block starting {first_line!r}")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One smoke run of the doc's `coarse` method, evaluated with the doc's `luma_change` metric."""
    tmp = tmp_path_factory.mktemp("walkthrough")
    (tmp / "coarse_method.py").write_text(doc_block("adding-a-method.md", "# trainers/coarse.py"))
    (tmp / "luma_change_metric.py").write_text(doc_block("adding-a-metric.md", "# metrics/luma_change.py"))
    preset = tmp / "coarse.yaml"
    preset.write_text(doc_block("adding-a-method.md", "# coarse.yaml")
                      + "eval:\n  backends: {luma_change: {stat: std}}\n")
    out = tmp / "run"
    with pytest.MonkeyPatch.context() as mp, shared_cache(tmp_path_factory):
        mp.syspath_prepend(str(tmp))
        mp.setattr(registry, "TRAINERS", dict(registry.TRAINERS))
        mp.setattr(registry, "entry_points", lambda group: [EntryPoint("coarse", "coarse_method", group)])
        mp.setattr(metrics.registry, "_REGISTRY", dict(metrics.registry._REGISTRY))
        registry._discover.cache_clear()
        try:
            importlib.import_module("luma_change_metric")
            listed = CliRunner().invoke(app, ["list", "methods", "--preset", str(preset)])
            res = CliRunner().invoke(app, ["run", "--smoke", "--preset", str(preset), "--methods", "coarse",
                                           "--metrics", "luma_change,motion_score", "--set", "probes.names=[]",
                                           "--out", str(out), "--no-progress"])
        finally:
            registry._discover.cache_clear()
    assert listed.exit_code == 0, listed.output
    assert res.exit_code == 0, res.output
    return out, listed.output


def test_the_method_is_listed_trained_evaluated_and_stored(run):
    out, listed = run
    assert "coarse\tSFT at high noise levels only (LoRA)" in listed
    assert "coarse-high\tvariant of coarse: min_sigma=0.8" in listed
    with ResultStore(out / "results.sqlite") as store:
        ckpts = store.checkpoints()
        assert sorted(zip(ckpts["method"], ckpts["step"], strict=True)) == [("base", 0), ("coarse", 1), ("coarse", 2)]
        logs = store.train_logs()
        assert sorted(logs[logs["key"] == "loss"]["step"]) == [1, 2]  # --smoke: 2 steps
        assert ((logs["key"] == "sigma_mean") & (logs["value"] >= 0.5)).sum() == 2  # the method's own log
        counted = logs[logs["key"].str.startswith("compute/")].sort_values(["key", "step"])
        # batch 2, one trained forward (3 passes) a video; the runner's counts, cumulative
        assert list(zip(counted["key"], counted["step"], counted["value"], strict=True)) == [
            ("compute/passes", 1, 6.0), ("compute/passes", 2, 12.0),
            ("compute/samples", 1, 2.0), ("compute/samples", 2, 4.0)]
        agg = store.aggregates()
        steps = agg[agg["method"] == "coarse"].groupby("metric")["step"].apply(sorted).to_dict()
        assert steps[METRIC] == [1, 2] and steps["motion_score[flow=dis,stat=mean]"] == [1, 2]
        config = store.runs()["config"][0]["methods"]["coarse"]
    assert config["min_sigma"] == 0.5 and config["batch_size"] == 2  # the section, shrunk by its smoke_changes
    assert json.loads((out / "run.json").read_text())["options"]["methods"] == ["coarse"]


def test_the_metric_is_stored_per_video_and_aggregated(run):
    out, _ = run
    with ResultStore(out / "results.sqlite") as store:
        records = store.records(METRIC)
        agg = store.aggregates()
    assert len(records) == 3 * 4  # base, 2 checkpoints x 4 smoke eval videos
    assert records["value"].notna().all() and (records["value"] >= 0).all()
    mine = agg[agg["metric"] == METRIC]
    assert sorted(zip(mine["method"], mine["step"], strict=True)) == [("base", 0), ("coarse", 1), ("coarse", 2)]
    assert mine["value"].notna().all()
