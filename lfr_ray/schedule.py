"""The LFR phase plan, the data order inside a phase, and the learning-rate schedule.

Pure functions of the config and the number of blocks: no Ray, no torch. The trainer, the driver
and the tests all derive step counts from here, so every worker runs the same number of steps and
a resumed run lands on exactly the batch it would have trained next.

Arithmetic: a global batch is ``num_workers * micro_batch_size * grad_accum_steps`` blocks, i.e.
that many times ``block_len`` next-token predictions. A pass over a phase's set of S blocks is
``ceil(S / global_batch)`` optimizer steps: the last global batch is filled up from the start of
the pass's order, so every block of the set is trained (and its loss recorded) at least once per
pass and at most ``global_batch - 1`` blocks twice. A fractional ``passes`` (a baseline matched to
another schedule's token budget) trains ``round(passes * steps_per_pass)`` steps: the last, partial
pass trains the first steps of its own seeded order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lfr_ray.config import ScheduleConfig, TrainConfig
from lfr_ray.selection import num_keep


@dataclass(frozen=True)
class PhasePlan:
    """One phase, with its step range in the run's single continuous step count."""

    phase_idx: int
    kind: str
    keep_frac: float
    passes: float
    num_blocks: int
    """Blocks in this phase's set (all blocks for learn/review, the kept ones for focus)."""
    steps_per_pass: int
    start_step: int
    """Global step at which the phase begins; steps ``start_step .. end_step - 1`` belong to it."""

    @property
    def num_steps(self) -> int:
        return phase_steps(self.passes, self.steps_per_pass)

    def pass_steps(self, pass_idx: int) -> int:
        """Steps trained in pass ``pass_idx`` (``steps_per_pass``, fewer in a partial last pass)."""
        return min(self.steps_per_pass, self.num_steps - pass_idx * self.steps_per_pass)

    @property
    def end_step(self) -> int:
        return self.start_step + self.num_steps


def phase_steps(passes: float, steps_per_pass: int) -> int:
    """Optimizer steps of ``passes`` passes of ``steps_per_pass`` steps (at least one step)."""
    return max(1, round(passes * steps_per_pass))


class PlanError(ValueError):
    """A schedule that cannot run on this many blocks with this batch size."""


def plan_phases(schedule: ScheduleConfig, num_blocks: int, global_batch_blocks: int) -> list[PhasePlan]:
    """Lay the phases end to end on one step axis."""
    plans, start = [], 0
    for i, phase in enumerate(schedule.phases):
        size = num_blocks if phase.kind != "focus" else num_keep(num_blocks, phase.keep_frac)
        if size < global_batch_blocks:
            raise PlanError(
                f"schedule.phases.{i} ({phase.kind}, keep_frac={phase.keep_frac}) trains on {size} blocks, "
                f"fewer than one global batch of {global_batch_blocks} blocks "
                "(train.num_workers * train.micro_batch_size * train.grad_accum_steps); "
                "prepare more data or lower the batch size"
            )
        steps_per_pass = -(-size // global_batch_blocks)
        plans.append(PhasePlan(i, phase.kind, phase.keep_frac, phase.passes, size, steps_per_pass, start))
        start += phase_steps(phase.passes, steps_per_pass)
    return plans


def total_steps(plans: list[PhasePlan]) -> int:
    return plans[-1].end_step if plans else 0


def locate(plans: list[PhasePlan], step: int) -> tuple[PhasePlan, int, int]:
    """The phase, pass index and step-in-pass that global ``step`` falls in."""
    for plan in plans:
        if plan.start_step <= step < plan.end_step:
            offset = step - plan.start_step
            return plan, offset // plan.steps_per_pass, offset % plan.steps_per_pass
    raise IndexError(f"step {step} is outside the plan (0 .. {total_steps(plans) - 1})")


def pass_order(block_ids: np.ndarray, *, seed: int, phase_idx: int, pass_idx: int) -> np.ndarray:
    """A seeded permutation of a phase's block ids for one pass; the same inputs give the same order."""
    rng = np.random.default_rng([seed, phase_idx, pass_idx])
    return np.asarray(block_ids, dtype=np.int64)[rng.permutation(len(block_ids))]


def rank_micro_batches(
    order: np.ndarray, step_in_pass: int, *, rank: int, train: TrainConfig
) -> list[np.ndarray]:
    """Block ids of each micro-batch this rank trains at ``step_in_pass`` of a pass with ``order``.

    The global batch is a contiguous slice of ``order`` (wrapping around at its end, see above);
    rank r takes the r-th equal share of it.
    """
    per_rank = train.micro_batch_size * train.grad_accum_steps
    if step_in_pass >= -(-len(order) // train.global_batch_blocks()):
        raise IndexError(f"step {step_in_pass} runs past the end of a pass over {len(order)} blocks")
    start = step_in_pass * train.global_batch_blocks() + rank * per_rank
    mine = order[(start + np.arange(per_rank)) % len(order)]
    return np.split(mine, train.grad_accum_steps)


def lr_at(step: int, *, total: int, train: TrainConfig) -> float:
    """Linear warmup to ``train.lr``, then cosine decay to ``lr * min_lr_frac`` at the last step.

    One continuous schedule over the whole run (all phases), never restarted at a phase boundary.
    """
    warmup = int(train.warmup_frac * total)
    if step < warmup:
        return train.lr * (step + 1) / warmup
    decay_steps = max(1, total - warmup - 1)
    progress = min(1.0, (step - warmup) / decay_steps)
    floor = train.lr * train.min_lr_frac
    return floor + 0.5 * (train.lr - floor) * (1 + math.cos(math.pi * progress))
