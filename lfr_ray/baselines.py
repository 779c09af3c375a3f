"""Schedules of the methods ``lfr-ray compare`` runs, each matched to the LFR schedule's token budget.

Pure functions (no Ray, no torch). A comparison is only fair if every method trains the same number
of optimizer steps on the same model, data, seed and learning-rate schedule shape (the cosine spans
the run's total steps, ``schedule.lr_at``), so each baseline is derived from the LFR plan on the
actual prepared data rather than from its nominal 3.1 epochs: per-phase step counts are rounded up
to whole global batches, and the baselines' fractional ``passes`` are chosen so that
``round(passes * steps_per_pass)`` lands exactly on the LFR run's total steps.

* ``lfr``: the configured schedule, unchanged.
* ``random``: one ``learn`` phase of ``T / steps_per_epoch`` passes. Each pass reshuffles, so this is
  ordinary random-order multi-epoch pretraining.
* ``static-prune``: a short ``learn`` phase (``learn_passes`` of an epoch), then one ``focus`` phase on
  the hardest ``keep_frac`` of the blocks for the remaining steps: perplexity-based static pruning.
  Its focus set is chosen once, from a fresh scoring pass of every block with the weights at the end
  of the short learn phase (``stats_source: score``, ``scoring.py``), not from losses recorded while
  the learn phase's weights moved.
* a ``compare.variants`` name: that LFR schedule, unchanged, provided it trains exactly the LFR plan's
  total steps (otherwise a ``BaselineError`` says which ``passes`` of its last phase would).
"""

from __future__ import annotations

from collections.abc import Mapping

from lfr_ray.config import COMPARE_METHODS, PhaseConfig, ScheduleConfig
from lfr_ray.schedule import phase_steps, plan_phases, total_steps
from lfr_ray.selection import num_keep


class BaselineError(ValueError):
    """A baseline that cannot match the LFR schedule's budget on this data."""


def _steps_per_pass(num_blocks: int, global_batch_blocks: int) -> int:
    return -(-num_blocks // global_batch_blocks)


def random_schedule(lfr: ScheduleConfig, num_blocks: int, global_batch_blocks: int) -> ScheduleConfig:
    """One learn phase with exactly the LFR plan's total steps."""
    budget = total_steps(plan_phases(lfr, num_blocks, global_batch_blocks))
    passes = budget / _steps_per_pass(num_blocks, global_batch_blocks)
    return ScheduleConfig((PhaseConfig("learn", passes),))


def static_prune_schedule(lfr: ScheduleConfig, num_blocks: int, global_batch_blocks: int, *,
                          learn_passes: float, keep_frac: float) -> ScheduleConfig:
    """A ``learn_passes`` learn phase, then the hardest ``keep_frac`` for the rest of the LFR budget."""
    budget = total_steps(plan_phases(lfr, num_blocks, global_batch_blocks))
    learn_steps = phase_steps(learn_passes, _steps_per_pass(num_blocks, global_batch_blocks))
    rest = budget - learn_steps
    if rest < 1:
        raise BaselineError(
            f"compare.static_prune_learn_passes={learn_passes} takes {learn_steps} of the LFR schedule's "
            f"{budget} steps, leaving none for its focus phase; lower it"
        )
    focus_spp = _steps_per_pass(num_keep(num_blocks, keep_frac), global_batch_blocks)
    focus = PhaseConfig("focus", rest / focus_spp, keep_frac, stats_source="score")
    return ScheduleConfig((PhaseConfig("learn", learn_passes), focus))


def variant_schedule(name: str, variant: ScheduleConfig, lfr: ScheduleConfig, num_blocks: int,
                     global_batch_blocks: int) -> ScheduleConfig:
    """``variant`` unchanged, after checking that it trains exactly the LFR plan's total steps."""
    budget = total_steps(plan_phases(lfr, num_blocks, global_batch_blocks))
    plans = plan_phases(variant, num_blocks, global_batch_blocks)
    steps = total_steps(plans)
    if steps != budget:
        last = plans[-1]
        room = budget - (steps - last.num_steps)
        hint = (f"; passes={room / last.steps_per_pass:.6g} on its last phase would match" if room > 0
                else "; shorten its earlier phases")
        raise BaselineError(
            f"compare variant {name!r} trains {steps} steps on this data, the LFR schedule {budget}: a comparison "
            f"needs the same token budget{hint}"
        )
    return variant


def method_schedule(method: str, lfr: ScheduleConfig, num_blocks: int, global_batch_blocks: int, *,
                    learn_passes: float, keep_frac: float,
                    variants: Mapping[str, ScheduleConfig] | None = None) -> ScheduleConfig:
    """The schedule ``method`` trains, on ``num_blocks`` blocks with this global batch."""
    variants = variants or {}
    if method == "lfr":
        return lfr
    if method == "random":
        return random_schedule(lfr, num_blocks, global_batch_blocks)
    if method == "static-prune":
        return static_prune_schedule(lfr, num_blocks, global_batch_blocks,
                                     learn_passes=learn_passes, keep_frac=keep_frac)
    if method in variants:
        return variant_schedule(method, variants[method], lfr, num_blocks, global_batch_blocks)
    known = ", ".join([*COMPARE_METHODS, *variants])
    raise BaselineError(f"unknown method {method!r}; known: {known}")
