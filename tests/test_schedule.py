"""The phase plan, the data order and the learning-rate schedule (pure)."""

import numpy as np
import pytest

from lfr_ray.config import PhaseConfig, ScheduleConfig, TrainConfig
from lfr_ray.schedule import (
    PlanError, locate, lr_at, pass_order, plan_phases, rank_micro_batches, total_steps,
)


def test_paper_plan_step_counts():
    plans = plan_phases(ScheduleConfig(), num_blocks=1000, global_batch_blocks=10)
    assert [(p.kind, p.num_blocks, p.num_steps, p.start_step) for p in plans] == [
        ("learn", 1000, 100, 0), ("focus", 500, 50, 100), ("review", 1000, 100, 150), ("focus", 300, 60, 250),
    ]
    assert total_steps(plans) == 310  # 3.1 epochs of tokens, as in the paper


def test_partial_last_batch_rounds_steps_up():
    plans = plan_phases(ScheduleConfig(), num_blocks=1005, global_batch_blocks=10)
    assert [p.steps_per_pass for p in plans] == [101, 51, 101, 31]


def test_plan_rejects_a_phase_smaller_than_a_batch():
    with pytest.raises(PlanError, match="schedule.phases.1 .*fewer than one global batch of 64"):
        plan_phases(ScheduleConfig((PhaseConfig("learn"), PhaseConfig("focus", 1, 0.01))), 1000, 64)


def test_locate():
    plans = plan_phases(ScheduleConfig(), 1000, 10)
    assert locate(plans, 0)[0].phase_idx == 0
    plan, pass_idx, step_in_pass = locate(plans, 275)
    assert (plan.phase_idx, pass_idx, step_in_pass) == (3, 0, 25)
    assert locate(plans, 305)[1:] == (1, 25)
    with pytest.raises(IndexError):
        locate(plans, 310)


def test_pass_order_is_seeded_and_changes_per_pass():
    ids = np.arange(100)
    a = pass_order(ids, seed=1, phase_idx=0, pass_idx=0)
    assert np.array_equal(a, pass_order(ids, seed=1, phase_idx=0, pass_idx=0))
    assert sorted(a.tolist()) == list(range(100))
    assert not np.array_equal(a, pass_order(ids, seed=1, phase_idx=0, pass_idx=1))
    assert not np.array_equal(a, pass_order(ids, seed=2, phase_idx=0, pass_idx=0))


def test_ranks_partition_each_global_batch():
    train = TrainConfig(num_workers=3, micro_batch_size=4, grad_accum_steps=2)
    order = pass_order(np.arange(100), seed=0, phase_idx=0, pass_idx=0)
    steps = 5  # ceil(100 / 24): the last global batch wraps around to the start of the order
    seen = []
    for step in range(steps):
        per_rank = [np.concatenate(rank_micro_batches(order, step, rank=r, train=train)) for r in range(3)]
        assert all(len(x) == 8 for x in per_rank)
        assert len(set(np.concatenate(per_rank).tolist())) == 24  # no block twice in one global batch
        seen.extend(np.concatenate(per_rank).tolist())
    assert len(seen) == steps * 24
    assert set(seen) == set(range(100))  # every block trained in the pass
    assert seen[100:] == order[:20].tolist()  # the 20 extra slots are the first blocks of the order
    with pytest.raises(IndexError):
        rank_micro_batches(order, steps, rank=0, train=train)


def test_lr_schedule_is_continuous_across_phases():
    train = TrainConfig(lr=1e-3, min_lr_frac=0.1, warmup_frac=0.1)
    plans = plan_phases(ScheduleConfig(), 1000, 10)
    total = total_steps(plans)
    lrs = np.array([lr_at(s, total=total, train=train) for s in range(total)])
    warmup = int(0.1 * total)
    assert lrs[0] == pytest.approx(1e-3 / warmup)
    assert lrs[warmup - 1] == pytest.approx(1e-3)
    assert lrs.max() == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(1e-4)
    assert np.all(np.diff(lrs[warmup:]) <= 1e-12)  # monotone decay, no restart at any phase boundary
    jumps = np.abs(np.diff(lrs))
    for p in plans[1:]:
        assert jumps[p.start_step - 1] <= jumps.max()  # a phase boundary is an ordinary step
        assert jumps[p.start_step - 1] < 1e-3 * 0.02


def test_fractional_passes_train_the_first_steps_of_the_last_pass():
    sched = ScheduleConfig((PhaseConfig("learn", 2.5), PhaseConfig("focus", 0.35, 0.5)))
    plans = plan_phases(sched, num_blocks=1000, global_batch_blocks=10)
    assert [(p.steps_per_pass, p.num_steps, p.start_step) for p in plans] == [(100, 250, 0), (50, 18, 250)]
    assert [plans[0].pass_steps(i) for i in range(3)] == [100, 100, 50]  # the third pass is half a pass
    assert plans[1].pass_steps(0) == 18
    assert locate(plans, 249)[1:] == (2, 49)
    assert locate(plans, 250)[0].phase_idx == 1
    assert total_steps(plans) == 268


def test_a_tiny_fraction_still_trains_one_step():
    plans = plan_phases(ScheduleConfig((PhaseConfig("learn", 0.001),)), 1000, 10)
    assert plans[0].num_steps == 1
