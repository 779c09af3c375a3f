"""The per-worker training loop that Ray Train's ``TorchTrainer`` runs on every worker.

One trainer runs the whole LFR schedule: phases switch inside this loop, so the (expensive)
trainer start, model build and process-group set-up happen once. Every worker holds the prepared
training blocks in memory (``[num_blocks, block_len + 1]`` int32; 1.5 M blocks of 128 tokens is
0.8 GB) and draws its share of each global batch from one seeded order of the phase's block set
(``schedule.py``), so all workers run the same number of steps and a resumed run continues with
exactly the batch it would have trained next.

Per-block losses come from the training forward pass itself (``modeling.per_block_loss`` on the
same logits, detached) and go to the statistics actor in batches, without waiting. A phase with
``stats_source`` score or both first scores every block with the phase's starting weights on a Ray
Data actor pool (``scoring.py``, launched by rank 0) and records those losses before its selection.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lfr_ray.config import Config, config_from_dict
from lfr_ray.blocks import load_block_arrays, load_metadata
from lfr_ray.modeling import block_forward, build_model, param_groups
from lfr_ray.schedule import lr_at, pass_order, plan_phases, rank_micro_batches, total_steps


class _Worker:
    """What the loop needs to know about its place in the run: rank, device, collectives."""

    def __init__(self, use_gpu: bool):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world = ctx.get_world_size()
        self.device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")
        self.use_gpu = use_gpu

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            values = values.to(self.device)
            torch.distributed.all_reduce(values)
        return values.cpu()

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.use_gpu else contextlib.nullcontext()


class _LossSender:
    """Buffers ``(block_ids, losses, phase_idx, step)`` and ships them to the actor in one call."""

    def __init__(self, coordinator_actor, every_steps: int):
        self.actor = coordinator_actor
        self.every_steps = every_steps
        self.buffer: list[tuple[np.ndarray, np.ndarray, int, int]] = []
        self.last_ref = None

    def add(self, block_ids: np.ndarray, losses: np.ndarray, phase_idx: int, step: int) -> None:
        self.buffer.append((block_ids, losses, phase_idx, step))

    def maybe_flush(self, step: int) -> None:
        if step % self.every_steps == 0:
            self.flush()

    def flush(self, wait: bool = False) -> None:
        import ray

        if self.buffer:
            self.last_ref = self.actor.record_many.remote(self.buffer)  # fire and forget
            self.buffer = []
        if wait and self.last_ref is not None:
            ray.get(self.last_ref)  # actor calls from one caller run in order: all earlier ones are applied


def evaluate(model, worker: _Worker, val_tokens: np.ndarray, val_domain_idx: np.ndarray,
             num_domains: int, batch_size: int) -> tuple[float, np.ndarray]:
    """Validation loss (mean over blocks) overall and per domain, summed across workers."""
    sums = torch.zeros(2 * num_domains, dtype=torch.float64)
    mine = np.arange(worker.rank, len(val_tokens), worker.world)
    model.eval()
    with torch.no_grad(), worker.autocast():
        for start in range(0, len(mine), batch_size):
            idx = mine[start : start + batch_size]
            blocks = torch.from_numpy(val_tokens[idx]).long().to(worker.device)
            losses = block_forward(model, blocks).double().cpu()
            dom = torch.from_numpy(val_domain_idx[idx])
            sums.index_add_(0, dom, losses)
            sums.index_add_(0, num_domains + dom, torch.ones_like(losses))
    model.train()
    sums = worker.all_reduce_sum(sums).numpy()
    loss_sum, counts = sums[:num_domains], sums[num_domains:]
    per_domain = np.divide(loss_sum, counts, out=np.full(num_domains, np.nan), where=counts > 0)
    return float(loss_sum.sum() / max(counts.sum(), 1)), per_domain


def _save_checkpoint(worker: _Worker, model, optimizer, coordinator_actor, sender: _LossSender,
                     state: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Flush losses, then checkpoint weights, optimizer, step and the statistics of that same step."""
    import ray
    import ray.train

    sender.flush(wait=True)
    worker.barrier()  # every worker's losses up to this step are in the actor
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if worker.rank == 0:
            unwrapped = getattr(model, "module", model)
            torch.save(unwrapped.state_dict(), os.path.join(tmp, "model.pt"))
            torch.save(optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
            np.savez(os.path.join(tmp, "stats.npz"), **ray.get(coordinator_actor.state_dict.remote()))
            Path(tmp, "train_state.json").write_text(json.dumps(state))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint_{state['step']:08d}")


def _restore(worker: _Worker, model, optimizer, coordinator_actor) -> int:
    """Load the latest checkpoint (weights, optimizer, statistics); return the step to continue at."""
    import ray
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        if worker.rank == 0:
            ray.get(coordinator_actor.reset.remote())
        return 0
    with checkpoint.as_directory() as d:
        getattr(model, "module", model).load_state_dict(torch.load(os.path.join(d, "model.pt"), map_location=worker.device))
        optimizer.load_state_dict(torch.load(os.path.join(d, "optimizer.pt"), map_location=worker.device))
        step = json.loads(Path(d, "train_state.json").read_text())["step"]
        if worker.rank == 0:
            with np.load(os.path.join(d, "stats.npz")) as z:
                ray.get(coordinator_actor.load_state_dict.remote({k: z[k] for k in z.files}, step))
    if worker.rank == 0:
        _say(f"[lfr-ray] resumed from checkpoint at step {step}")
    return step


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker: the whole LFR schedule, phase after phase."""
    import ray

    # Ray Train logs two INFO lines per checkpoint; the status line already says what matters.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    cfg: Config = config_from_dict(loop_config["config"])
    coordinator_actor = loop_config["coordinator_actor"]
    data_dir = loop_config["data_dir"]
    tc = cfg.train
    worker = _Worker(tc.use_gpu)
    if not tc.use_gpu:
        torch.set_num_threads(max(1, int(tc.cpus_per_worker)))

    meta = load_metadata(data_dir)
    tokens, _ = load_block_arrays(data_dir, "train")
    val_tokens, val_sources = load_block_arrays(data_dir, "val")
    if tc.eval_max_blocks and tc.eval_max_blocks < len(val_tokens):
        # Evenly spaced over block ids, so every domain of the validation split is represented.
        keep = np.unique(np.linspace(0, len(val_tokens) - 1, tc.eval_max_blocks).round().astype(np.int64))
        val_tokens, val_sources = val_tokens[keep], val_sources[keep]
    domains = sorted(set(val_sources.tolist()))
    val_domain_idx = np.searchsorted(domains, val_sources).astype(np.int64)
    block_len = tokens.shape[1] - 1

    model = build_model(cfg.model, vocab_size=meta["tokenizer"]["vocab_size"], block_len=block_len,
                        eos_token_id=meta["tokenizer"]["eot_id"], seed=tc.seed).to(worker.device)
    optimizer = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr, betas=(0.9, tc.beta2),
                                  fused=tc.use_gpu)
    step = _restore(worker, model, optimizer, coordinator_actor)
    import ray.train.torch

    model = ray.train.torch.prepare_model(model)
    worker.barrier()

    plans = plan_phases(cfg.schedule, len(tokens), tc.global_batch_blocks())
    total = total_steps(plans)
    tokens_per_step = tc.global_batch_blocks() * block_len
    sender = _LossSender(coordinator_actor, tc.stats_flush_every_steps)
    interval_losses: list[float] = []
    t_interval = time.perf_counter()
    steps_in_interval = 0

    last_phase = loop_config.get("stop_after_phase")
    for plan in plans:
        if last_phase is not None and plan.phase_idx > last_phase:
            break
        if step >= plan.end_step:
            continue
        phase = cfg.schedule.phases[plan.phase_idx]
        if phase.stats_source != "record" and step == plan.start_step:
            # Only at the phase's first step: a run resumed from a checkpoint inside the phase has these
            # records in its restored statistics already; one resumed from the phase-end checkpoint before
            # it has not, and records them again (from the finished parts: nothing is scored twice).
            _score_phase_start(worker, model, coordinator_actor, cfg, plan, data_dir, loop_config["run_dir"])
            t_interval = time.perf_counter()  # the pass is not training time (its own rate is printed)
        if plan.kind == "focus":
            phase_ids = ray.get(coordinator_actor.phase_blocks.remote(
                plan.phase_idx, plan.kind, plan.keep_frac, strategy=phase.strategy, temperature=phase.temperature,
                group_by=phase.group_by))
        else:
            phase_ids = np.arange(len(tokens), dtype=np.int64)
        while step < plan.end_step:
            pass_idx, step_in_pass = divmod(step - plan.start_step, plan.steps_per_pass)
            order = pass_order(phase_ids, seed=tc.seed, phase_idx=plan.phase_idx, pass_idx=pass_idx)
            for step_in_pass in range(step_in_pass, plan.pass_steps(pass_idx)):  # a last pass may be partial
                lr = lr_at(step, total=total, train=tc)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                micro_batches = rank_micro_batches(order, step_in_pass, rank=worker.rank, train=tc)
                for i, ids in enumerate(micro_batches):
                    blocks = torch.from_numpy(tokens[ids]).long().to(worker.device)
                    last = i == len(micro_batches) - 1
                    sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
                    with sync, worker.autocast():
                        block_losses = block_forward(model, blocks)
                        (block_losses.mean() / tc.grad_accum_steps).backward()
                    losses = block_losses.detach().float().cpu().numpy()
                    if phase.stats_source != "score":  # "score": this phase's statistics are the scoring pass's
                        sender.add(ids, losses, plan.phase_idx, step)
                    interval_losses.append(float(losses.mean()))
                if tc.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                steps_in_interval += 1
                sender.maybe_flush(step)

                phase_end = step == plan.end_step
                do_eval = phase_end or step % tc.eval_every_steps == 0
                do_log = do_eval or step % tc.log_every_steps == 0
                row: dict[str, Any] = {}
                if do_log:
                    elapsed = time.perf_counter() - t_interval
                    row = {
                        "step": step, "total_steps": total, "phase_idx": plan.phase_idx, "phase": plan.kind,
                        "pass_idx": pass_idx, "tokens_seen": step * tokens_per_step,
                        "train_loss": float(np.mean(interval_losses)), "lr": lr,
                        "tokens_per_s": steps_in_interval * tokens_per_step / max(elapsed, 1e-9),
                        "interval_s": elapsed,
                    }
                    interval_losses, steps_in_interval, t_interval = [], 0, time.perf_counter()
                if do_eval:
                    val_loss, per_domain = evaluate(model, worker, val_tokens, val_domain_idx, len(domains),
                                                    tc.micro_batch_size)
                    row["val_loss"] = val_loss
                    row["val_loss_by_domain"] = {d: float(v) for d, v in zip(domains, per_domain)}
                if row and worker.rank == 0:
                    coordinator_actor.log_metrics.remote(row)
                    _say(_status_line(row))
                if phase_end:
                    sender.flush(wait=True)
                    worker.barrier()
                    if worker.rank == 0:
                        ray.get(coordinator_actor.end_phase.remote(plan.phase_idx, step))
                if phase_end or step % tc.checkpoint_every_steps == 0:
                    state = {"step": step, "phase_idx": plan.phase_idx, "tokens_seen": step * tokens_per_step}
                    _save_checkpoint(worker, model, optimizer, coordinator_actor, sender, state, row or state)
    sender.flush(wait=True)


def _score_phase_start(worker: _Worker, model, coordinator_actor, cfg: Config, plan, data_dir: str,
                       run_dir: str) -> None:
    """Score every training block with the weights at the start of a phase and record the losses
    (``source="score"``, at the phase's start step) before the phase's selection is made.

    Rank 0 saves the weights, runs the Ray Data pass (its actors need resources besides the training
    workers'), sends the scores to the statistics actor and, for a focus phase, has the selection made
    (with k-means clusters of the scored features for ``group_by: cluster``). The other ranks wait for
    the pass's completion marker (a file poll: a pass over a large corpus outlasts a collective's
    timeout), then all meet at a barrier, after which the selection exists.
    """
    import ray

    from lfr_ray import scoring
    from lfr_ray.paths import RunPaths

    phase = cfg.schedule.phases[plan.phase_idx]
    out_dir = RunPaths(Path(run_dir)).phase_scores(plan.phase_idx)
    if worker.rank == 0:
        with_features = phase.group_by == "cluster"
        model_dir = Path(out_dir) / scoring.MODEL_DIR
        if not (out_dir / scoring.COMPLETE).exists():
            model_dir = scoring.save_weights(getattr(model, "module", model), out_dir)
        summary = scoring.score_blocks(data_dir, model_dir, cfg.model, cfg.scoring, out_dir,
                                       with_features=with_features, seed=cfg.train.seed, progress=False)
        scoring.drop_weights(out_dir)
        scoring.record_scores(coordinator_actor, out_dir, phase_idx=plan.phase_idx, step=plan.start_step)
        _say(f"[lfr-ray] phase {plan.phase_idx} ({plan.kind}): scored {summary['num_blocks']:,} blocks at step "
             f"{plan.start_step}, mean loss {summary['mean_loss']:.3f}"
             + (f", {summary['tokens_per_s']:,.0f} tok/s" if summary["tokens_per_s"] else ", all parts reused"))
        if plan.kind == "focus":
            groups = (scoring.cluster_labels(out_dir, summary["num_blocks"], cfg.scoring, seed=cfg.train.seed)
                      if with_features else None)
            ray.get(coordinator_actor.phase_blocks.remote(
                plan.phase_idx, plan.kind, plan.keep_frac, strategy=phase.strategy, temperature=phase.temperature,
                group_by=phase.group_by, groups=groups))
    else:
        scoring.wait_complete(out_dir)
    worker.barrier()


def _say(line: str) -> None:
    # Written to stdout directly: Ray Train patches ``print`` in workers into its logger, which
    # shows each line twice on the driver.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _status_line(row: dict[str, Any]) -> str:
    line = (
        f"[lfr-ray] step {row['step']}/{row['total_steps']} phase {row['phase_idx']} ({row['phase']}) "
        f"tokens {row['tokens_seen']:,} loss {row['train_loss']:.3f} lr {row['lr']:.2e} "
        f"{row['tokens_per_s']:,.0f} tok/s"
    )
    if "val_loss" in row:
        doms = " ".join(f"{d}={v:.2f}" for d, v in row["val_loss_by_domain"].items())
        line += f" | val {row['val_loss']:.3f} ({doms})"
    return line
