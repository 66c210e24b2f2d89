"""Power where it is cheap (issue 25): the base model and each method's last checkpoint are evaluated on
the final eval set (eval.final_num_videos), the other checkpoints on its first eval.num_videos videos;
FVD names the number of generated videos in its identity and is computed on the final set only when the
intermediate one is too small for it; a resumed run evaluates the same sets."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from tiny_runs import fast_preset, run_cache  # noqa: F401  (run_cache: autouse fixture)

from harness.config import load_preset, parse_override
from harness.evaluate import Evaluator
from harness.runner import RunOptions, run
from harness.smoke import apply_smoke
from harness.store import ResultStore

METRICS = ["motion_score", "fvd"]
SMALL, FINAL = 4, 8


def _preset():
    return fast_preset(f"eval.final_num_videos={FINAL}")


def _opts(**kw):
    return RunOptions(**{"methods": ["sft"], "steps": 2, "eval_every": 1, "metrics": METRICS,
                         "show_progress": False, **kw})


def _aggregates(out: Path):
    with ResultStore(out / "results.sqlite") as store:
        agg = store.aggregates()
    probes = agg["extras"].map(lambda e: (e or {}).get("kind") == "training-probe")  # measured in training
    return agg[~agg["metric"].str.startswith("rollup:") & ~probes]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from tiny_runs import shared_cache

    out = tmp_path_factory.mktemp("final") / "run"
    lines = _Lines()
    runner_log = logging.getLogger("harness.runner")
    level = runner_log.level
    runner_log.addHandler(lines)
    runner_log.setLevel(logging.INFO)
    try:
        with shared_cache(tmp_path_factory):
            run(_preset(), out, _opts())
    finally:
        runner_log.removeHandler(lines)
        runner_log.setLevel(level)
    (out / "runner.log").write_text("\n".join(lines.messages))
    return out


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_final_and_base_use_the_larger_set(finished):
    agg = _aggregates(finished)
    sizes = {(r.method, r.step): set() for r in agg.itertuples()}
    for r in agg.itertuples():
        sizes[(r.method, r.step)].add(r.extras["eval_videos"])
    assert sizes == {("base", 0): {FINAL}, ("sft", 1): {SMALL}, ("sft", 2): {FINAL}}
    motion = agg[agg["metric"].str.startswith("motion_score")].set_index("step")["n"]
    assert motion.to_dict() == {0: FINAL, 1: SMALL, 2: FINAL}
    for step, n in ((1, SMALL), (2, FINAL)):
        with np.load(finished / "checkpoints" / "sft" / "seed0" / f"step{step:06d}" / "samples.npz") as z:
            assert len(z["frames"]) == n and list(z["seeds"]) == [1000 + i for i in range(n)]
    with ResultStore(finished / "results.sqlite") as store:
        rec = store.records()
    ids = {s: set(rec[(rec["step"] == s) & (rec["method"] == "sft")]["video_id"]) for s in (1, 2)}
    assert ids[1] < ids[2] and len(ids[2]) == FINAL  # a nested subset: the same clips and seeds


def test_fvd_on_the_final_set_only(finished):
    """FVD needs more videos than its feature dimension (a covariance that is not singular): the base model and
    the last checkpoint compute it on the final set, named gen=<count>; the smaller intermediate set stores no
    value rather than an unreliable one."""
    agg = _aggregates(finished)
    fvd = agg[agg["metric"].str.startswith("fvd[")]
    by_step = dict(zip(fvd["step"], fvd["metric"], strict=True))
    assert sorted(by_step) == [0, 2]
    assert f"gen={FINAL}" in by_step[0] and f"gen={FINAL}" in by_step[2]
    other = agg[(agg["step"] == 1) & ~agg["metric"].str.startswith("fvd[")]
    assert set(other["metric"].str.split("[").str[0]) == {"motion_score"}  # the others are scored as before
    # the eval set is named by its digest in both the aggregate and the inputs binding
    con = sqlite3.connect(finished / "results.sqlite")
    keys = dict(con.execute("SELECT c.step, i.key_json FROM inputs i JOIN checkpoints c USING (checkpoint_id) "
                            "WHERE c.method = 'sft'").fetchall())
    con.close()
    for r in agg[agg["method"] == "sft"].itertuples():
        assert r.extras["eval_set"] == json.loads(keys[r.step])["eval_set"]
    assert json.loads(keys[1])["eval_set"] != json.loads(keys[2])["eval_set"]


def test_resume_evaluates_the_same_sets(finished, tmp_path, caplog):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished, out)
    before = {(r.method, r.step, r.metric): (r.value, r.n) for r in _aggregates(out).itertuples()}
    final_dir = out / "checkpoints" / "sft" / "seed0" / "step000002"
    (final_dir / "samples.npz").unlink()  # an evaluation interrupted: the last checkpoint's results are gone
    con = sqlite3.connect(out / "results.sqlite")
    con.execute("DELETE FROM aggregates WHERE checkpoint_id IN (SELECT checkpoint_id FROM checkpoints "
                "WHERE method = 'sft' AND step = 2)")
    con.commit()
    con.close()
    with caplog.at_level(logging.INFO, logger="harness.runner"):
        run(_preset(), out, _opts(resume=True, adopt=True))  # a copy of the finished run
    assert "sft seed 0: training already complete (step 2)" in caplog.messages
    assert not any("training steps" in m for m in caplog.messages)
    after = {(r.method, r.step, r.metric): (r.value, r.n) for r in _aggregates(out).itertuples()}
    assert after.keys() == before.keys()
    for k, (v, n) in before.items():
        assert after[k][1] == n and (after[k][0] == v or (np.isnan(v) and np.isnan(after[k][0]))), k
    with np.load(final_dir / "samples.npz") as z:
        assert len(z["frames"]) == FINAL


def test_changing_the_set_resamples(tmp_path):
    """The same checkpoint evaluated on the other set is sampled again, never read from the other size."""
    from harness.models.starting import base_adapter, base_weights

    preset = _preset()
    ev = Evaluator(preset, ["motion_score"])
    path = tmp_path / "samples.npz"
    adapter = base_adapter(preset)
    adapter.model.eval()
    small = ev.samples_for(adapter, path, False, None, ev.inputs_key(base_weights(preset)))
    ev.use_set(True)
    big = ev.samples_for(adapter, path, False, None, ev.inputs_key(base_weights(preset)))
    assert len(small) == SMALL and len(big) == FINAL
    np.testing.assert_array_equal(big[:SMALL], small)  # nested: the same clips and seeds


def test_preset_defaults_and_smoke():
    tiny = load_preset("tiny")
    assert (tiny.eval.size(False), tiny.eval.size(True)) == (16, 192)
    other = load_preset("tiny", [parse_override("eval.final_num_videos=null")])
    assert other.eval.size(True) == other.eval.num_videos == 16
    assert "final_num_videos" not in other.record()["eval"]  # unset: runs recorded before it still compare
    more = load_preset("tiny", [parse_override("eval.num_videos=256")])  # the final set is never the smaller
    assert (more.eval.size(False), more.eval.size(True)) == (256, 256)
    shrink, made, _ = apply_smoke(tiny, ["sft"], [], with_steps=True)
    smoke = load_preset("tiny", shrink)
    assert smoke.eval.size(False) == smoke.eval.size(True) == 4
    assert "eval.final_num_videos=None" in made


def test_denser_checkpoints_change_no_number(finished, tmp_path):
    """A curve's intermediate checkpoints are free of side effects: the same run evaluated only at its last
    step stores the same final numbers, probes included, and the probes follow their own schedule (step 0,
    every probes.every steps, the last step), not the checkpoints'."""
    out = tmp_path / "sparse"
    run(_preset(), out, _opts(eval_every=2))
    with ResultStore(out / "results.sqlite") as store:
        sparse = store.aggregates()
    with ResultStore(finished / "results.sqlite") as store:
        dense, logs = store.aggregates(), store.train_logs()

    def last(agg):
        rows = agg[(agg["method"] == "sft") & (agg["step"] == 2)]
        return dict(zip(rows["metric"], rows["value"], strict=True))
    assert sorted(sparse[sparse["method"] == "sft"]["step"].unique()) == [2]
    a, b = last(sparse), last(dense)
    assert a.keys() == b.keys() and any(k.startswith("chosen_logp_step") for k in a)
    for k in a:
        assert a[k] == b[k] or (np.isnan(a[k]) and np.isnan(b[k])), k
    probed = sorted(logs[logs["key"].str.startswith("probe/")]["step"].unique())
    assert probed == [0, 2]  # not step 1, a checkpoint of the dense run


def test_evaluating_one_checkpoint_uses_the_final_set(finished, tmp_path):
    """`harness eval --checkpoint` scores a checkpoint as the tables score a method's last one: on the final set."""
    from harness.evaluate import evaluate_checkpoint

    ckpt = finished / "checkpoints" / "sft" / "seed0" / "step000001"  # an intermediate checkpoint of the run
    results = evaluate_checkpoint(_preset(), ckpt, tmp_path / "eval", METRICS, show_progress=False)
    with ResultStore(results) as store:
        agg = store.aggregates()
    assert {r.extras["eval_videos"] for r in agg.itertuples() if not r.metric.startswith("rollup:")} == {FINAL}
    assert agg["metric"].str.startswith("fvd[").any()


def test_each_training_segment_is_logged(finished):
    """The run log names each stretch of training between checkpoints (benchmarks/bench_budget.py times
    training and evaluation from these lines), the first one from the step a run starts at."""
    from harness.runner import Schedule, _segment_end

    messages = (finished / "runner.log").read_text().splitlines()
    assert [m for m in messages if "training steps" in m or "evaluating step" in m] == [
        "sft seed 0: training steps 1-1", "sft seed 0: evaluating step 1",
        "sft seed 0: training steps 2-2", "sft seed 0: evaluating step 2"]
    schedule = Schedule(steps=100, eval_every=50)
    assert [_segment_end(s, schedule, {20}) for s in (0, 20, 50)] == [20, 50, 100]  # a trainer's own checkpoint
