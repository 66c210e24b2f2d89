"""The shared optimizer step (trainers/optimizer.py): AdamW under a DeepSpeed ZeRO-2 engine takes the
steps plain AdamW takes (two gloo ranks, each with its own rows), through several backwards per step,
per-backward gradient norms and a restart of the optimizer; its consolidated state resumes exactly,
fp32 master weights included when the parameters are bf16."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from harness.distributed import Dist, DistributedConfigError, zero_config
from trainers.optimizer import AdamWSettings, AdamWStep, ZeroStep

ZERO = {"zero_optimization": {"stage": 2}, "bf16": {"enabled": False}}


def _model(dtype=torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 2)).to(dtype)


def _data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(4, 6, generator=g), torch.randn(4, 2, generator=g)


def _steps(opt, model, dist: Dist, steps: range, reset_at: int | None = None) -> list[dict[str, float]]:
    """Each step: two backwards (a data term on this rank's rows, a penalty) with measured norms."""
    logs = []
    for step in steps:
        if step == reset_at:
            opt.reset()
        x, y = _data(step)
        rows = dist.rows(len(x))
        opt.zero_grad()
        fit = ((model(x[rows].to(next(model.parameters()).dtype)).float() - y[rows]) ** 2).mean()
        n_fit = opt.backward(fit, last=False, measure=True)
        penalty = 0.1 * sum((p.float() ** 2).sum() for p in model.parameters())
        n_pen = opt.backward(penalty, last=True, measure=True)
        logs.append({"fit": n_fit, "penalty": n_pen, "grad_norm": opt.step()})
    return logs


def _groups(model) -> list[dict]:
    params = list(model.parameters())
    return [{"params": params[:2], "lr": 1e-2}, {"params": params[2:], "lr": 3e-2, "weight_decay": 0.1}]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        dist = Dist(rank, world, rank)
        results = {}
        model = _model()
        opt = ZeroStep(_groups(model), 0.5, dist, AdamWSettings(), zero_config(ZERO, 0.5, world))
        results["fp32"] = _steps(opt, model, dist, range(4), reset_at=2)
        results["fp32_weights"] = [p.detach().clone() for p in model.parameters()]
        results["fp32_state"] = opt.state_dict()
        # bf16 parameters, fp32 masters: 4 steps straight vs 2 steps, consolidate, a new engine, 2 more.
        bf16 = zero_config({**ZERO, "bf16": {"enabled": True}}, 0.5, world)
        model = _model()
        opt = ZeroStep(_groups(model), 0.5, dist, AdamWSettings(), bf16)
        _steps(opt, model, dist, range(4))
        results["bf16_straight"] = opt.state_dict()
        model = _model()
        opt = ZeroStep(_groups(model), 0.5, dist, AdamWSettings(), bf16)
        _steps(opt, model, dist, range(2))
        saved = opt.state_dict()
        model = _model()
        opt = ZeroStep(_groups(model), 0.5, dist, AdamWSettings(), bf16)
        opt.load_state_dict(saved)
        _steps(opt, model, dist, range(2, 4))
        results["bf16_resumed"] = opt.state_dict()
        results["bf16_dtype"] = next(model.parameters()).dtype
        if rank == 0:
            torch.save(results, out)
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def zero(tmp_path_factory):
    pytest.importorskip("deepspeed")
    out = tmp_path_factory.mktemp("zero") / "results.pt"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(out)), nprocs=2, join=True)
    return torch.load(out, weights_only=False)


def _reference() -> tuple[list[dict[str, float]], torch.nn.Module, dict]:
    """Plain AdamW on one process: each backward on the whole batch is the mean of two ranks' halves."""
    model = _model()
    opt = AdamWStep(_groups(model), 0.5, Dist(), AdamWSettings())
    logs = []
    for step in range(4):
        if step == 2:
            opt.reset()
        x, y = _data(step)
        opt.zero_grad()
        fit = sum(((model(x[r]) - y[r]) ** 2).mean() for r in (slice(0, 2), slice(2, 4))) / 2
        n_fit = opt.backward(fit, last=False, measure=True)
        n_pen = opt.backward(0.1 * sum((p ** 2).sum() for p in model.parameters()), last=True, measure=True)
        logs.append({"fit": n_fit, "penalty": n_pen, "grad_norm": opt.step()})
    return logs, model, opt.state_dict()


def test_zero2_steps_equal_plain_adamw(zero):
    logs, model, state = _reference()
    for got, want in zip(zero["fp32"], logs, strict=True):
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-5), (key, got, want)
    assert logs[0]["fit"] > 0 and logs[0]["penalty"] > 0 and logs[0]["grad_norm"] > 0.5  # the clip acts
    for got, want in zip(zero["fp32_weights"], model.parameters(), strict=True):
        torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)
    # The consolidated state is torch AdamW's: it loads into a plain AdamW.
    assert zero["fp32_state"]["param_groups"][1]["lr"] == 3e-2 and "master" not in zero["fp32_state"]
    for i, s in state["state"].items():
        assert float(zero["fp32_state"]["state"][i]["step"]) == float(s["step"]) == 2.0  # reset at step 2
        torch.testing.assert_close(zero["fp32_state"]["state"][i]["exp_avg_sq"], s["exp_avg_sq"], rtol=1e-4, atol=1e-9)
    AdamWStep(_groups(_model()), 0.5, Dist(), AdamWSettings()).load_state_dict(zero["fp32_state"])


def test_bf16_zero2_state_resumes_exactly(zero):
    assert zero["bf16_dtype"] == torch.bfloat16
    straight, resumed = zero["bf16_straight"], zero["bf16_resumed"]
    assert straight["master"][0].dtype == torch.float32
    for i in straight["master"]:  # fp32 masters and moments: bit for bit
        assert torch.equal(straight["master"][i], resumed["master"][i])
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(straight["state"][i][key], resumed["state"][i][key])
    # The masters hold what bf16 cannot: they are not the rounded weights.
    assert any(not torch.equal(m, m.bfloat16().float()) for m in straight["master"].values())


def test_zero_config_refuses_what_the_harness_owns():
    assert zero_config(ZERO, 1.0, 8)["train_batch_size"] == 8
    for bad, needle in [({"zero_optimization": {"stage": 3}}, "stage 3"),
                        ({**ZERO, "train_batch_size": 64}, "train_batch_size"),
                        ({**ZERO, "gradient_clipping": 0.3}, "clips at 1.0"),
                        ({**ZERO, "optimizer": {"type": "Adam"}}, "optimizer"),
                        ({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}, "offload")]:
        with pytest.raises(DistributedConfigError, match=needle):
            zero_config(bad, 1.0, 8)


@pytest.mark.parametrize("n,world", [(8, 2), (3, 2), (7, 3), (1, 2), (2, 4)])
def test_shared_rows_average_to_the_global_mean(n, world):
    """Dist.share: the blocks cover the n rows once, and the rank-average of weight x local mean
    (what gradient averaging computes) is the mean over all n, also for a rank left without a row."""
    values = torch.arange(1.0, n + 1) ** 2
    shares = [Dist(rank, world).share(n) for rank in range(world)]
    covered = [i for rows, w in shares if w > 0 for i in range(n)[rows]]
    assert covered == list(range(n))
    sizes = [len(range(n)[rows]) for rows, w in shares if w > 0]
    assert max(sizes) - min(sizes) <= 1
    assert all(rows == slice(0, 1) for rows, w in shares if w == 0)
    averaged = sum(w * values[rows].mean() for rows, w in shares) / world
    assert float(averaged) == pytest.approx(float(values.mean()), rel=1e-6)
    assert Dist(0, 1).share(n) == (slice(0, n), 1.0)  # one process: everything, unweighted
    with pytest.raises(ValueError, match="cannot share 0 rows"):
        Dist(0, world).share(0)


def test_method_settings_are_every_groups_defaults():
    """A method's betas and weight decay (its config's ``optimizer_settings``) are set at construction, for
    the first group, groups added later and after a reset; a group's own value wins."""
    settings = AdamWSettings(betas=(0.9, 0.95), weight_decay=0.01)
    model = _model()
    groups = _groups(model)
    opt = AdamWStep(groups[:1], 0.5, Dist(), settings)
    opt.add_param_group(groups[1])
    for _ in range(2):
        assert [(g["betas"], g["weight_decay"]) for g in opt.param_groups] == [((0.9, 0.95), 0.01), ((0.9, 0.95), 0.1)]
        opt.reset()


def test_the_methods_optimizer_settings():
    """Today's values: SHIFT AdamW (0.9, 0.95) with weight decay 0.01 (Table 5), FCRM weight decay 1e-4,
    the others torch's betas and no weight decay."""
    from trainers.fcrm import FCRMConfig
    from trainers.sft import SFTConfig
    from trainers.shift import ShiftConfig

    assert ShiftConfig().optimizer_settings() == AdamWSettings(betas=(0.9, 0.95), weight_decay=0.01)
    assert FCRMConfig().optimizer_settings() == AdamWSettings(betas=(0.9, 0.999), weight_decay=1e-4)
    assert SFTConfig().optimizer_settings() == AdamWSettings(betas=(0.9, 0.999), weight_decay=0.0)
