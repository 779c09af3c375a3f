"""The driver of an LFR run: prepare the data, start the statistics actor, train, export, summarise.

``run(cfg)`` is the whole LFR loop as a user sees it. It assumes Ray is initialised (``cli.py`` does
that) and is resumable: re-running a run name whose run stopped continues from its last checkpoint;
re-running a complete run only prints its summary.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from lfr_ray.config import Config, config_from_dict
from lfr_ray.paths import RunPaths, atomic_write_json, atomic_write_text
from lfr_ray.schedule import plan_phases, total_steps

ACTOR_NAMESPACE = "lfr_ray"


class RunError(RuntimeError):
    """A run that cannot start or continue as asked."""


def stats_actor_name(run_name: str) -> str:
    return f"lfr-stats-{run_name}"


SCORING_PLACEMENT_KEYS = {"checkpoint", "batch_size", "min_actors", "max_actors", "num_cpus_per_actor",
                          "num_gpus_per_actor", "num_cpus_per_read_task", "node_resource"}
"""``scoring`` keys that change where and how fast a scoring pass runs, not what it computes: a resumed run may change them."""


def check_run_config(paths: RunPaths, cfg: Config) -> None:
    """Write the resolved config into a new run directory, or check an existing run matches it.

    Only logging, checkpointing, failure-handling and placement settings may change when a run is
    resumed; anything that changes what is trained would silently mix two runs in one directory.
    """
    if not paths.config.exists():
        atomic_write_text(paths.config, cfg.to_yaml())
        return
    import yaml

    old = config_from_dict(yaml.safe_load(paths.config.read_text())).to_dict()
    new = cfg.to_dict()
    # Where workers are placed may change on resume (a new node type), what they train may not.
    mutable = {"log_every_steps", "eval_every_steps", "checkpoint_every_steps", "max_failures", "stats_flush_every_steps",
               "node_resource", "cpus_per_worker", "use_gpu"}
    diffs = [
        f"{section}.{key}: {old[section][key]!r} -> {new[section][key]!r}"
        for section in new
        for key in new[section]
        if old[section][key] != new[section][key] and not (section == "train" and key in mutable)
        and not (section == "scoring" and key in SCORING_PLACEMENT_KEYS)
    ]
    if diffs:
        raise RunError(
            f"run directory {paths.root} holds a run with a different config ({'; '.join(diffs)}). "
            "Choose another run.name, or delete that directory to start over."
        )


def run(cfg: Config, *, stop_after_phase: int | None = None, verbose: bool = True) -> dict[str, Any]:
    """Run (or resume) the LFR schedule of ``cfg``; return the summary.

    With ``stop_after_phase=k`` the run stops once phase k is done and checkpointed (a notebook can
    then inspect ``phase_frame(run_dir, k)``); calling ``run`` again continues with phase k + 1.
    The returned summary then covers the phases done so far, and the run is not marked complete.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from lfr_ray.coordinator import Coordinator
    from lfr_ray.blocks import read_blocks
    from lfr_ray.data import format_summary as format_data_summary
    from lfr_ray.data import prepare

    paths = RunPaths(cfg.run.run_dir())
    if paths.complete.exists():
        summary = json.loads(paths.summary.read_text())
        if verbose:
            print(f"Run '{cfg.run.name}' is already complete at {paths.root}.\n")
            print(format_summary(summary))
        return summary
    paths.root.mkdir(parents=True, exist_ok=True)
    check_run_config(paths, cfg)
    t0 = time.time()

    meta = prepare(cfg.data, config_yaml=cfg.to_yaml(), progress=verbose)
    if verbose:
        print(format_data_summary(meta))
    num_blocks = meta["train"]["num_blocks"]
    if not meta["val"]["num_blocks"]:
        raise RunError(
            f"the prepared data at {cfg.data.output_dir} has no validation blocks; raise data.val_frac "
            "or give data.val_inputs (and prepare again with a new data.output_dir)"
        )
    plans = plan_phases(cfg.schedule, num_blocks, cfg.train.global_batch_blocks())
    # Dictionary-encoded: the statistics actor receives 4 bytes per block, not a pickled string each.
    domains = read_blocks(cfg.data.output_dir, "train", columns=["source"])["source"].combine_chunks().dictionary_encode()
    if verbose:
        print(format_plan(cfg, meta, plans))
    if cfg.schedule.needs_scoring():
        from lfr_ray.scoring import resource_shortfall

        shortfall = resource_shortfall(cfg, ray.cluster_resources(), beside_training=True)
        if shortfall:
            print(f"[lfr-ray] warning: {shortfall}", file=sys.stderr)

    coordinator_actor = _start_stats_actor(Coordinator, cfg.run.name, str(paths.root), num_blocks, domains,
                                           cfg.train.seed)
    try:
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config={
                "config": cfg.to_dict(),
                "coordinator_actor": coordinator_actor,
                "data_dir": str(Path(cfg.data.output_dir).absolute()),
                "run_dir": str(paths.root),
                "stop_after_phase": stop_after_phase,
            },
            scaling_config=ray.train.ScalingConfig(
                num_workers=cfg.train.num_workers,
                use_gpu=cfg.train.use_gpu,
                resources_per_worker=cfg.train.worker_resources(),
            ),
            run_config=ray.train.RunConfig(
                # Checkpoints: <run dir>/train, or <run.storage_path>/<run.name> (e.g. on s3://).
                name=paths.train_storage.name if cfg.run.storage_path is None else cfg.run.name,
                storage_path=str(paths.train_storage.parent) if cfg.run.storage_path is None else cfg.run.storage_path,
                failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            ),
        )
        result = trainer.fit()
        stats_summary = ray.get(coordinator_actor.summary.remote())
    finally:
        ray.kill(coordinator_actor)

    finished = stop_after_phase is None or stop_after_phase >= len(plans) - 1
    summary = build_summary(cfg, paths, meta, plans, stats_summary, wall_s=time.time() - t0)
    if not finished:
        if verbose:
            print(f"Stopped after phase {stop_after_phase}; run again to continue with phase {stop_after_phase + 1}.")
        return summary
    export_model(result.checkpoint, paths.model, cfg, Path(cfg.data.output_dir) / "tokenizer", meta)
    atomic_write_json(paths.summary, summary)
    atomic_write_text(paths.complete, "")
    if verbose:
        print(format_summary(summary))
    return summary


def _start_stats_actor(cls, run_name: str, *args):
    """Start the run's named statistics actor (0 CPUs: it must never wait for a training slot).

    An actor of the same name left by a driver that was killed is ended first; its state is not
    needed, since the statistics are restored from the checkpoint the run resumes from.
    """
    import ray

    name = stats_actor_name(run_name)
    for _ in range(100):
        try:
            stale = ray.get_actor(name, namespace=ACTOR_NAMESPACE)
        except ValueError:
            break
        ray.kill(stale)
        time.sleep(0.1)
    return (
        ray.remote(cls)
        .options(name=name, namespace=ACTOR_NAMESPACE, num_cpus=0, max_restarts=0)
        .remote(*args)
    )


def _train_loop(loop_config: dict[str, Any]) -> None:
    # Imported inside the worker so the driver does not pickle the training module's globals.
    from lfr_ray.train import train_loop_per_worker

    train_loop_per_worker(loop_config)


def export_model(checkpoint, out_dir: Path, cfg: Config, tokenizer_dir: Path, meta: dict[str, Any]) -> None:
    """Save the final weights with ``save_pretrained`` beside the tokenizer, atomically."""
    import torch
    from transformers import AutoTokenizer

    from lfr_ray.modeling import build_model

    model = build_model(cfg.model, vocab_size=meta["tokenizer"]["vocab_size"], block_len=cfg.data.block_len,
                        eos_token_id=meta["tokenizer"]["eot_id"], seed=cfg.train.seed)
    with checkpoint.as_directory() as d:
        model.load_state_dict(torch.load(Path(d) / "model.pt", map_location="cpu"))
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)


def phase_frame(run_dir: str | Path, phase_idx: int):
    """Per-block statistics at the end of a phase as a pandas DataFrame (one row per block).

    Columns: block_id, latest_loss, previous_loss, last_step, ..., forgetting state, domain, and
    ``selected`` (whether the block was in that phase's focus selection; all True otherwise).
    """
    import yaml

    from lfr_ray.blocks import read_blocks
    from lfr_ray.stats import BlockStats

    paths = RunPaths(Path(run_dir))
    cfg = config_from_dict(yaml.safe_load(paths.config.read_text()))
    domains = read_blocks(cfg.data.output_dir, "train", columns=["source"])["source"].to_numpy(zero_copy_only=False)
    frame = BlockStats.load(paths.stats_snapshot(phase_idx)).to_frame(domains)
    selection = paths.selection(phase_idx)
    if selection.exists():
        import pyarrow.parquet as pq

        frame["selected"] = np.isin(frame["block_id"], pq.read_table(selection, columns=["block_id"])["block_id"].to_numpy())
    else:
        frame["selected"] = True
    return frame


def read_metrics(paths: RunPaths) -> list[dict[str, Any]]:
    if not paths.metrics.exists():
        return []
    return [json.loads(line) for line in paths.metrics.read_text().splitlines() if line.strip()]


def build_summary(cfg: Config, paths: RunPaths, meta: dict[str, Any], plans, stats_summary: dict[str, Any],
                  *, wall_s: float) -> dict[str, Any]:
    rows = read_metrics(paths)
    evals = [r for r in rows if "val_loss" in r]
    final = evals[-1] if evals else {}
    train_s = sum(r["interval_s"] for r in rows)  # time in training steps and evaluation, resumed segments included
    phases = []
    for plan in plans:
        sel_json = paths.selection(plan.phase_idx).with_suffix(".json")
        composition = json.loads(sel_json.read_text())["composition"] if sel_json.exists() else meta["train"]["per_domain"]
        if not sel_json.exists():
            composition = {d: v["blocks"] for d, v in composition.items()}
        phase_stats = paths.stats_snapshot(plan.phase_idx).with_suffix(".json")
        phases.append({
            "phase_idx": plan.phase_idx, "kind": plan.kind, "keep_frac": plan.keep_frac, "passes": plan.passes,
            "num_blocks": plan.num_blocks, "steps": plan.num_steps,
            "composition": composition,
            "stats_at_end": json.loads(phase_stats.read_text()) if phase_stats.exists() else None,
        })
    tokens_trained = total_steps(plans) * cfg.train.global_batch_blocks() * cfg.data.block_len
    return {
        "run": cfg.run.name,
        "run_dir": str(paths.root),
        "num_blocks": meta["train"]["num_blocks"],
        "tokens_per_epoch": meta["train"]["num_blocks"] * cfg.data.block_len,
        "tokens_trained": tokens_trained,
        "epochs_of_tokens": tokens_trained / max(1, meta["train"]["num_blocks"] * cfg.data.block_len),
        "steps": total_steps(plans),
        "final_val_loss": final.get("val_loss"),
        "final_val_loss_by_domain": final.get("val_loss_by_domain"),
        "unigram_val_loss": meta.get("unigram_loss"),
        "wall_s": wall_s,
        "train_s": train_s,
        "tokens_per_s": tokens_trained / train_s if train_s else None,
        "phases": phases,
        "forgetting": {k: v for k, v in stats_summary.items() if "forgot" in k or "learned" in k or "never" in k},
        "stats": stats_summary,
        "model_dir": str(paths.model),
    }


def format_plan(cfg: Config, meta: dict[str, Any], plans) -> str:
    """The derived numbers, printed at start-up (nanoGPT habit): tokens per step, steps, budget."""
    tc = cfg.train
    tokens_per_step = tc.global_batch_blocks() * cfg.data.block_len
    total = total_steps(plans)
    n = meta["train"]["num_blocks"]
    lines = [
        f"LFR run '{cfg.run.name}' -> {cfg.run.run_dir()}",
        f"  data: {n:,} training blocks of {cfg.data.block_len} tokens ({n * cfg.data.block_len:,} tokens), "
        f"{meta['val']['num_blocks']:,} validation blocks",
        f"  model: {cfg.model.arch} hidden={cfg.model.hidden_size} layers={cfg.model.num_layers} "
        f"heads={cfg.model.num_heads}, vocab {meta['tokenizer']['vocab_size']}",
        f"  batch: {tc.num_workers} worker(s) x {tc.micro_batch_size} blocks x {tc.grad_accum_steps} accum "
        f"= {tc.global_batch_blocks()} blocks = {tokens_per_step:,} tokens per step",
        "  schedule:",
    ]
    for p in plans:
        lines.append(
            f"    phase {p.phase_idx}: {p.kind:<6} keep {p.keep_frac:>4.0%} x{p.passes:.4g} pass(es): "
            f"{p.num_blocks:,} blocks, steps {p.start_step}..{p.end_step - 1} ({p.num_steps} steps)"
            + _phase_options(cfg.schedule.phases[p.phase_idx])
        )
    lines.append(
        f"  total: {total} steps, {total * tokens_per_step:,} tokens "
        f"({total * tokens_per_step / (n * cfg.data.block_len):.2f} epochs of tokens); "
        f"unigram baseline val loss {_fmt(meta.get('unigram_loss'))}"
    )
    return "\n".join(lines)


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"Run '{summary['run']}' finished: {summary['tokens_trained']:,} tokens "
        f"({summary['epochs_of_tokens']:.2f} epochs of tokens) in {summary['steps']} steps",
    ]
    if summary.get("final_val_loss") is not None:
        lines.append(
            f"  final validation loss {summary['final_val_loss']:.3f} nats/token "
            f"(perplexity {np.exp(summary['final_val_loss']):.1f}); unigram baseline {_fmt(summary['unigram_val_loss'])}"
        )
        for domain, loss in (summary.get("final_val_loss_by_domain") or {}).items():
            lines.append(f"    {domain:<12} {loss:.3f}")
    if summary.get("tokens_per_s"):
        lines.append(f"  wall time {summary['wall_s']:.0f} s, training {summary['tokens_per_s']:,.0f} tokens/s")
    lines.append("  phases (blocks trained on, domain mix):")
    for p in summary["phases"]:
        total = sum(p["composition"].values()) or 1
        mix = ", ".join(f"{d} {c / total:.0%}" for d, c in sorted(p["composition"].items()))
        lines.append(f"    {p['phase_idx']}: {p['kind']:<6} {p['num_blocks']:>8,} blocks  {mix}")
    f = summary["stats"]
    lines.append(
        f"  forgetting: {f.get('forgotten_now', 0):,} blocks forgotten at their last recording, "
        f"{f.get('forgotten_at_least_once', 0):,} at least once, {f.get('forgotten_more_than_once', 0):,} more than once"
    )
    lines.append(f"  model: {summary['model_dir']} (AutoModelForCausalLM.from_pretrained)")
    return "\n".join(lines)


def _phase_options(phase) -> str:
    """A phase's non-default selection and statistics options, for the plan printout."""
    opts = []
    if phase.strategy != "hardest":
        opts.append(phase.strategy + {"sample": f" T={phase.temperature:g}", "diverse": f" by {phase.group_by}"}
                    .get(phase.strategy, ""))
    if phase.stats_source != "record":
        opts.append(f"stats: {phase.stats_source}")
    return f" [{', '.join(opts)}]" if opts else ""


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
