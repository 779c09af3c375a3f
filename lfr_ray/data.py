"""Raw text -> tokenized fixed-length blocks (``lfr-ray prepare``), and reading them back.

``prepare`` plans work units (``readers.plan_units``), trains or adopts the tokenizer on the driver, then
runs one Ray Data task per unit: read tolerantly, tokenize, pack each split's documents (each followed
by the end-of-text token) into blocks of ``block_len + 1`` ids, write a staging shard and a small JSON
report, the unit's completion marker. The driver sums the reports, numbers blocks 0..N-1 per split in
unit order, and a second Ray Data pass writes the final shards. Layout of ``<output_dir>``::

    train/part-00000.parquet ...   block_id int64, input_ids list<int32>, source string, doc_id string
    val/part-00000.parquet ...     (no files when there is no validation split)
    tokenizer/                     AutoTokenizer.from_pretrained loads it
    metadata.json, config.yaml, _COMPLETE (written last)

The packing itself is ``packing.py`` (pure numpy); the format's names and the read-back functions,
used by training workers without Ray, are ``blocks.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lfr_ray.blocks import (
    COMPLETE, CONFIG, DOC_ID, FORMAT_VERSION, INPUT_IDS, METADATA, SCHEMA, SOURCE, SPLITS, STAGING,
    TOKENIZER_DIR, PrepareError, is_complete, load_metadata,
)
from lfr_ray.config import DataConfig
from lfr_ray.packing import Packer, in_val
from lfr_ray.paths import atomic_write_text
from lfr_ray.readers import SKIP_REASONS, Doc, InputError, SkipLog, Unit, check_columns, plan_units, read_docs
from lfr_ray.tokenizer import TokenizerError, load_tokenizer, save_tokenizer, tokenizer_hash, train_bpe

log = logging.getLogger(__name__)


# A final shard gathers whole unit outputs until it holds about this many bytes of token ids
# (128 MiB / (129 ids * 4 B) ~ 260k blocks at block_len 128).
TARGET_SHARD_BYTES = 128 << 20
# Documents are tokenized in batches of about this many characters (~1M tokens, a few MB of ids).
_TOKENIZE_CHARS = 4_000_000
# DataConfig fields that change neither the blocks nor the tokenizer; a re-run may differ in them.
_HASH_EXCLUDED = ("output_dir", "num_cpus_per_task", "max_error_locations")


# --------------------------------------------------------------------------------------------
# One unit: read, tokenize, pack, write a staging shard and the report (runs inside a Ray task)
# --------------------------------------------------------------------------------------------


def _report_path(staging: Path, unit_idx: int) -> Path:
    return staging / f"unit-{unit_idx:05d}.json"


def _list_array(ids: np.ndarray) -> pa.Array:
    n, width = ids.shape
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids.ravel(), pa.int32()))


@lru_cache(maxsize=2)
def _backend_tokenizer(tok_dir: str, sha: str):
    """The Rust tokenizer, loaded once per worker process (keyed by content hash, so a redo reloads)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(tok_dir) / "tokenizer.json"))


class _SplitPacking:
    """One split of one unit: packer, staging writer and counts."""

    def __init__(self, cfg: DataConfig, eot_id: int, vocab_size: int, path: Path):
        self.packer = Packer(cfg.block_len, eot_id)
        self.path, self.writer = path, None
        self.num_docs, self.num_blocks = 0, 0
        self.domain_docs: Counter[str] = Counter()
        self.domain_tokens: Counter[str] = Counter()
        self.domain_blocks: Counter[str] = Counter()
        self.unigram = np.zeros(vocab_size, np.int64)

    def add(self, docs: list[Doc], token_ids: list[list[int]], is_val: bool) -> None:
        self.num_docs += len(docs)
        self.domain_docs.update(d.domain for d in docs)
        blocks = self.packer.add(token_ids, [d.domain for d in docs], [d.doc_id for d in docs])
        names = self.packer.domains
        for i, n in enumerate(blocks.domain_tokens):
            self.domain_tokens[names[i]] += int(n)
        for i, n in enumerate(np.bincount(blocks.source_idx, minlength=len(names))):
            self.domain_blocks[names[i]] += int(n)
        # Unigram counts for the baseline loss: all train ids; for val only the next-token targets.
        counted = blocks.input_ids[:, 1:] if is_val else blocks.input_ids
        self.unigram += np.bincount(counted.ravel(), minlength=len(self.unigram))[: len(self.unigram)]
        if len(blocks.input_ids) == 0:
            return
        self.num_blocks += len(blocks.input_ids)
        table = pa.table({INPUT_IDS: _list_array(blocks.input_ids),
                          SOURCE: pa.array([names[i] for i in blocks.source_idx], pa.string()),
                          DOC_ID: pa.array(blocks.doc_ids, pa.string())})
        if self.writer is None:
            self.writer = pq.ParquetWriter(str(self.path) + ".tmp", table.schema)
        self.writer.write_table(table)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
            Path(str(self.path) + ".tmp").unlink(missing_ok=True)

    def finish(self) -> dict[str, Any]:
        if self.writer is not None:
            self.writer.close()
            os.replace(str(self.path) + ".tmp", self.path)
        nonzero = np.flatnonzero(self.unigram)
        return {
            "num_docs": self.num_docs,
            "num_blocks": self.num_blocks,
            "num_tokens": self.num_blocks * self.packer.width,
            "tail_tokens_dropped": self.packer.tail_tokens,
            "per_domain": {d: {"docs": self.domain_docs[d], "tokens": self.domain_tokens[d],
                               "blocks": self.domain_blocks[d]} for d in sorted(self.domain_docs)},
            "staging": self.path.name if self.writer is not None else None,
            "unigram": {"ids": nonzero.tolist(), "counts": self.unigram[nonzero].tolist()},
        }


def process_unit(unit: Unit, cfg: DataConfig, staging_dir: str, tok: dict[str, Any]) -> dict[str, Any]:
    """Read, tokenize and pack one unit; write its staging shards and report; return the report.

    ``tok`` is the tokenizer entry of the metadata (path, hash, eot_id, vocab_size). A unit whose
    report already exists is not redone: the report is written last, so it marks a finished unit.
    """
    staging = Path(staging_dir)
    report_path = _report_path(staging, unit.unit_idx)
    if report_path.exists():
        return json.loads(report_path.read_text())
    t0 = time.perf_counter()
    tokenizer = _backend_tokenizer(tok["path"], tok["hash"])
    skips = SkipLog(cfg.max_error_locations)
    splits = {s: _SplitPacking(cfg, tok["eot_id"], tok["vocab_size"],
                               staging / f"unit-{unit.unit_idx:05d}.{s}.parquet") for s in SPLITS}

    def flush(batch: list[Doc]) -> None:
        encoded = tokenizer.encode_batch_fast([d.text for d in batch], add_special_tokens=False)
        by_split: dict[str, tuple[list[Doc], list[list[int]]]] = {s: ([], []) for s in SPLITS}
        for doc, enc in zip(batch, encoded):
            split = unit.role if unit.role != "split" else ("val" if in_val(doc.doc_id, cfg.val_frac) else "train")
            by_split[split][0].append(doc)
            by_split[split][1].append(enc.ids)
        for s, (docs, ids) in by_split.items():
            if docs:
                splits[s].add(docs, ids, is_val=s == "val")

    batch: list[Doc] = []
    chars = 0
    try:
        for doc in read_docs(unit, cfg, skips):
            batch.append(doc)
            chars += len(doc.text)
            if chars >= _TOKENIZE_CHARS:
                flush(batch)
                batch, chars = [], 0
        if batch:
            flush(batch)
    except BaseException:
        for split in splits.values():  # no half-written staging shard survives
            split.abort()
        raise
    split_reports = {s: splits[s].finish() for s in SPLITS}
    report = {
        "unit": dataclasses.asdict(unit),
        "docs_read": sum(r["num_docs"] for r in split_reports.values()) + skips.total,
        "skipped": skips.counts,
        "error_locations": skips.locations,
        "splits": split_reports,
        "elapsed_s": round(time.perf_counter() - t0, 3),
    }
    atomic_write_text(report_path, json.dumps(report))
    return report


def _unit_task(unit_json: str, cfg: DataConfig, staging_dir: str, tok: dict[str, Any]) -> dict[str, Any]:
    """``process_unit`` for Ray Data: a user error comes back as a message, not a remote traceback."""
    # The task owns num_cpus_per_task cores; the Rust tokenizer would otherwise use every core it sees.
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if cfg.num_cpus_per_task >= 2 else "false"
    unit = Unit.from_json(unit_json)
    try:
        process_unit(unit, cfg, staging_dir, tok)
    except InputError as e:
        return {"unit_idx": unit.unit_idx, "error": str(e)}
    return {"unit_idx": unit.unit_idx, "error": None}


def finalize_shard(shard: dict[str, Any]) -> dict[str, Any]:
    """Concatenate staging files in order, number their blocks from ``first_block_id``, write one shard."""
    tables = [pq.read_table(p) for p in shard["staging"]]
    table = pa.concat_tables(tables)
    ids = pa.array(np.arange(shard["first_block_id"], shard["first_block_id"] + table.num_rows, dtype=np.int64))
    table = pa.table([ids, table[INPUT_IDS], table[SOURCE], table[DOC_ID]], schema=SCHEMA)
    tmp = shard["path"] + ".tmp"
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, shard["path"])
    return {"path": shard["path"], "num_rows": table.num_rows}


def _run_tasks(fn: Callable[..., dict], items: list[str], num_cpus: float, progress: bool,
               name: str, **kwargs: Any) -> list[dict[str, Any]]:
    """``fn(item, **kwargs)`` for every item, one Ray Data task each; results in item order."""
    import ray

    def call(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"result": np.array([json.dumps(fn(str(batch["item"][0]), **kwargs))])}

    call.__name__ = name  # names the operator in Ray Data's progress bars
    ctx = ray.data.DataContext.get_current()
    saved = ctx.enable_progress_bars, ctx.print_on_execution_start
    ctx.enable_progress_bars = ctx.print_on_execution_start = progress
    try:
        # One block per item: otherwise small inputs arrive as a single block and run in one task.
        ds = ray.data.from_items([{"item": s} for s in items], override_num_blocks=len(items))
        rows = ds.map_batches(call, batch_size=1, num_cpus=num_cpus).take_all()
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start = saved
    return [json.loads(r["result"]) for r in rows]


def _check_cluster_cpus(num_cpus_per_task: float) -> None:
    import ray

    if not ray.is_initialized():
        return  # Ray Data starts a local instance with every CPU
    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus < num_cpus_per_task:  # an autoscaling cluster may still grow; a fixed one would wait forever
        log.warning("data.num_cpus_per_task=%g but the Ray cluster has %g CPUs now: tasks wait until a node "
                    "with enough CPUs joins", num_cpus_per_task, cpus)


def _finalize_task(shard_json: str) -> dict[str, Any]:
    return finalize_shard(json.loads(shard_json))


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


def data_config_hash(cfg: DataConfig) -> str:
    """sha256 of the data config fields that decide the blocks (inputs as given, tokenizer, lengths, split)."""
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _HASH_EXCLUDED}
    fields["inputs"], fields["val_inputs"] = list(cfg.resolved_inputs), list(cfg.resolved_val_inputs)
    fields["format_version"] = FORMAT_VERSION
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=list).encode()).hexdigest()


def _config_diff(old: dict[str, Any], cfg: DataConfig) -> list[str]:
    new = json.loads(json.dumps(dataclasses.asdict(cfg), default=list))
    return sorted(k for k in new if k not in _HASH_EXCLUDED and old.get(k) != new[k])


def _wipe(out: Path, keep_tokenizer: bool) -> None:
    """Remove what ``prepare`` writes, and only that: ``output_dir`` may hold the user's own files."""
    for name in (METADATA, CONFIG, COMPLETE):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / STAGING, ignore_errors=True)
    if not keep_tokenizer:
        shutil.rmtree(out / TOKENIZER_DIR, ignore_errors=True)
    for split in SPLITS:
        for part in (out / split).glob("part-*.parquet*"):
            part.unlink()
        if (out / split).is_dir() and not any((out / split).iterdir()):
            (out / split).rmdir()


def _start_or_resume(out: Path, config_hash: str, units: list[Unit], keep_tok: bool) -> Path:
    """The staging dir; kept (a resume) only if it was planned from the same config and units."""
    staging = out / STAGING
    plan = {"data_config_hash": config_hash, "units": [dataclasses.asdict(u) for u in units]}
    plan_path = staging / "plan.json"
    if plan_path.exists() and json.loads(plan_path.read_text()) == plan:
        done = sum(_report_path(staging, u.unit_idx).exists() for u in units)
        log.info("resuming the preparation at %s: %d of %d units already done", out, done, len(units))
        return staging
    if staging.exists():
        log.info("discarding an unfinished preparation at %s made from other inputs or config", out)
    _wipe(out, keep_tokenizer=keep_tok)
    staging.mkdir(parents=True)
    atomic_write_text(plan_path, json.dumps(plan))
    return staging


def _training_texts(cfg: DataConfig, units: list[Unit], skips: SkipLog):
    """Train-split document texts in unit order, at most ``tokenizer_train_chars`` characters in all."""
    budget = cfg.tokenizer_train_chars
    for unit in units:
        if unit.role == "val":
            continue
        for doc in read_docs(unit, cfg, skips):  # only for an error message: the unit tasks count skips
            if unit.role == "split" and in_val(doc.doc_id, cfg.val_frac):
                continue
            yield doc.text[:budget]
            budget -= min(len(doc.text), budget)
            if budget == 0:
                return


def _prepare_tokenizer(cfg: DataConfig, out: Path, staging: Path, units: list[Unit]) -> dict[str, Any]:
    info_path = staging / "tokenizer.json"
    tok_dir = out / TOKENIZER_DIR
    if info_path.exists() and tok_dir.is_dir():
        return json.loads(info_path.read_text())
    t0 = time.perf_counter()
    if cfg.tokenizer is not None:
        tok = load_tokenizer(cfg.tokenizer)
        if Path(cfg.tokenizer).absolute() != tok_dir:
            save_tokenizer(tok, tok_dir)
        name = cfg.tokenizer
    else:
        log.info("training a byte-level BPE tokenizer (vocab %d) on up to %s characters of the train split",
                 cfg.vocab_size, f"{cfg.tokenizer_train_chars:,}")
        chars, failure, skips = [0], [], SkipLog(cfg.max_error_locations)

        def texts():
            # An error raised inside the Rust trainer's iterator would lose its message: stash it.
            try:
                for text in _training_texts(cfg, units, skips):
                    chars[0] += len(text)
                    yield text
            except InputError as e:
                failure.append(e)

        tok = train_bpe(texts(), cfg.vocab_size)
        if failure:
            raise failure[0]
        if chars[0] == 0:
            raise PrepareError(f"no usable text in the train split to train a tokenizer on: "
                               f"{skips.total:,} record(s) read from {', '.join(cfg.resolved_inputs)}, all "
                               f"skipped: {_skip_text(skips)}; check data.inputs, data.text_field, data.format")
        save_tokenizer(tok, tok_dir)
        name = f"byte-level-bpe-{len(tok)}"
        log.info("tokenizer trained on %s characters in %.1f s (vocab %d)", f"{chars[0]:,}",
                 time.perf_counter() - t0, len(tok))
    if "tokenizer.json" not in os.listdir(tok_dir):
        raise PrepareError(f"tokenizer {cfg.tokenizer} saved no tokenizer.json (a fast tokenizer is needed)")
    info = {"path": str(tok_dir), "name": name, "hash": tokenizer_hash(tok_dir), "vocab_size": len(tok),
            "eot_id": int(tok.eos_token_id), "eot_token": tok.eos_token}
    atomic_write_text(info_path, json.dumps(info))
    return info


def _split_totals(reports: list[dict[str, Any]], split: str) -> dict[str, Any]:
    total = {"num_blocks": 0, "num_tokens": 0, "num_docs": 0, "tail_tokens_dropped": 0}
    per_domain: dict[str, Counter[str]] = {}
    for r in reports:
        s = r["splits"][split]
        for key in total:
            total[key] += s[key]
        for domain, counts in s["per_domain"].items():
            per_domain.setdefault(domain, Counter()).update(counts)
    total["per_domain"] = {d: dict(per_domain[d]) for d in sorted(per_domain)}
    return total


def _unigram_loss(reports: list[dict[str, Any]], vocab_size: int) -> Optional[float]:
    """Cross-entropy (nats/token) of val targets under the add-one-smoothed train unigram distribution."""
    counts = {s: np.zeros(vocab_size, np.int64) for s in SPLITS}
    for r in reports:
        for s in SPLITS:
            u = r["splits"][s]["unigram"]
            np.add.at(counts[s], np.array(u["ids"], np.int64), np.array(u["counts"], np.int64))
    if counts["val"].sum() == 0:
        return None
    log_p = np.log(counts["train"] + 1.0) - np.log(counts["train"].sum() + vocab_size)
    return float(-(counts["val"] * log_p).sum() / counts["val"].sum())


def _skip_text(skips: SkipLog) -> str:
    if not skips.total:
        return "none"
    return ", ".join(f"{reason} {n:,} (first at {', '.join(skips.locations.get(reason, [])[:2])})"
                     for reason, n in sorted(skips.counts.items()))


def _plan_shards(out: Path, staging: Path, reports: list[dict[str, Any]], split: str,
                 block_len: int) -> list[dict[str, Any]]:
    """Consecutive units' staging files grouped into final shards of about ``TARGET_SHARD_BYTES``."""
    blocks_per_shard = max(1, TARGET_SHARD_BYTES // ((block_len + 1) * 4))
    shards: list[dict[str, Any]] = []
    next_id = 0
    for r in reports:
        s = r["splits"][split]
        if not s["num_blocks"]:
            continue
        if not shards or shards[-1]["num_blocks"] >= blocks_per_shard:
            path = out / split / f"part-{len(shards):05d}.parquet"
            shards.append({"path": str(path), "first_block_id": next_id, "num_blocks": 0, "staging": []})
        shards[-1]["staging"].append(str(staging / s["staging"]))
        shards[-1]["num_blocks"] += s["num_blocks"]
        next_id += s["num_blocks"]
    return shards


def _metadata(cfg: DataConfig, units: list[Unit], reports: list[dict[str, Any]], tok: dict[str, Any],
              out: Path, config_hash: str) -> tuple[dict[str, Any], SkipLog]:
    """The metadata (less shard counts and timings) summed from the unit reports, and the merged skips."""
    skips = SkipLog(cfg.max_error_locations)
    for r in reports:
        skips.merge(r["skipped"], r["error_locations"])
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "data_config_hash": config_hash,
        "data_config": json.loads(json.dumps(dataclasses.asdict(cfg), default=list)),
        "output_dir": str(out),
        "inputs": list(cfg.resolved_inputs),
        "val_inputs": list(cfg.resolved_val_inputs),
        "num_units": len(units),
        "tokenizer": tok,
        "block_len": cfg.block_len,
        "docs_read": sum(r["docs_read"] for r in reports),
        **{s: _split_totals(reports, s) for s in SPLITS},
        "skipped": {reason: skips.counts.get(reason, 0) for reason in SKIP_REASONS},
        "error_locations": skips.locations,
        "unigram_loss": _unigram_loss(reports, tok["vocab_size"]),
    }
    meta["domains"] = sorted(set(meta["train"]["per_domain"]) | set(meta["val"]["per_domain"]))
    return meta, skips


def _write_shards(out: Path, staging: Path, reports: list[dict[str, Any]], meta: dict[str, Any],
                  cfg: DataConfig, progress: bool) -> None:
    """Pass 2: the final shards of both splits (stale ones of an earlier attempt removed first)."""
    shards = []
    for split in SPLITS:
        (out / split).mkdir(exist_ok=True)
        for stale in (out / split).glob("part-*.parquet*"):
            stale.unlink()
        split_shards = _plan_shards(out, staging, reports, split, cfg.block_len)
        meta[split]["num_shards"] = len(split_shards)
        shards += split_shards
    written = _run_tasks(_finalize_task, [json.dumps(s) for s in shards], cfg.num_cpus_per_task, progress,
                         "write_shards")
    if sum(w["num_rows"] for w in written) != sum(meta[s]["num_blocks"] for s in SPLITS):
        raise PrepareError(f"the shards written under {out} do not hold the blocks the units reported; "
                           f"re-run with --force")


def prepare(cfg: DataConfig, *, config_yaml: str, force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Turn ``cfg.inputs`` into blocks under ``cfg.output_dir``; return the metadata (see the module doc).

    Resumable: finished units of an interrupted run are kept; a complete output made from the same
    data config is returned as is; one made from another config is an error unless ``force``.
    Needs Ray initialised (the caller's job). Raises ``PrepareError`` for every user error.
    """
    t0 = time.perf_counter()
    out = Path(cfg.output_dir).absolute()
    config_hash = data_config_hash(cfg)
    keep_tok = cfg.tokenizer is not None and Path(cfg.tokenizer).absolute() == out / TOKENIZER_DIR
    if is_complete(out) and not force:
        meta = load_metadata(out)
        if meta.get("data_config_hash") != config_hash:
            changed = ", ".join(_config_diff(meta.get("data_config", {}), cfg)) or "format version"
            raise PrepareError(f"{out} holds data prepared with a different data config (changed: {changed}); "
                               f"use --force to overwrite it or set another data.output_dir")
        num_blocks = sum(meta[s]["num_blocks"] for s in SPLITS)
        log.info("already prepared at %s (%s blocks); use --force to redo", out, f"{num_blocks:,}")
        return meta
    if force:
        _wipe(out, keep_tokenizer=keep_tok)
    (out / COMPLETE).unlink(missing_ok=True)
    try:
        units = plan_units(cfg)
        for warning in dict.fromkeys(check_columns(cfg, units)):
            log.warning(warning)
        staging = _start_or_resume(out, config_hash, units, keep_tok)
        tok = _prepare_tokenizer(cfg, out, staging, units)
        stage_s = {"plan_and_tokenizer": round(time.perf_counter() - t0, 2)}
    except (InputError, TokenizerError) as e:
        raise PrepareError(str(e)) from e

    todo = [u for u in units if not _report_path(staging, u.unit_idx).exists()]
    _check_cluster_cpus(cfg.num_cpus_per_task)
    log.info("preparing %d units (%d already done) from %d input(s) into %s", len(todo),
             len(units) - len(todo), len(cfg.resolved_inputs) + len(cfg.resolved_val_inputs), out)
    t_units = time.perf_counter()
    if todo:
        results = _run_tasks(_unit_task, [u.to_json() for u in todo], cfg.num_cpus_per_task, progress,
                             "tokenize_and_pack", cfg=cfg, staging_dir=str(staging), tok=tok)
        errors = [r["error"] for r in sorted(results, key=lambda r: r["unit_idx"]) if r["error"]]
        if errors:
            raise PrepareError(f"{len(errors)} of {len(todo)} units failed (finished units are kept; fix the "
                               f"input and re-run to resume):\n  " + "\n  ".join(errors[:10]))
    reports = [json.loads(_report_path(staging, u.unit_idx).read_text()) for u in units]
    stage_s["units"] = round(time.perf_counter() - t_units, 2)
    stage_s["unit_tasks_sum"] = round(sum(r["elapsed_s"] for r in reports), 2)  # > units: parallel

    meta, skips = _metadata(cfg, units, reports, tok, out, config_hash)
    if meta["train"]["num_blocks"] == 0:
        train = meta["train"]
        raise PrepareError(
            f"no training blocks: read {meta['docs_read']:,} documents from {', '.join(meta['inputs'])}; "
            f"kept {train['num_docs']:,} for training ({train['tail_tokens_dropped']:,} tokens, fewer than one "
            f"block of {cfg.block_len + 1} per unit); skipped: {_skip_text(skips)}")
    for reason, where in skips.locations.items():
        log.warning("skipped %d record(s): %s, e.g. %s", skips.counts[reason], SKIP_REASONS[reason],
                    ", ".join(where))

    t_final = time.perf_counter()
    _write_shards(out, staging, reports, meta, cfg, progress)
    stage_s["finalize"] = round(time.perf_counter() - t_final, 2)
    meta["elapsed_s"], meta["stage_s"] = round(time.perf_counter() - t0, 2), stage_s
    atomic_write_text(out / METADATA, json.dumps(meta, indent=1))
    atomic_write_text(out / CONFIG, config_yaml)
    shutil.rmtree(staging)
    (out / COMPLETE).write_text("")  # last: its presence means everything above is in place
    return meta


def format_summary(meta: dict[str, Any]) -> str:
    """A one-screen summary of a preparation's metadata."""
    tok = meta["tokenizer"]
    kept = meta["train"]["num_docs"] + meta["val"]["num_docs"]
    skipped = {k: v for k, v in meta["skipped"].items() if v}
    lines = [
        f"prepared data: {meta['output_dir']}  ({meta['elapsed_s']:.1f} s)",
        f"  documents    {meta['docs_read']:,} read, {kept:,} kept, {sum(skipped.values()):,} skipped"
        + (f" ({', '.join(f'{k} {v:,}' for k, v in skipped.items())})" if skipped else ""),
        f"  tokenizer    {tok['name']} (vocab {tok['vocab_size']:,}, end-of-text id {tok['eot_id']})",
    ]
    for split in SPLITS:
        s = meta[split]
        lines.append(f"  {split:<5}        {s['num_blocks']:,} blocks of {meta['block_len'] + 1} ids = "
                     f"{s['num_tokens']:,} tokens from {s['num_docs']:,} docs "
                     f"({s['tail_tokens_dropped']:,} tail tokens dropped, {s.get('num_shards', 0)} shard(s))")
    lines.append(f"  {'domain':<14}{'train docs':>12}{'train tokens':>16}{'val docs':>10}{'val tokens':>14}")
    for d in meta["domains"]:
        t, v = meta["train"]["per_domain"].get(d, {}), meta["val"]["per_domain"].get(d, {})
        lines.append(f"  {d[:14]:<14}{t.get('docs', 0):>12,}{t.get('tokens', 0):>16,}"
                     f"{v.get('docs', 0):>10,}{v.get('tokens', 0):>14,}")
    if meta["unigram_loss"] is not None:
        lines.append(f"  unigram baseline val loss {meta['unigram_loss']:.3f} nats/token")
    return "\n".join(lines)
