"""Does LFR pay? LFR (paper schedule) vs random order vs static pruning on minipile-v1, 3 seeds each.

    python bench/data_efficiency.py                              # 4.8 M chars -> ~1.5 M tokens of blocks
    python bench/data_efficiency.py --train-chars 2M --seeds 0       # smaller, for a busy machine; one seed
    python bench/data_efficiency.py compare.methods=[lfr,random]      # any config override
    python bench/data_efficiency.py --scored-lfr    # adds `lfr-scored`: LFR with focus sets from a scoring pass

Writes a deterministic subset of ``../shared/corpus/minipile-v1/train.parquet`` (whole documents,
chosen by a hash of their id, so every domain keeps its share) to ``data/bench/`` (not committed;
the corpus itself is never copied into the repository), runs ``lfr-ray compare`` with
``configs/bench/minipile.yaml`` and prints where the report is. Re-running reuses finished runs.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

CORPUS = Path("../shared/corpus/minipile-v1")


def _parse_chars(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1e3, "M": 1e6}.get(text[-1], 1)
    return int(float(text.rstrip("KM")) * scale)


def write_subset(train_chars: int, out: Path) -> Path:
    """Documents whose blake2b(id) falls below the fraction that gives about ``train_chars`` characters."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if out.exists():
        return out
    table = pq.read_table(CORPUS / "train.parquet")
    ids = table["id"].to_pylist()
    lengths = [len(t) for t in table["text"].to_pylist()]
    keys = [int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "big") for i in ids]
    order = sorted(range(len(ids)), key=keys.__getitem__)
    chosen, total = [], 0
    for i in order:  # hash order: a uniform, deterministic sample of documents, nested across sizes
        if total >= train_chars:
            break
        chosen.append(i)
        total += lengths[i]
    subset = table.take(pa.array(sorted(chosen)))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    pq.write_table(subset, tmp)
    tmp.rename(out)
    print(f"subset: {len(chosen):,} of {len(ids):,} documents, {total:,} characters -> {out}")
    return out


def with_scored_lfr(cfg):
    """``cfg`` plus the method ``lfr-scored``: its schedule with ``stats_source: score`` on every focus phase."""
    import dataclasses

    from lfr_ray.config import CompareVariant

    phases = tuple(dataclasses.replace(p, stats_source="score") if p.kind == "focus" else p
                   for p in cfg.schedule.phases)
    compare = dataclasses.replace(cfg.compare, methods=(*cfg.compare.methods, "lfr-scored"),
                                  variants=(*cfg.compare.variants, CompareVariant("lfr-scored", phases)))
    return dataclasses.replace(cfg, compare=compare).validate()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-chars", default="4.8M", help="characters of training text (e.g. 2M, 4.8M)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: the config's 0,1,2)")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--scored-lfr", action="store_true",
                        help="also run 'lfr-scored': the LFR schedule with each focus phase selecting from a fresh "
                             "scoring pass (stats_source: score) instead of the losses recorded during training")
    parser.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    args = parser.parse_args(argv)

    import ray

    from lfr_ray.compare import compare, compare_dir
    from lfr_ray.config import load_config

    tag = args.train_chars.strip().upper()
    subset = write_subset(_parse_chars(args.train_chars), Path(f"data/bench/minipile-train-{tag}.parquet"))
    # Absolute paths: Ray Train workers validate the config in their own working directory.
    overrides = [f"data.inputs=[{subset.absolute()}]", f"data.val_inputs=[{(CORPUS / 'valid.parquet').absolute()}]",
                 f"data.output_dir={Path('data/bench').absolute() / f'blocks-{tag}'}",
                 f"compare.root_dir={Path('runs/bench').absolute()}", f"compare.name=minipile-{tag}"]
    if args.seeds:
        overrides.append(f"compare.seeds=[{args.seeds}]")
    cfg = load_config("bench/minipile.yaml", overrides + args.overrides)
    if args.scored_lfr:
        cfg = with_scored_lfr(cfg)
    ray.init(num_cpus=args.num_cpus, runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    t0 = time.time()
    compare(cfg)
    print(f"benchmark wall time {time.time() - t0:.0f} s; report: {compare_dir(cfg) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
