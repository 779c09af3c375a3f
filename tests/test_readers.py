"""Readers: every input format yields the same documents; every kind of bad record is counted and located."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lfr_ray.config import DataConfig
from lfr_ray.readers import InputError, SkipLog, list_input_files, plan_units, read_docs

pytestmark = pytest.mark.timeout(60)

ROWS = [{"id": f"doc-{i}", "text": f"document number {i}\nwith two lines", "source": "ab"[i % 2]} for i in range(10)]


def read_all(cfg: DataConfig, skips: SkipLog | None = None):
    skips = skips if skips is not None else SkipLog()
    return [d for u in plan_units(cfg) for d in read_docs(u, cfg, skips)], skips


def cfg_for(*inputs, **kw) -> DataConfig:
    return DataConfig(inputs=tuple(str(i) for i in inputs), val_frac=0, **kw)


def as_tuples(docs):
    return [(d.text, d.domain, d.doc_id) for d in docs]


EXPECTED = [(r["text"], r["source"], r["id"]) for r in ROWS]


def test_jsonl_plain_and_gzip(tmp_path):
    lines = "".join(json.dumps(r) + "\n" for r in ROWS)
    (tmp_path / "a.jsonl").write_text(lines)
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write(lines)
    for name in ("a.jsonl", "b.jsonl.gz"):
        docs, skips = read_all(cfg_for(tmp_path / name))
        assert as_tuples(docs) == EXPECTED and skips.total == 0


def test_jsonl_without_id_or_domain_uses_fallbacks(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n\n{"text": "y", "source": null}\n')
    docs, _ = read_all(cfg_for(tmp_path / "a.jsonl"))
    assert as_tuples(docs) == [("x", "unknown", "a.jsonl:1"), ("y", "unknown", "a.jsonl:3")]


def test_parquet_split_into_row_ranges(tmp_path):
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "a.parquet", row_group_size=3)
    cfg = cfg_for(tmp_path / "a.parquet", rows_per_unit=4)
    units = plan_units(cfg)
    assert [(u.row_start, u.row_stop) for u in units] == [(0, 4), (4, 8), (8, 10)]
    docs, _ = read_all(cfg)
    assert as_tuples(docs) == EXPECTED


def test_parquet_without_id_column_uses_file_row(tmp_path):
    pq.write_table(pa.table({"text": ["a", "b"]}), tmp_path / "p.parquet")
    docs, _ = read_all(cfg_for(tmp_path / "p.parquet"))
    assert [d.doc_id for d in docs] == ["p.parquet:0", "p.parquet:1"]


def test_text_directory_one_document_per_file(tmp_path):
    for rel, text in [("bible/b.txt", "in the beginning"), ("bible/a.txt", "first"), ("code/x.txt", "def f"),
                      ("_SUCCESS", ""), (".hidden.txt", "no"), ("README.md", "ignored: unknown suffix")]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    docs, _ = read_all(cfg_for(tmp_path))
    assert as_tuples(docs) == [("first", "bible", "a.txt"), ("in the beginning", "bible", "b.txt"),
                               ("def f", "code", "x.txt")]


def test_hf_save_to_disk_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(ROWS)
    ds.save_to_disk(str(tmp_path / "hf"), num_shards=2)
    cfg = cfg_for(tmp_path / "hf", rows_per_unit=3)
    assert {u.format for u in plan_units(cfg)} == {"hf"}
    docs, _ = read_all(cfg)
    assert as_tuples(docs) == EXPECTED


def test_hf_dataset_dict_is_refused_with_a_hint(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(InputError, match="train"):
        list_input_files(str(tmp_path / "dd"))


def test_bad_jsonl_lines_are_counted_with_locations(tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = [
        b'{"text": "good one"}',            # 1
        b'{"text": "unterminated',          # 2 bad_json
        b'[1, 2, 3]',                       # 3 not_object
        b'{"body": "no text key"}',         # 4 missing_text
        b'{"text": 42}',                    # 5 missing_text
        b'{"text": "   \\n\\t "}',          # 6 empty_text
        b'{"text": "caf\xe9 latin-1"}',     # 7 bad_utf8
        b'{"text": "lone \\ud800 surrogate"}',  # 8 bad_utf8
        b'',                                # 9 blank: not a record
        b'\x00\xff\xfe binary junk',        # 10 bad_utf8
        b'{"text": "good two"}',            # 11
        b'"just a string"',                 # 12 not_object
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    skips = SkipLog(max_locations=1)
    docs, _ = read_all(cfg_for(path), skips)
    assert [d.text for d in docs] == ["good one", "good two"]
    assert skips.counts == {"bad_json": 1, "not_object": 2, "missing_text": 2, "empty_text": 1, "bad_utf8": 3}
    assert skips.locations["bad_utf8"] == [f"{path}:7"]  # only the first, as max_locations says
    assert skips.locations["missing_text"] == [f"{path}:4"]


def test_bad_parquet_values_are_counted(tmp_path):
    text = pa.array([b"fine", b"\xff\xfe", None, b"  ", b"also fine"], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"text": text}), tmp_path / "s.parquet")
    pq.write_table(pa.table({"text": pa.array([b"bytes"], pa.binary())}), tmp_path / "b.parquet")
    skips = SkipLog()
    docs, _ = read_all(cfg_for(tmp_path / "s.parquet", tmp_path / "b.parquet"), skips)
    assert [d.text for d in docs] == ["fine", "also fine"]
    assert skips.counts == {"bad_utf8": 1, "missing_text": 2, "empty_text": 1}
    assert skips.locations["bad_utf8"] == [f"{tmp_path / 's.parquet'}:1"]
    assert skips.locations["missing_text"] == [f"{tmp_path / 's.parquet'}:2", f"{tmp_path / 'b.parquet'}:0"]


def test_bad_utf8_text_file_is_skipped(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "ok.txt").write_text("fine")
    (tmp_path / "d" / "bad.txt").write_bytes(b"line one\nline \xff two\n")
    skips = SkipLog()
    docs, _ = read_all(cfg_for(tmp_path / "d"), skips)
    assert [d.text for d in docs] == ["fine"]
    assert skips.locations == {"bad_utf8": [f"{tmp_path / 'd' / 'bad.txt'}:2"]}


def test_corrupt_parquet_names_the_file(tmp_path):
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(InputError, match="broken.parquet"):
        plan_units(cfg_for(tmp_path / "broken.parquet"))


def test_truncated_gzip_names_the_file(tmp_path):
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in ROWS * 50).encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.jsonl.gz"):
        read_all(cfg_for(tmp_path / "cut.jsonl.gz"))


def test_unknown_suffix_and_missing_input(tmp_path):
    (tmp_path / "notes.csv").write_text("a,b\n")
    with pytest.raises(InputError, match="data.format"):
        plan_units(cfg_for(tmp_path / "notes.csv"))
    with pytest.raises(InputError, match="not found"):
        list_input_files(str(tmp_path / "missing.jsonl"))


def test_units_are_ordered_by_input_then_path(tmp_path):
    for rel in ("t/b.jsonl", "t/a.jsonl", "t/c.jsonl", "v/val.jsonl"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_text('{"text": "x"}\n')
    cfg = DataConfig(inputs=(str(tmp_path / "t" / "c.jsonl"), str(tmp_path / "t")), val_inputs=(str(tmp_path / "v"),))
    units = plan_units(cfg)
    assert [u.path.rsplit("/", 1)[1] for u in units] == ["c.jsonl", "a.jsonl", "b.jsonl", "c.jsonl", "val.jsonl"]
    assert [u.role for u in units] == ["train"] * 4 + ["val"]  # with val_inputs nothing is held out of train
    assert [u.unit_idx for u in units] == list(range(5))
    split_cfg = DataConfig(inputs=(str(tmp_path / "t"),), val_frac=0.1)
    assert {u.role for u in plan_units(split_cfg)} == {"split"}
