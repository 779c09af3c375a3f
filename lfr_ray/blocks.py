"""The on-disk format of prepared blocks, and reading it back (plain pyarrow and numpy, no Ray).

``lfr-ray prepare`` (``data.py``) writes, under ``<output_dir>``::

    train/part-00000.parquet ...   block_id int64, input_ids list<int32>, source string, doc_id string
    val/part-00000.parquet ...     (no files when there is no validation split)
    tokenizer/                     AutoTokenizer.from_pretrained loads it
    metadata.json, config.yaml, _COMPLETE (written last)

Training workers, the scoring pass and reports read it back with the functions below.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

BLOCK_ID, INPUT_IDS, SOURCE, DOC_ID = "block_id", "input_ids", "source", "doc_id"
SCHEMA = pa.schema([(BLOCK_ID, pa.int64()), (INPUT_IDS, pa.list_(pa.int32())), (SOURCE, pa.string()),
                    (DOC_ID, pa.string())])
SPLITS = ("train", "val")
FORMAT_VERSION = 1
METADATA, CONFIG, COMPLETE, STAGING, TOKENIZER_DIR = "metadata.json", "config.yaml", "_COMPLETE", "_staging", "tokenizer"


class PrepareError(RuntimeError):
    """Preparation cannot go on (bad inputs, nothing usable, a mismatched output); the message says why."""




def is_complete(data_dir: str | Path) -> bool:
    return (Path(data_dir) / COMPLETE).is_file()


def tokenizer_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / TOKENIZER_DIR


def load_metadata(data_dir: str | Path) -> dict[str, Any]:
    data_dir = Path(data_dir)
    if not is_complete(data_dir):
        hint = ("a preparation there did not finish; re-run `lfr-ray prepare` to resume it"
                if (data_dir / STAGING).exists() else "run `lfr-ray prepare` first")
        raise PrepareError(f"no prepared data at {data_dir} (no {COMPLETE} marker): {hint}")
    meta = json.loads((data_dir / METADATA).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise PrepareError(f"{data_dir} was prepared in format version {meta.get('format_version')}, this "
                           f"version reads {FORMAT_VERSION}: re-run `lfr-ray prepare --force`")
    return meta


def read_blocks(data_dir: str | Path, split: str, columns: Optional[Sequence[str]] = None) -> pa.Table:
    """All blocks of ``split`` (``train`` or ``val``) as one table sorted by ``block_id``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    load_metadata(data_dir)  # refuses an unfinished directory
    cols = list(columns) if columns is not None else SCHEMA.names
    read_cols = cols if BLOCK_ID in cols else [BLOCK_ID, *cols]
    files = sorted((Path(data_dir) / split).glob("part-*.parquet"))
    if not files:
        return SCHEMA.empty_table().select(cols)
    table = pa.concat_tables([pq.read_table(f, columns=read_cols) for f in files])
    ids = table.column(BLOCK_ID)
    if len(ids) > 1 and not pc.all(pc.greater(ids[1:], ids[:-1])).as_py():
        table = table.sort_by(BLOCK_ID)
    return table.select(cols)


def load_block_arrays(data_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens int32 [N, block_len + 1], sources str [N])``, row i holding block_id i."""
    width = load_metadata(data_dir)["block_len"] + 1
    table = read_blocks(data_dir, split, [BLOCK_ID, INPUT_IDS, SOURCE])
    n = table.num_rows
    if not np.array_equal(table.column(BLOCK_ID).to_numpy(), np.arange(n)):
        raise PrepareError(f"block ids of {data_dir}/{split} are not 0..{n - 1}: the directory is damaged; "
                           f"re-run `lfr-ray prepare --force`")
    chunks = [c.flatten().to_numpy() for c in table.column(INPUT_IDS).chunks]
    tokens = np.concatenate(chunks).astype(np.int32, copy=False) if chunks else np.zeros(0, np.int32)
    sources = np.array(table.column(SOURCE).to_pylist(), dtype=str) if n else np.zeros(0, dtype=str)
    return tokens.reshape(n, width), sources
