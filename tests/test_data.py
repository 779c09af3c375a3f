"""Packing, one unit's processing, and ``prepare`` end to end (the latter on the shared Ray fixture)."""

from __future__ import annotations

import gzip
import json
import logging
import math
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lfr_ray import data
from lfr_ray.config import DataConfig
from lfr_ray.blocks import (
    BLOCK_ID, DOC_ID, INPUT_IDS, SOURCE, PrepareError, is_complete, load_block_arrays, load_metadata, read_blocks,
)
from lfr_ray.data import data_config_hash, prepare, process_unit
from lfr_ray.packing import Packer, in_val
from lfr_ray.readers import plan_units
from lfr_ray.tokenizer import encode_docs, load_tokenizer, save_tokenizer, tokenizer_hash, train_bpe

pytestmark = pytest.mark.timeout(120)

WORDS = "alpha beta gamma delta the of and to in code def return print ( ) : = 1 2 3".split()


def make_docs(n: int, seed: int = 0, domains=("bible", "code")) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"id": f"d{seed}-{i}", "source": domains[i % len(domains)],
             "text": " ".join(rng.choice(WORDS, size=rng.integers(5, 60)))} for i in range(n)]


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    save_tokenizer(train_bpe((d["text"] for d in make_docs(200)), vocab_size=300), out)
    return out


def tok_info(tok_dir) -> dict:
    tok = load_tokenizer(tok_dir)
    return {"path": str(tok_dir), "hash": tokenizer_hash(tok_dir), "eot_id": tok.eos_token_id,
            "vocab_size": len(tok)}


# --------------------------------------------------------------------------------------------
# Packing
# --------------------------------------------------------------------------------------------


def test_packing_keeps_every_token_once():
    rng = np.random.default_rng(0)
    for block_len in (1, 3, 8):
        width = block_len + 1
        docs = [rng.integers(1, 100, rng.integers(0, 25)) for _ in range(60)]
        doc_ids = [f"doc{i}" for i in range(len(docs))]
        packer, blocks, starts = Packer(block_len, eot_id=0), [], []
        for lo in range(0, len(docs), 7):  # arrive in batches, as they do from the tokenizer
            out = packer.add(docs[lo:lo + 7], ["x"] * len(docs[lo:lo + 7]), doc_ids[lo:lo + 7])
            assert out.input_ids.shape[1:] == (width,) and out.input_ids.dtype == np.int32
            blocks.append(out.input_ids)
            starts += out.doc_ids
        stream = np.concatenate([np.append(d, 0) for d in docs])
        flat = np.concatenate(blocks).ravel()
        assert len(flat) + packer.tail_tokens == len(stream) and packer.tail_tokens < width
        assert np.array_equal(flat, stream[: len(flat)])
        token_doc = np.repeat(np.arange(len(docs)), [len(d) + 1 for d in docs])
        assert starts == [doc_ids[token_doc[i]] for i in range(0, len(flat), width)]


def test_majority_domain_and_ties_go_to_the_earlier_domain_in_the_block():
    packer = Packer(block_len=3, eot_id=0)  # blocks of 4 ids
    out = packer.add([[1, 2], [3, 4, 5, 6, 7], [9, 9, 9], [1], [2]],
                     ["x", "y", "y", "x", "y"], ["A", "B", "C", "D", "E"])
    # stream: 1 2 0 3 | 4 5 6 7 | 0 9 9 9 | 0 1 0 2 | 0   (EOT = 0)
    assert out.input_ids.tolist() == [[1, 2, 0, 3], [4, 5, 6, 7], [0, 9, 9, 9], [0, 1, 0, 2]]
    assert [packer.domains[i] for i in out.source_idx] == ["x", "y", "y", "y"]
    assert out.doc_ids == ["A", "B", "B", "C"]  # block 2 starts on B's EOT, block 3 on C's
    assert packer.tail_tokens == 1
    # x x y y: a tie; x comes first in the block even though y came first in the stream.
    packer = Packer(block_len=3, eot_id=0)
    out = packer.add([[5, 5, 5], [1], [2]], ["y", "x", "y"], ["A", "B", "C"])
    assert [packer.domains[i] for i in out.source_idx] == ["y", "x"]


def test_val_split_is_a_stable_hash():
    ids = [f"doc-{i}" for i in range(20_000)]
    chosen = [i for i in ids if in_val(i, 0.1)]
    assert chosen == [i for i in ids if in_val(i, 0.1)]
    assert abs(len(chosen) / len(ids) - 0.1) < 0.01
    assert not any(in_val(i, 0.0) for i in ids)


def test_config_hash_ignores_where_and_how_fast():
    base = DataConfig(inputs=("a.jsonl",))
    assert data_config_hash(base) == data_config_hash(DataConfig(inputs=("a.jsonl",), output_dir="x",
                                                                 num_cpus_per_task=2))
    assert data_config_hash(base) != data_config_hash(DataConfig(inputs=("a.jsonl",), block_len=64))


# --------------------------------------------------------------------------------------------
# One unit, no Ray
# --------------------------------------------------------------------------------------------


def test_process_unit_counts_tokens_and_is_not_redone(tmp_path, tok_dir):
    rows = make_docs(40)
    lines = [json.dumps(r) for r in rows[:20]] + ["{oops", '{"text": ""}'] + [json.dumps(r) for r in rows[20:]]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    cfg = DataConfig(inputs=(str(tmp_path / "in.jsonl"),), block_len=16, val_frac=0.0)
    (unit,) = plan_units(cfg)
    staging = tmp_path / "staging"
    staging.mkdir()
    report = process_unit(unit, cfg, str(staging), tok_info(tok_dir))
    assert report["docs_read"] == 42 and report["skipped"] == {"bad_json": 1, "empty_text": 1}
    assert report["error_locations"] == {"bad_json": [f"{tmp_path / 'in.jsonl'}:21"],
                                         "empty_text": [f"{tmp_path / 'in.jsonl'}:22"]}
    train = report["splits"]["train"]
    assert report["splits"]["val"]["num_blocks"] == 0 and report["splits"]["val"]["staging"] is None
    table = pq.read_table(staging / train["staging"])
    assert table.num_rows == train["num_blocks"] and train["num_tokens"] == 17 * train["num_blocks"]
    tok = load_tokenizer(tok_dir)
    stream = [t for ids in encode_docs(tok, [r["text"] for r in rows]) for t in ids + [tok.eos_token_id]]
    flat = [t for ids in table[INPUT_IDS].to_pylist() for t in ids]
    assert flat == stream[: len(flat)] and len(flat) + train["tail_tokens_dropped"] == len(stream)
    assert sum(d["tokens"] for d in train["per_domain"].values()) == train["num_tokens"]
    assert sum(d["blocks"] for d in train["per_domain"].values()) == train["num_blocks"]
    assert dict(Counter(table[SOURCE].to_pylist())) == {d: v["blocks"] for d, v in train["per_domain"].items()}

    mtime = (staging / "unit-00000.json").stat().st_mtime_ns
    assert process_unit(unit, cfg, str(staging), tok_info(tok_dir)) == report
    assert (staging / "unit-00000.json").stat().st_mtime_ns == mtime


def test_prepare_names_a_corrupt_parquet_file(tmp_path):
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 garbage")
    cfg = DataConfig(inputs=(str(tmp_path / "broken.parquet"),), output_dir=str(tmp_path / "out"))
    with pytest.raises(PrepareError, match="broken.parquet"):
        prepare(cfg, config_yaml="")


def test_prepare_with_no_usable_text_says_what_was_skipped(tmp_path):
    (tmp_path / "junk.jsonl").write_text('{"txt": "wrong key"}\nnot json\n{"text": "  "}\n')
    cfg = DataConfig(inputs=(str(tmp_path / "junk.jsonl"),), output_dir=str(tmp_path / "out"))
    with pytest.raises(PrepareError, match=r"3 record\(s\).*bad_json 1.*empty_text 1.*missing_text 1"):
        prepare(cfg, config_yaml="")


def test_read_back_refuses_an_unprepared_directory(tmp_path):
    assert not is_complete(tmp_path)
    with pytest.raises(PrepareError, match="run `lfr-ray prepare` first"):
        read_blocks(tmp_path, "train")


# --------------------------------------------------------------------------------------------
# prepare with Ray Data
# --------------------------------------------------------------------------------------------


def check_consistent(meta: dict, data_dir) -> None:
    width = meta["block_len"] + 1
    for split in ("train", "val"):
        s = meta[split]
        assert s["num_tokens"] == s["num_blocks"] * width
        for key, total in (("docs", "num_docs"), ("tokens", "num_tokens"), ("blocks", "num_blocks")):
            assert sum(d[key] for d in s["per_domain"].values()) == s[total], (split, key)
        table = read_blocks(data_dir, split)
        assert table.schema.names == [BLOCK_ID, INPUT_IDS, SOURCE, DOC_ID]
        assert table.schema.field(BLOCK_ID).type == pa.int64()
        assert table.schema.field(INPUT_IDS).type == pa.list_(pa.int32())
        assert table[BLOCK_ID].to_pylist() == list(range(s["num_blocks"]))
        sources = Counter(table[SOURCE].to_pylist())
        assert dict(sources) == {d: v["blocks"] for d, v in s["per_domain"].items() if v["blocks"]}
    kept = meta["train"]["num_docs"] + meta["val"]["num_docs"]
    assert kept + sum(meta["skipped"].values()) == meta["docs_read"]


@pytest.mark.ray  # about 7 s on 2 cores (plus the session's Ray start)
def test_prepare_demo_corpus(ray_cluster, tmp_path, caplog):
    out = tmp_path / "demo"
    cfg = DataConfig(output_dir=str(out), block_len=64, vocab_size=1024, tokenizer_train_chars=200_000)
    meta = prepare(cfg, config_yaml="data: {}\n", progress=False)
    assert is_complete(out) and (out / "config.yaml").read_text() == "data: {}\n"
    assert not (out / "_staging").exists()
    assert meta == load_metadata(out)
    assert meta["domains"] == ["bible", "fortunes", "pycode", "pydoc"]
    assert meta["docs_read"] == 1545 and sum(meta["skipped"].values()) == 0
    assert meta["tokenizer"]["vocab_size"] == 1024 and meta["tokenizer"]["eot_id"] == 0
    check_consistent(meta, out)
    assert 0.01 < meta["val"]["num_docs"] / meta["docs_read"] < 0.04

    # Validation documents are whole documents, never also in train.
    train_docs, val_docs = (set(read_blocks(out, s, [DOC_ID])[DOC_ID].to_pylist()) for s in ("train", "val"))
    assert val_docs and not train_docs & val_docs and all(in_val(d, cfg.val_frac) for d in val_docs)

    # The baseline is a real cross-entropy: above 0, below the uniform distribution's log(V).
    assert 1.0 < meta["unigram_loss"] < math.log(1024)

    tokens, sources = load_block_arrays(out, "train")
    assert tokens.shape == (meta["train"]["num_blocks"], 65) and tokens.dtype == np.int32
    assert len(sources) == len(tokens) and set(sources) == set(meta["domains"])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    assert tok.decode(tokens[0]).count("<|endoftext|>") == int((tokens[0] == 0).sum())

    # A second run over the complete output does nothing.
    shards = sorted(out.glob("*/part-*.parquet"))
    mtimes = [p.stat().st_mtime_ns for p in shards]
    caplog.set_level(logging.INFO, logger="lfr_ray.data")
    assert prepare(cfg, config_yaml="data: {}\n", progress=False) == meta
    assert "already prepared at" in caplog.text and "use --force to redo" in caplog.text
    assert [p.stat().st_mtime_ns for p in shards] == mtimes

    # Another data config over the same output is refused, naming what changed.
    with pytest.raises(PrepareError, match="block_len"):
        prepare(DataConfig(output_dir=str(out), block_len=32, vocab_size=1024, tokenizer_train_chars=200_000),
                config_yaml="", progress=False)


@pytest.mark.ray
def test_prepare_bad_inputs_resume_and_force(ray_cluster, tmp_path, tok_dir, caplog, monkeypatch):
    monkeypatch.setattr(data, "TARGET_SHARD_BYTES", 17 * 4 * 50)  # ~50 blocks per shard: several shards
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_jsonl(corpus / "a.jsonl", make_docs(40, seed=1))
    pq.write_table(pa.Table.from_pylist(make_docs(30, seed=2, domains=("code", "legal"))), corpus / "b.parquet")
    bad = [json.dumps(r) for r in make_docs(10, seed=3)]
    bad[2], bad[5] = "{not json", '{"text": null}'
    (corpus / "c.jsonl").write_text("\n".join(bad) + "\n" + '{"text": "\\u0000\\ud800"}\n')
    good_z = gzip.compress("".join(json.dumps(r) + "\n" for r in make_docs(20, seed=4)).encode())
    (corpus / "z.jsonl.gz").write_bytes(good_z[: len(good_z) // 2])  # truncated: fails inside its task
    out = tmp_path / "out"
    cfg = DataConfig(inputs=(str(corpus),), output_dir=str(out), tokenizer=str(tok_dir), block_len=16,
                     val_frac=0.2, rows_per_unit=10, max_error_locations=1)
    assert len(plan_units(cfg)) == 6  # a.jsonl, b.parquet x3, c.jsonl, z.jsonl.gz

    with pytest.raises(PrepareError, match="z.jsonl.gz"):
        prepare(cfg, config_yaml="", progress=False)
    assert sorted(p.name for p in (out / "_staging").glob("unit-*.json")) == [
        f"unit-{i:05d}.json" for i in range(5)]

    (corpus / "z.jsonl.gz").write_bytes(good_z)
    caplog.set_level(logging.INFO, logger="lfr_ray.data")
    meta = prepare(cfg, config_yaml="", progress=False)
    assert "5 of 6 units already done" in caplog.text
    check_consistent(meta, out)
    num_shards = meta["train"]["num_shards"]
    assert num_shards > 2 and len(list((out / "train").glob("part-*.parquet"))) == num_shards
    assert meta["docs_read"] == 40 + 30 + 11 + 20
    assert meta["skipped"] == {"bad_json": 1, "not_object": 0, "missing_text": 1, "empty_text": 0, "bad_utf8": 1}
    assert meta["error_locations"] == {"bad_json": [f"{corpus / 'c.jsonl'}:3"],
                                       "missing_text": [f"{corpus / 'c.jsonl'}:6"],
                                       "bad_utf8": [f"{corpus / 'c.jsonl'}:11"]}
    assert set(meta["domains"]) == {"bible", "code", "legal"}
    assert meta["tokenizer"]["name"] == str(tok_dir)

    before = read_blocks(out, "train"), read_blocks(out, "val")
    meta2 = prepare(cfg, config_yaml="", force=True, progress=False)
    assert (read_blocks(out, "train"), read_blocks(out, "val")) == before  # same input, same ids
    timing = ("elapsed_s", "stage_s")
    assert {k: v for k, v in meta2.items() if k not in timing} == {k: v for k, v in meta.items() if k not in timing}


@pytest.mark.ray
def test_prepare_with_nothing_usable_raises(ray_cluster, tmp_path, tok_dir):
    write_jsonl(tmp_path / "tiny.jsonl", [{"text": "too short"}, {"text": ""}, {"body": "x"}])
    cfg = DataConfig(inputs=(str(tmp_path / "tiny.jsonl"),), output_dir=str(tmp_path / "out"),
                     tokenizer=str(tok_dir), block_len=64, val_frac=0)
    with pytest.raises(PrepareError, match=r"no training blocks: read 3 documents.*empty_text 1.*missing_text 1"):
        prepare(cfg, config_yaml="", progress=False)
    assert not is_complete(tmp_path / "out")
