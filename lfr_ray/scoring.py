"""Per-block loss under fixed weights: a pure torch function, and a resumable Ray Data pass over all blocks.

A *scoring pass* measures every training block's mean next-token loss with one set of weights (a
checkpoint), unlike the losses recorded during training, which are taken while the weights move and go
stale for blocks a focus phase leaves out. ``score_batch`` is the pure part (``modeling.block_forward``,
the one loss definition, under ``torch.inference_mode``; bf16 autocast on GPU). ``score_blocks`` runs
it with Ray Data: read tasks over the row groups of ``<data_dir>/train``, then ``map_batches(BlockScorer,
compute=ActorPoolStrategy(min_size, max_size))``, one model load per actor. The caller (the CLI, or rank 0 of
a run) collects the small results and writes them, keyed by ``block_id``, into ``<out_dir>``::

    part-00000.parquet ...   block_id int64, loss float32, num_tokens int32, source string
                             [, feature fixed_size_list<float32>[feature_dim]]; part i holds block ids
                             [i * part_blocks, (i + 1) * part_blocks), sorted; each written atomically
    _SPEC.json               what the parts were made with; a resumed pass must match it
    _COMPLETE                JSON summary (blocks, tokens, mean loss per domain, tokens/s), written last

``pyarrow.parquet.read_table(out_dir)`` reads the parts as one table (it skips ``_`` names). A pass
that crashed resumes: finished parts are kept and their blocks are not read again (row groups whose
block range is finished are skipped; inside a row group the read task drops finished rows). Ray Data
may deliver rows in any order and retry tasks: a part is written once it holds every one of its ids,
duplicates dropped. Memory on the collecting process: the parts still open (``part_blocks`` rows of
~27 bytes, + 4 * feature_dim); token ids stay in the read tasks and actors. See docs/scoring.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from lfr_ray.clustering import kmeans_assign, kmeans_fit
from lfr_ray.config import NODE_RESOURCE_PER_WORKER, Config, ModelConfig, ScoringConfig
from lfr_ray.blocks import BLOCK_ID, INPUT_IDS, SOURCE, load_metadata
from lfr_ray.modeling import block_forward, block_forward_hidden, build_model
from lfr_ray.paths import RunPaths, atomic_write_json, atomic_write_parquet

LOSS, NUM_TOKENS, FEATURE = "loss", "num_tokens", "feature"
COMPLETE, SPEC = "_COMPLETE", "_SPEC.json"
MODEL_DIR = "_model"
"""Where a run's scoring pass saves the weights it scores (removed once the pass is complete)."""
_BATCHES_PER_TASK = 8
"""Rows per Ray Data block fed to the pool = 8 scoring batches: enough blocks to keep every actor busy, few
enough that per-task overhead stays small."""


class ScoringError(RuntimeError):
    """A scoring pass that cannot run or resume as asked; the message says why."""


# --------------------------------------------------------------------------------------------
# The pure part
# --------------------------------------------------------------------------------------------


def feature_projection(hidden_size: int, feature_dim: int, seed: int) -> torch.Tensor:
    """A fixed Gaussian random projection ``[hidden_size, feature_dim]`` (Johnson-Lindenstrauss): seeded,
    so every actor and every resumed pass maps hidden states to the same feature space."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(hidden_size, feature_dim, generator=gen) / feature_dim**0.5


def score_batch(model: torch.nn.Module, blocks: torch.Tensor, *,
                projection: Optional[torch.Tensor] = None) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Mean next-token loss (nats, float32) of each ``[B, block_len + 1]`` block, and optionally its feature.

    The loss is ``modeling.block_forward``'s, the same as training records; bf16 autocast on CUDA
    (the loss itself is computed in float32), plain float32 on CPU.
    """
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if blocks.is_cuda else contextlib.nullcontext())
    with torch.inference_mode(), autocast:
        if projection is None:
            return block_forward(model, blocks).float().cpu().numpy(), None
        loss, hidden = block_forward_hidden(model, blocks)
        feature = hidden.float() @ projection.to(hidden.device)
        return loss.float().cpu().numpy(), feature.cpu().numpy()


def load_model(model_path: str | Path, model_cfg: ModelConfig, *, vocab_size: int, block_len: int,
               eos_token_id: int) -> torch.nn.Module:
    """The model of a checkpoint directory (``model.pt``, as Ray Train checkpoints hold) or of an exported
    model directory (``config.json``, ``save_pretrained``), in eval mode on CPU."""
    path = Path(model_path)
    if (path / "model.pt").is_file():
        model = build_model(model_cfg, vocab_size=vocab_size, block_len=block_len, eos_token_id=eos_token_id, seed=0)
        model.load_state_dict(torch.load(path / "model.pt", map_location="cpu"))
    elif (path / "config.json").is_file():
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one bar per actor in the driver's log says nothing
        model = AutoModelForCausalLM.from_pretrained(path)
    else:
        raise ScoringError(f"{path} holds neither model.pt (a checkpoint) nor config.json (an exported model)")
    return model.eval()


def tokens_of(table: pa.Table, width: int) -> np.ndarray:
    """The ``input_ids`` column of a batch as int32 ``[n, width]``."""
    ids = table.column(INPUT_IDS).combine_chunks().flatten().to_numpy()
    return ids.astype(np.int32, copy=False).reshape(table.num_rows, width)


class BlockScorer:
    """Ray Data callable class: loads the weights once per actor, then scores one batch per call."""

    def __init__(self, model_path: str, model_cfg: ModelConfig, meta_tokenizer: dict[str, int], block_len: int,
                 *, use_gpu: bool, num_threads: int, feature_dim: int = 0, seed: int = 0):
        if not use_gpu:
            torch.set_num_threads(num_threads)
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.width = block_len + 1
        self.model = load_model(model_path, model_cfg, vocab_size=meta_tokenizer["vocab_size"], block_len=block_len,
                                eos_token_id=meta_tokenizer["eot_id"]).to(self.device)
        hidden = self.model.config.hidden_size
        self.projection = feature_projection(hidden, feature_dim, seed) if feature_dim else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        tokens = torch.from_numpy(tokens_of(batch, self.width).astype(np.int64)).to(self.device)  # a writable copy
        loss, feature = score_batch(self.model, tokens, projection=self.projection)
        columns = {
            BLOCK_ID: batch.column(BLOCK_ID),
            LOSS: pa.array(loss, pa.float32()),
            NUM_TOKENS: pa.array(np.full(batch.num_rows, self.width - 1, np.int32)),
            SOURCE: batch.column(SOURCE),
        }
        if feature is not None:
            columns[FEATURE] = pa.FixedSizeListArray.from_arrays(pa.array(feature.ravel(), pa.float32()),
                                                                 feature.shape[1])
        return pa.table(columns)


# --------------------------------------------------------------------------------------------
# Parts: deterministic names, atomic writes, exactly once
# --------------------------------------------------------------------------------------------


def part_path(out_dir: Path, part_idx: int) -> Path:
    return Path(out_dir) / f"part-{part_idx:05d}.parquet"


def part_range(part_idx: int, num_blocks: int, part_blocks: int) -> tuple[int, int]:
    return part_idx * part_blocks, min(num_blocks, (part_idx + 1) * part_blocks)


def finished_parts(out_dir: Path, num_blocks: int, part_blocks: int) -> set[int]:
    """Parts on disk with the right row count; a damaged one is deleted so it is scored again."""
    done = set()
    for p in range(-(-num_blocks // part_blocks)):
        path = part_path(out_dir, p)
        if not path.exists():
            continue
        low, high = part_range(p, num_blocks, part_blocks)
        try:
            ok = pq.ParquetFile(path).metadata.num_rows == high - low
        except Exception:  # a torn or foreign file
            ok = False
        if ok:
            done.add(p)
        else:
            path.unlink()
    return done


class PartWriter:
    """Gathers scored rows, arriving in any order and possibly twice, into parts; writes each part once complete."""

    def __init__(self, out_dir: Path, num_blocks: int, part_blocks: int, todo: set[int]):
        self.out_dir, self.num_blocks, self.part_blocks = Path(out_dir), num_blocks, part_blocks
        self.open: dict[int, list[pa.Table]] = {p: [] for p in todo}
        self.rows = dict.fromkeys(todo, 0)

    def add(self, table: pa.Table) -> None:
        part_of = table.column(BLOCK_ID).to_numpy() // self.part_blocks
        for p in np.unique(part_of).tolist():
            if p not in self.open:  # already written: a retried task's duplicate
                continue
            rows = table.filter(pa.array(part_of == p)) if len(part_of) and part_of.min() != part_of.max() else table
            self.open[p].append(rows)
            self.rows[p] += rows.num_rows
            low, high = part_range(p, self.num_blocks, self.part_blocks)
            if self.rows[p] >= high - low:
                self._maybe_write(p, low, high)

    def _maybe_write(self, p: int, low: int, high: int) -> None:
        table = pa.concat_tables(self.open[p]).sort_by(BLOCK_ID)
        ids = table.column(BLOCK_ID).to_numpy()
        keep = np.ones(len(ids), dtype=bool)
        keep[1:] = ids[1:] != ids[:-1]  # first of each run of equal ids
        if not keep.all():
            table, ids = table.filter(pa.array(keep)), ids[keep]
        if len(ids) < high - low:  # duplicates made the count look complete: keep waiting
            self.open[p], self.rows[p] = [table], len(ids)
            return
        if ids[0] != low or ids[-1] != high - 1:
            raise ScoringError(f"part {p} received block ids outside [{low}, {high})")
        atomic_write_parquet(part_path(self.out_dir, p), table)
        del self.open[p], self.rows[p]

    def missing(self) -> list[int]:
        return sorted(self.open)


# --------------------------------------------------------------------------------------------
# The Ray Data pass
# --------------------------------------------------------------------------------------------


def _read_units(data_dir: Path, todo_mask: np.ndarray, part_blocks: int) -> list[dict[str, Any]]:
    """One read unit per Parquet row group of ``<data_dir>/train`` that holds a block of an unfinished part
    (block id range from the row group's statistics; without statistics the row group is read and filtered)."""
    units = []
    for f in sorted((data_dir / "train").glob("part-*.parquet")):
        meta = pq.ParquetFile(f).metadata
        col = meta.schema.to_arrow_schema().get_field_index(BLOCK_ID)
        for rg in range(meta.num_row_groups):
            st = meta.row_group(rg).column(col).statistics
            if st is None or not st.has_min_max or todo_mask[st.min // part_blocks : st.max // part_blocks + 1].any():
                units.append({"path": str(f), "row_group": rg})
    return units


def _read_row_groups(units: pa.Table, todo_mask: np.ndarray, part_blocks: int) -> Iterator[pa.Table]:
    """Ray Data read UDF: each unit's row group, without the rows of finished parts."""
    for path, rg in zip(units.column("path").to_pylist(), units.column("row_group").to_pylist()):
        table = pq.ParquetFile(path).read_row_group(rg, columns=[BLOCK_ID, INPUT_IDS, SOURCE])
        keep = todo_mask[table.column(BLOCK_ID).to_numpy() // part_blocks]
        yield table if keep.all() else table.filter(pa.array(keep))


def score_blocks(data_dir: str | Path, model_path: str | Path, model_cfg: ModelConfig, scoring: ScoringConfig,
                 out_dir: str | Path, *, with_features: bool = False, seed: int = 0,
                 progress: bool = True) -> dict[str, Any]:
    """Score every training block of ``data_dir`` with the weights at ``model_path``; resumable; returns the summary.

    Needs Ray initialised. Finished parts of an earlier attempt with the same spec are kept; a complete
    output is returned as is.
    """
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    meta = load_metadata(data_dir)
    num_blocks, block_len = meta["train"]["num_blocks"], meta["block_len"]
    feature_dim = scoring.feature_dim if with_features else 0
    spec = {"data_dir": str(data_dir.absolute()), "num_blocks": num_blocks, "model_path": str(model_path),
            "part_blocks": scoring.part_blocks, "feature_dim": feature_dim, "seed": seed}
    _check_spec(out_dir, spec)
    if (out_dir / COMPLETE).exists():
        return json.loads((out_dir / COMPLETE).read_text())
    num_parts = -(-num_blocks // scoring.part_blocks)
    done = finished_parts(out_dir, num_blocks, scoring.part_blocks)
    todo_mask = np.ones(num_parts, dtype=bool)
    todo_mask[list(done)] = False
    t0 = time.perf_counter()
    blocks_scored = 0
    if todo_mask.any():
        DataContext.get_current().enable_progress_bars = progress
        # Not ``read_parquet``: in Ray 2.60 it adds a file-listing task and ``repartition`` adds map tasks
        # that reserve 1 CPU each whatever ``num_cpus`` says; beside a run's training workers they may never
        # fit, and the pass hangs. Here every read is a task of ``num_cpus_per_read_task`` CPUs over a
        # manifest of row groups, and the dataset's own block-size target cuts its output into blocks of
        # ``_BATCHES_PER_TASK`` batches, so even one small file spreads over the whole pool.
        ds = ray.data.from_items(_read_units(data_dir, todo_mask, scoring.part_blocks))
        ds.context.target_max_block_size = scoring.batch_size * _BATCHES_PER_TASK * 4 * (block_len + 1)
        ds = ds.map_batches(_read_row_groups, fn_kwargs={"todo_mask": todo_mask, "part_blocks": scoring.part_blocks},
                            batch_size=1, batch_format="pyarrow", num_cpus=scoring.num_cpus_per_read_task)
        ds = ds.map_batches(
            BlockScorer,
            fn_constructor_args=(str(model_path), model_cfg, meta["tokenizer"], block_len),
            fn_constructor_kwargs={"use_gpu": scoring.num_gpus_per_actor > 0,
                                   "num_threads": max(1, round(scoring.num_cpus_per_actor)),
                                   "feature_dim": feature_dim, "seed": seed},
            batch_size=scoring.batch_size,
            batch_format="pyarrow",
            compute=ActorPoolStrategy(min_size=scoring.min_actors, max_size=scoring.max_actors),
            num_cpus=scoring.num_cpus_per_actor,
            num_gpus=scoring.num_gpus_per_actor or None,
            **({"resources": {scoring.node_resource: NODE_RESOURCE_PER_WORKER}} if scoring.node_resource else {}),
        )
        writer = PartWriter(out_dir, num_blocks, scoring.part_blocks, set(np.flatnonzero(todo_mask).tolist()))
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            writer.add(batch)
            blocks_scored += batch.num_rows
        if writer.missing():
            raise ScoringError(f"the scoring pass ended without blocks of parts {writer.missing()[:10]}")
    wall_s = time.perf_counter() - t0
    summary = _summarize(out_dir, num_parts)
    summary.update({"model_path": str(model_path), "part_blocks": scoring.part_blocks, "feature_dim": feature_dim,
                    "blocks_scored_now": blocks_scored, "blocks_reused": num_blocks - blocks_scored, "wall_s": wall_s,
                    "tokens_per_s": blocks_scored * block_len / wall_s if blocks_scored else None})
    if summary["num_blocks"] != num_blocks:
        raise ScoringError(f"{out_dir} holds {summary['num_blocks']} scored blocks, the data has {num_blocks}")
    atomic_write_json(out_dir / COMPLETE, summary)
    return summary


def _check_spec(out_dir: Path, spec: dict[str, Any]) -> None:
    path = out_dir / SPEC
    if path.exists():
        old = json.loads(path.read_text())
        if old != spec:
            diffs = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in spec.items() if old.get(k) != v]
            raise ScoringError(f"{out_dir} holds a scoring pass made differently ({'; '.join(diffs)}); "
                               "delete it to score again")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, spec)


def _summarize(out_dir: Path, num_parts: int) -> dict[str, Any]:
    """Blocks, tokens and mean loss overall and per domain, one part at a time."""
    sums: dict[str, list[float]] = {}
    for p in range(num_parts):
        t = pq.read_table(part_path(out_dir, p), columns=[LOSS, NUM_TOKENS, SOURCE])
        grouped = t.group_by(SOURCE).aggregate([(LOSS, "sum"), (LOSS, "count"), (NUM_TOKENS, "sum")])
        for row in grouped.to_pylist():
            acc = sums.setdefault(row[SOURCE], [0.0, 0, 0])
            acc[0] += row["loss_sum"]
            acc[1] += row["loss_count"]
            acc[2] += row["num_tokens_sum"]
    total_loss, blocks, tokens = (sum(v[i] for v in sums.values()) for i in range(3))
    return {
        "num_blocks": int(blocks),
        "num_tokens": int(tokens),
        "mean_loss": total_loss / blocks if blocks else None,
        "mean_loss_by_domain": {d: v[0] / v[1] for d, v in sorted(sums.items())},
        "blocks_by_domain": {d: int(v[1]) for d, v in sorted(sums.items())},
    }


# --------------------------------------------------------------------------------------------
# Reading scores back, feeding the statistics actor, clustering
# --------------------------------------------------------------------------------------------


def iter_parts(out_dir: str | Path, columns: list[str]) -> Iterator[pa.Table]:
    """The parts of a complete pass in block_id order, one table each (bounded memory)."""
    out_dir = Path(out_dir)
    if not (out_dir / COMPLETE).exists():
        raise ScoringError(f"{out_dir} holds no complete scoring pass (no {COMPLETE})")
    done = json.loads((out_dir / COMPLETE).read_text())
    for p in range(-(-done["num_blocks"] // done["part_blocks"])):
        yield pq.read_table(part_path(out_dir, p), columns=columns)


def read_scores(out_dir: str | Path, columns: Optional[list[str]] = None) -> pa.Table:
    """A complete pass as one table sorted by block_id (for tests and notebooks; a 306 M-block pass is 5 GB)."""
    return pa.concat_tables(iter_parts(out_dir, columns or [BLOCK_ID, LOSS, NUM_TOKENS, SOURCE]))


def record_scores(coordinator_actor, out_dir: str | Path, *, phase_idx: int, step: int) -> int:
    """Send a complete pass's losses to the statistics actor (``source="score"``), one call per part.

    At most two calls are in flight; returns once every record is applied.
    """
    import ray

    refs, total = [], 0
    for table in iter_parts(out_dir, [BLOCK_ID, LOSS]):
        batch = (table.column(BLOCK_ID).to_numpy(), table.column(LOSS).to_numpy(), phase_idx, step)
        refs.append(coordinator_actor.record_many.remote([batch], source="score"))
        total += table.num_rows
        if len(refs) > 2:
            ray.get(refs.pop(0))
    ray.get(refs)
    return total


def cluster_labels(out_dir: str | Path, num_blocks: int, scoring: ScoringConfig, *, seed: int) -> np.ndarray:
    """k-means cluster (int32) of every block from a complete pass's features: fitted on a seeded sample,
    then assigned part by part."""
    sample = np.sort(np.random.default_rng(seed).choice(num_blocks, min(num_blocks, scoring.kmeans_sample_blocks),
                                                        replace=False))
    rows = []
    for table in iter_parts(out_dir, [BLOCK_ID, FEATURE]):
        if FEATURE not in table.column_names:
            raise ScoringError(f"{out_dir} was scored without features; cannot cluster")
        ids = table.column(BLOCK_ID).to_numpy()  # a part: contiguous, sorted
        low, high = np.searchsorted(sample, [ids[0], ids[-1] + 1])
        rows.append(_features(table)[sample[low:high] - ids[0]])
    centroids = kmeans_fit(np.concatenate(rows), scoring.num_clusters, seed=seed, iters=scoring.kmeans_iters)
    labels = np.empty(num_blocks, dtype=np.int32)
    for table in iter_parts(out_dir, [BLOCK_ID, FEATURE]):
        labels[table.column(BLOCK_ID).to_numpy()] = kmeans_assign(_features(table), centroids)
    return labels


def _features(table: pa.Table) -> np.ndarray:
    col = table.column(FEATURE).combine_chunks()
    return col.flatten().to_numpy().reshape(len(col), col.type.list_size)


# --------------------------------------------------------------------------------------------
# Placement: the pool needs resources besides the training workers'
# --------------------------------------------------------------------------------------------


def resource_shortfall(cfg: Config, cluster: dict[str, float], *, beside_training: bool) -> Optional[str]:
    """Why ``scoring.min_actors`` actors plus one read task cannot fit on ``cluster`` (``ray.cluster_resources()``),
    next to the training workers when ``beside_training``; None when they fit."""
    sc, tc = cfg.scoring, cfg.train
    need_cpu = sc.min_actors * sc.num_cpus_per_actor + sc.num_cpus_per_read_task
    need_gpu = sc.min_actors * sc.num_gpus_per_actor
    if beside_training:
        need_cpu += tc.num_workers * tc.cpus_per_worker
        need_gpu += tc.num_workers if tc.use_gpu else 0
    have_cpu, have_gpu = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    if need_cpu <= have_cpu + 1e-9 and need_gpu <= have_gpu + 1e-9:
        return None
    who = "the training workers, " if beside_training else ""
    return (f"the scoring pass needs {need_cpu:g} CPUs and {need_gpu:g} GPUs for {who}scoring.min_actors="
            f"{sc.min_actors} actor(s) and a read task, but the cluster has {have_cpu:g} CPUs and {have_gpu:g} GPUs "
            "now: it waits for an autoscaler to add nodes, and hangs on a fixed cluster. Lower "
            "scoring.num_cpus_per_actor / scoring.num_gpus_per_actor / train.cpus_per_worker, or add nodes.")


# --------------------------------------------------------------------------------------------
# `lfr-ray score`: the latest checkpoint (or exported model) of a run
# --------------------------------------------------------------------------------------------


def resolve_checkpoint(cfg: Config) -> Path:
    """``scoring.checkpoint``; else the run's exported ``model/`` if complete; else its latest checkpoint."""
    if cfg.scoring.checkpoint:
        path = Path(cfg.scoring.checkpoint)
        if not path.is_dir():
            raise ScoringError(f"scoring.checkpoint: no such directory: {path}")
        return path.absolute()
    paths = RunPaths(cfg.run.run_dir())
    if paths.complete.exists() and (paths.model / "config.json").exists():
        return paths.model
    storage = paths.train_storage
    if cfg.run.storage_path is not None:
        if "://" in cfg.run.storage_path:
            raise ScoringError("checkpoints are in remote storage: give scoring.checkpoint=<a local checkpoint dir>")
        storage = Path(cfg.run.storage_path) / cfg.run.name
    checkpoints = sorted(p for p in storage.glob("checkpoint_*") if (p / "model.pt").exists())
    if not checkpoints:
        raise ScoringError(f"run '{cfg.run.name}' has no model/ and no checkpoint under {storage}: "
                           "train first, or give scoring.checkpoint")
    return checkpoints[-1]


def score_checkpoint(cfg: Config, *, verbose: bool = True) -> dict[str, Any]:
    """``lfr-ray score``: score every training block with a run's checkpoint into ``<run dir>/scores/<name>``."""
    import ray

    model_path = resolve_checkpoint(cfg)
    out_dir = RunPaths(cfg.run.run_dir()).scores / model_path.name
    shortfall = resource_shortfall(cfg, ray.cluster_resources(), beside_training=False)
    if shortfall:
        print(f"[lfr-ray] warning: {shortfall}", file=sys.stderr)
    if verbose:
        print(f"Scoring {cfg.data.output_dir} with {model_path} -> {out_dir}")
    summary = score_blocks(cfg.data.output_dir, model_path, cfg.model, cfg.scoring, out_dir,
                           with_features=cfg.scoring.emit_features, seed=cfg.train.seed, progress=verbose)
    summary["out_dir"] = str(out_dir)
    if verbose:
        print(format_summary(summary))
    return summary


def save_weights(model: torch.nn.Module, out_dir: Path) -> Path:
    """Save a model's weights as ``<out_dir>/_model/model.pt`` (atomically) for the scoring actors to load."""
    model_dir = Path(out_dir) / MODEL_DIR
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".model.pt.tmp-{os.getpid()}"
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, model_dir / "model.pt")
    return model_dir


def drop_weights(out_dir: Path) -> None:
    shutil.rmtree(Path(out_dir) / MODEL_DIR, ignore_errors=True)


def wait_complete(out_dir: Path, poll_s: float = 1.0) -> None:
    """Block until another process finishes the pass at ``out_dir`` (a file poll: no collective to time out)."""
    while not (Path(out_dir) / COMPLETE).exists():
        time.sleep(poll_s)


def format_summary(summary: dict[str, Any]) -> str:
    rate = summary.get("tokens_per_s")
    lines = [
        f"Scored {summary['num_blocks']:,} blocks ({summary['num_tokens']:,} tokens): mean loss "
        f"{summary['mean_loss']:.4f} nats/token; {summary['blocks_scored_now']:,} blocks scored now"
        + (f" in {summary['wall_s']:.1f} s, {rate:,.0f} tokens/s" if rate else "")
        + (f", {summary['blocks_reused']:,} reused from an earlier attempt" if summary["blocks_reused"] else ""),
    ]
    for domain, loss in summary["mean_loss_by_domain"].items():
        lines.append(f"  {domain:<14} {loss:.4f}  ({summary['blocks_by_domain'][domain]:,} blocks)")
    if "out_dir" in summary:
        lines.append(f"  scores: {summary['out_dir']} (pyarrow.parquet.read_table)")
    return "\n".join(lines)
