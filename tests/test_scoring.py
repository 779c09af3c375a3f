"""The scoring pass: exact per-block losses, every block exactly once, resume, clustering, and the
selection strategies wired through the coordinator; one LFR run with a scoring phase."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from lfr_ray.clustering import kmeans_assign, kmeans_fit
from lfr_ray.config import ConfigError, ModelConfig, ScoringConfig, load_config
from lfr_ray.coordinator import Coordinator
from lfr_ray.modeling import build_model
from lfr_ray.paths import RunPaths
from lfr_ray.scoring import (
    BLOCK_ID,
    COMPLETE,
    FEATURE,
    LOSS,
    PartWriter,
    ScoringError,
    feature_projection,
    finished_parts,
    part_path,
    read_scores,
    resource_shortfall,
    score_batch,
)
from lfr_ray.selection import num_keep

TINY = ModelConfig(arch="llama", hidden_size=32, num_layers=2, num_heads=2)


def plain_loop_losses(model: torch.nn.Module, tokens: np.ndarray) -> np.ndarray:
    """The reference: one block at a time, transformers' own shifted-label loss, no lfr_ray code."""
    out = np.empty(len(tokens), dtype=np.float32)
    with torch.no_grad():
        for i, block in enumerate(tokens):
            ids = torch.from_numpy(block.astype(np.int64))[None]
            out[i] = model(input_ids=ids, labels=ids).loss.item()
    return out


def _tiny_model(vocab_size: int = 300, block_len: int = 16, seed: int = 1) -> torch.nn.Module:
    return build_model(TINY, vocab_size=vocab_size, block_len=block_len, eos_token_id=0, seed=seed).eval()


# --------------------------------------------------------------------------------------------- pure


def test_score_batch_equals_a_plain_loop_in_float32():
    model = _tiny_model()
    tokens = np.random.default_rng(0).integers(0, 300, size=(23, 17)).astype(np.int32)
    losses = np.concatenate([score_batch(model, torch.from_numpy(tokens[i : i + 8]).long())[0]
                             for i in range(0, len(tokens), 8)])
    np.testing.assert_allclose(losses, plain_loop_losses(model, tokens), rtol=0, atol=1e-5)
    # Asking for features does not change the loss.
    loss_f, feature = score_batch(model, torch.from_numpy(tokens).long(), projection=feature_projection(32, 4, 0))
    np.testing.assert_allclose(loss_f, losses, rtol=0, atol=1e-5)
    assert feature.shape == (23, 4) and feature.dtype == np.float32
    assert torch.equal(feature_projection(32, 4, 0), feature_projection(32, 4, 0))


def _table(ids, loss=None):
    import pyarrow as pa

    ids = np.asarray(ids, dtype=np.int64)
    loss = ids.astype(np.float32) / 10 if loss is None else loss
    return pa.table({BLOCK_ID: ids, LOSS: pa.array(loss, pa.float32())})


def test_part_writer_takes_rows_in_any_order_and_writes_each_part_once(tmp_path):
    # 25 blocks in parts of 10 (the last holds 5); rows arrive shuffled, in uneven batches, and a
    # retried task delivers some rows twice, also after their part was written.
    writer = PartWriter(tmp_path, 25, 10, {0, 1, 2})
    order = np.random.default_rng(0).permutation(25)
    batches = [order[:7], order[7:9], np.concatenate([order[9:15], order[3:6]]), order[15:], order[:4]]
    for b in batches:
        writer.add(_table(b))
    assert writer.missing() == []
    for p, (low, high) in enumerate([(0, 10), (10, 20), (20, 25)]):
        t = pq.read_table(part_path(tmp_path, p))
        assert t[BLOCK_ID].to_pylist() == list(range(low, high))
        np.testing.assert_allclose(t[LOSS].to_numpy(), np.arange(low, high) / 10)
    assert finished_parts(tmp_path, 25, 10) == {0, 1, 2}


def test_part_writer_waits_when_duplicates_fill_the_count(tmp_path):
    writer = PartWriter(tmp_path, 4, 4, {0})
    writer.add(_table([0, 1, 1, 2]))  # four rows, three ids: not complete yet
    assert writer.missing() == [0] and not part_path(tmp_path, 0).exists()
    writer.add(_table([3]))
    assert writer.missing() == [] and pq.read_table(part_path(tmp_path, 0))[BLOCK_ID].to_pylist() == [0, 1, 2, 3]


def test_finished_parts_deletes_a_damaged_part(tmp_path):
    writer = PartWriter(tmp_path, 20, 10, {0, 1})
    writer.add(_table(np.arange(20)))
    data = part_path(tmp_path, 1).read_bytes()
    part_path(tmp_path, 1).write_bytes(data[: len(data) // 2])  # torn
    assert finished_parts(tmp_path, 20, 10) == {0}
    assert not part_path(tmp_path, 1).exists()


def test_kmeans_is_seeded_and_finds_separated_clusters():
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [10, 0], [0, 10]], np.float32)
    truth = rng.integers(0, 3, 600)
    x = centers[truth] + rng.normal(scale=0.5, size=(600, 2)).astype(np.float32)
    c = kmeans_fit(x, 3, seed=1, iters=20)
    np.testing.assert_array_equal(c, kmeans_fit(x, 3, seed=1, iters=20))
    labels = kmeans_assign(x, c)
    # Each true cluster maps to exactly one label.
    assert all(len(set(labels[truth == t])) == 1 for t in range(3)) and len(set(labels)) == 3
    with pytest.raises(ValueError, match="at least k"):
        kmeans_fit(x[:2], 3, seed=0, iters=5)


def test_resource_shortfall_counts_training_workers_and_read_headroom():
    cfg = load_config("debug.yaml", ["scoring.num_cpus_per_actor=0.5", "scoring.min_actors=1"])
    assert resource_shortfall(cfg, {"CPU": 2.0}, beside_training=True) is None  # 1 + 0.5 + 0.25
    msg = resource_shortfall(cfg, {"CPU": 1.5}, beside_training=True)
    assert "scoring.min_actors=1" in msg and "1.75 CPUs" in msg
    assert resource_shortfall(cfg, {"CPU": 1.0}, beside_training=False) is None
    gpu = load_config("debug.yaml", ["scoring.num_gpus_per_actor=1", "scoring.min_actors=2",
                                       "scoring.max_actors=2"])
    assert "2 GPUs" in resource_shortfall(gpu, {"CPU": 8.0, "GPU": 1.0}, beside_training=False)


def test_phase_and_scoring_options_are_validated():
    ok = load_config("debug.yaml", ["schedule.phases.1.strategy=diverse", "schedule.phases.1.group_by=cluster",
                                    "schedule.phases.1.stats_source=both", "schedule.phases.3.strategy=sample",
                                    "schedule.phases.3.temperature=.inf"])
    assert ok.schedule.phases[3].temperature == float("inf") and ok.schedule.needs_scoring()
    assert not load_config("debug.yaml").schedule.needs_scoring()
    bad = {
        "schedule.phases.0.stats_source=score": "schedule.phases.0.stats_source",
        "schedule.phases.2.strategy=sample": "schedule.phases.2.strategy",
        "schedule.phases.1.group_by=cluster": "schedule.phases.1.group_by",
        "schedule.phases.1.temperature=-1": "schedule.phases.1.temperature",
        "schedule.phases.1.strategy=random": "schedule.phases.1.strategy",
        "scoring.max_actors=0": "scoring.max_actors",
        "scoring.num_gpus_per_actor=2": "scoring.num_gpus_per_actor",
    }
    for override, key in bad.items():
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config("debug.yaml", [override])
    with pytest.raises(ConfigError, match="stats_source"):  # clusters need this phase's scoring pass
        load_config("debug.yaml", ["schedule.phases.1.strategy=diverse", "schedule.phases.1.group_by=cluster"])


# ------------------------------------------------------------------- strategies through the coordinator


def _coordinator(tmp_path, n=200, seed=0):
    rng = np.random.default_rng(3)
    domains = np.array(["web"] * 120 + ["code"] * 60 + ["books"] * 20)
    c = Coordinator(str(tmp_path), n, domains, seed=seed)
    # Web is hard, books easy; then a second record where a third of the blocks got worse.
    first = np.concatenate([rng.normal(5, 0.3, 120), rng.normal(3, 0.3, 60), rng.normal(1, 0.3, 20)]).astype(np.float32)
    c.record(np.arange(n), first, phase_idx=0, step=0)
    second = first + np.where(rng.random(n) < 0.33, 0.5, -0.5).astype(np.float32)
    c.record(np.arange(n), second, phase_idx=1, step=10, source="score")
    return c


@pytest.mark.parametrize("strategy", ["hardest", "sample", "diverse", "forgotten-first"])
def test_each_strategy_writes_its_selection_and_is_deterministic(tmp_path, strategy):
    a, b = _coordinator(tmp_path / "a"), _coordinator(tmp_path / "b")
    ids = a.phase_blocks(2, "focus", 0.25, strategy=strategy, temperature=1.0)
    np.testing.assert_array_equal(ids, b.phase_blocks(2, "focus", 0.25, strategy=strategy, temperature=1.0))
    assert len(ids) == num_keep(200, 0.25) == 50
    info = json.loads((tmp_path / "a" / "selections" / "phase-02.json").read_text())
    assert info["strategy"] == strategy and info["num_blocks"] == 50
    assert sum(info["composition"].values()) == 50 and info["composition_all"] == {"books": 20, "code": 60, "web": 120}
    assert info["latest_loss_source"] == {"record": 0, "score": 50}  # the latest record of every block is a score
    assert a.stats.times_selected()[ids].tolist() == [1] * 50 and a.stats.times_selected().sum() == 50
    table = pq.read_table(RunPaths(tmp_path / "a").selection(2))
    assert table["block_id"].to_pylist() == ids.tolist()
    latest = a.stats.latest_loss()
    if strategy == "hardest":
        assert latest[ids].min() >= np.delete(latest, ids).max()
        assert info["composition"] == {"web": 50}  # hardest starves code and books
    if strategy == "diverse":
        # Quotas proportional to domain size (largest remainder): 30 / 15 / 5, each the domain's hardest.
        assert info["group_by"] == "domain" and info["quotas"] == {"books": 5, "code": 15, "web": 30}
        assert info["composition"] == info["quotas"]
        for d, q in info["quotas"].items():
            members = np.flatnonzero(a.domains == d)
            chosen = np.intersect1d(ids, members)
            assert len(chosen) == q and latest[chosen].min() >= latest[np.setdiff1d(members, chosen)].max()
    if strategy == "forgotten-first":
        forgotten = latest > a.stats.previous_loss()
        assert info["forgotten_selected"] == min(50, info["forgotten_available"]) == forgotten[ids].sum()
    if strategy == "sample":
        assert info["temperature"] == 1.0
        other = a.phase_blocks(3, "focus", 0.25, strategy="sample", temperature=1.0)
        assert not np.array_equal(ids, other)  # one seed per phase


def test_diverse_by_cluster_needs_labels_and_records_quotas(tmp_path):
    c = _coordinator(tmp_path)
    with pytest.raises(ValueError, match="cluster label"):
        c.phase_blocks(2, "focus", 0.2, strategy="diverse", group_by="cluster")
    groups = (np.arange(200) % 4).astype(np.int32)
    ids = c.phase_blocks(2, "focus", 0.2, strategy="diverse", group_by="cluster", groups=groups)
    info = json.loads((tmp_path / "selections" / "phase-02.json").read_text())
    assert info["quotas"] == {"0": 10, "1": 10, "2": 10, "3": 10} and info["cluster_sizes"]["0"] == 50
    assert np.bincount(groups[ids]).tolist() == [10, 10, 10, 10]
    assert pq.read_table(RunPaths(tmp_path).selection(2))["cluster"].to_pylist() == groups[ids].tolist()
    # Asked again (a resumed run), the written selection is read back without labels.
    np.testing.assert_array_equal(c.phase_blocks(2, "focus", 0.2, strategy="diverse", group_by="cluster"), ids)


# ------------------------------------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def scored(tmp_path_factory, ray_cluster):
    """The debug corpus, a checkpoint of a tiny model, and one complete pass with two actors and features."""
    from lfr_ray.blocks import load_block_arrays, load_metadata
    from lfr_ray.data import prepare
    from lfr_ray.scoring import score_blocks

    root = tmp_path_factory.mktemp("scoring")
    cfg = load_config("debug.yaml", [f"data.output_dir={root / 'blocks'}"])
    prepare(cfg.data, config_yaml=cfg.to_yaml(), progress=False)
    meta = load_metadata(cfg.data.output_dir)
    model = build_model(TINY, vocab_size=meta["tokenizer"]["vocab_size"], block_len=cfg.data.block_len,
                        eos_token_id=meta["tokenizer"]["eot_id"], seed=3).eval()
    (root / "ckpt").mkdir()
    torch.save(model.state_dict(), root / "ckpt" / "model.pt")
    # 1,011 blocks in parts of 100 (11 parts), 16 per batch; pool of 1 to 2 actors at 0.5 CPU beside
    # 0.25-CPU read tasks on the 2-CPU test cluster.
    scoring = ScoringConfig(batch_size=16, min_actors=1, max_actors=2, part_blocks=100, num_clusters=3)
    summary = score_blocks(cfg.data.output_dir, root / "ckpt", TINY, scoring, root / "out", with_features=True,
                           progress=False)
    tokens, _ = load_block_arrays(cfg.data.output_dir, "train")
    return {"root": root, "cfg": cfg, "model": model, "scoring": scoring, "summary": summary, "tokens": tokens}


@pytest.mark.ray
@pytest.mark.slow
def test_ray_pass_scores_every_block_once_and_equals_the_plain_loop(scored):
    tokens, summary = scored["tokens"], scored["summary"]
    table = read_scores(scored["root"] / "out", [BLOCK_ID, LOSS, FEATURE, "num_tokens", "source"])
    ids = table[BLOCK_ID].to_numpy()
    np.testing.assert_array_equal(ids, np.arange(len(tokens)))  # none lost, none duplicated, in order
    np.testing.assert_allclose(table[LOSS].to_numpy(), plain_loop_losses(scored["model"], tokens), rtol=0, atol=1e-5)
    assert summary["num_blocks"] == summary["blocks_scored_now"] == len(tokens)
    assert summary["num_tokens"] == len(tokens) * (tokens.shape[1] - 1) == int(table["num_tokens"].to_numpy().sum())
    assert summary["tokens_per_s"] > 0 and set(summary["blocks_by_domain"]) == set(table["source"].to_pylist())
    assert table[FEATURE].type.list_size == scored["scoring"].feature_dim
    assert pq.read_table(scored["root"] / "out").num_rows == len(tokens)  # the directory reads as one table
    assert not list((scored["root"] / "out").glob(".*tmp"))  # no temp files left


@pytest.mark.ray
@pytest.mark.slow
def test_crashed_pass_resumes_without_rescoring_finished_parts(scored):
    from lfr_ray.scoring import cluster_labels, score_blocks

    root, cfg, scoring = scored["root"], scored["cfg"], scored["scoring"]
    crashed = root / "crashed"
    shutil.copytree(root / "out", crashed)
    # What a crash leaves: no completion marker, some parts never written, one torn.
    (crashed / COMPLETE).unlink()
    for p in (0, 4, 10):
        part_path(crashed, p).unlink()
    torn = part_path(crashed, 7)
    torn.write_bytes(torn.read_bytes()[:100])
    kept = {p: os.stat(part_path(crashed, p)).st_mtime_ns for p in (1, 2, 3, 5, 6, 8, 9)}

    summary = score_blocks(cfg.data.output_dir, root / "ckpt", TINY, scoring, crashed, with_features=True,
                           progress=False)
    rescored = 3 * 100 + 11  # parts 0, 4, 7 and the 11-block last part
    assert summary["blocks_scored_now"] == rescored and summary["blocks_reused"] == 1011 - rescored
    assert {p: os.stat(part_path(crashed, p)).st_mtime_ns for p in kept} == kept  # finished parts untouched
    a, b = read_scores(root / "out"), read_scores(crashed)
    np.testing.assert_array_equal(a[BLOCK_ID].to_numpy(), b[BLOCK_ID].to_numpy())
    np.testing.assert_allclose(a[LOSS].to_numpy(), b[LOSS].to_numpy(), rtol=0, atol=1e-6)
    # A complete pass is returned as is; one made differently is refused, not mixed.
    assert score_blocks(cfg.data.output_dir, root / "ckpt", TINY, scoring, crashed, with_features=True,
                        progress=False)["blocks_scored_now"] == rescored
    with pytest.raises(ScoringError, match="feature_dim"):
        score_blocks(cfg.data.output_dir, root / "ckpt", TINY, scoring, crashed, with_features=False, progress=False)
    # Clusters of the features: seeded, one label per block, every cluster used.
    labels = cluster_labels(crashed, 1011, scoring, seed=0)
    np.testing.assert_array_equal(labels, cluster_labels(root / "out", 1011, scoring, seed=0))
    assert labels.shape == (1011,) and set(labels.tolist()) == {0, 1, 2}


@pytest.mark.ray
@pytest.mark.slow
def test_run_with_a_scoring_phase_resumes_its_pass_then_lfr_ray_score(scored, tmp_path):
    """learn -> focus (stats from a scoring pass at its start, diverse by k-means cluster). The run stops
    after learn; a scoring pass of the phase-end weights is left half done, as a crash would leave it;
    the continued run resumes from the phase-end checkpoint, scores only the missing parts, records
    every block's score exactly once, selects, trains. Then ``lfr-ray score`` on the exported model."""
    from lfr_ray.coordinator import read_history
    from lfr_ray.pipeline import run
    from lfr_ray.scoring import MODEL_DIR, score_blocks, score_checkpoint

    cfg = load_config("debug.yaml", [
        f"data.output_dir={scored['cfg'].data.output_dir}", f"run.root_dir={tmp_path}", "run.name=scored",
        "schedule.phases=[{kind: learn}, {kind: focus, keep_frac: 0.5, strategy: diverse, group_by: cluster, "
        "stats_source: score}]",
        "scoring.part_blocks=256", "scoring.batch_size=32", "scoring.num_clusters=4", "train.eval_every_steps=1000",
    ])
    n = len(scored["tokens"])
    learn_steps = -(-n // cfg.train.global_batch_blocks())
    paths = RunPaths(cfg.run.run_dir())
    run(cfg, stop_after_phase=0, verbose=False)

    out = paths.phase_scores(1)
    (out / MODEL_DIR).mkdir(parents=True)
    shutil.copy(paths.train_storage / f"checkpoint_{learn_steps:08d}" / "model.pt", out / MODEL_DIR / "model.pt")
    score_blocks(cfg.data.output_dir, out / MODEL_DIR, cfg.model, cfg.scoring, out, with_features=True,
                 seed=cfg.train.seed, progress=False)
    before = read_scores(out)
    (out / COMPLETE).unlink()
    part_path(out, 1).unlink()
    kept = {p: os.stat(part_path(out, p)).st_mtime_ns for p in (0, 2, 3)}

    run(cfg, verbose=False)
    assert {p: os.stat(part_path(out, p)).st_mtime_ns for p in kept} == kept  # finished parts not redone
    assert json.loads((out / COMPLETE).read_text())["blocks_scored_now"] == 256
    assert not (out / MODEL_DIR).exists()
    history = read_history(paths.root).to_pandas()
    scores = history[history.source == "score"]
    # Every block scored exactly once, at the focus phase's start step, recorded in that phase, with the
    # losses of the phase-end weights.
    assert sorted(scores.block_id) == list(range(n))
    assert set(scores.step) == {learn_steps} and set(scores.phase_idx) == {1}
    np.testing.assert_allclose(scores.sort_values("block_id").loss.to_numpy(), before[LOSS].to_numpy(), atol=1e-6)
    # stats_source=score: the focus phase's training pass recorded nothing.
    assert not ((history.phase_idx == 1) & (history.source == "record")).any()
    info = json.loads(paths.selection(1).with_suffix(".json").read_text())
    assert info["strategy"] == "diverse" and info["group_by"] == "cluster" and len(info["quotas"]) == 4
    assert sum(info["quotas"].values()) == num_keep(n, 0.5) and info["latest_loss_source"]["score"] == info["num_blocks"]
    assert info["latest_loss_step_range"] == [learn_steps, learn_steps]

    summary = score_checkpoint(cfg, verbose=False)  # `lfr-ray score`: the exported model of the complete run
    assert Path(summary["out_dir"]) == paths.scores / "model" and summary["num_blocks"] == n


@pytest.mark.ray
@pytest.mark.gpu
def test_gpu_pass_in_bf16_is_close_to_float32(scored):
    """One actor on one GPU with bf16 autocast: the same blocks, losses within bf16 rounding of float32."""
    import dataclasses

    from lfr_ray.scoring import score_blocks

    root = scored["root"]
    scoring = dataclasses.replace(scored["scoring"], num_gpus_per_actor=1.0, min_actors=1, max_actors=1)
    summary = score_blocks(scored["cfg"].data.output_dir, root / "ckpt", TINY, scoring, root / "gpu", progress=False)
    assert summary["num_blocks"] == len(scored["tokens"])
    gpu, cpu = read_scores(root / "gpu"), read_scores(root / "out")
    np.testing.assert_array_equal(gpu[BLOCK_ID].to_numpy(), cpu[BLOCK_ID].to_numpy())
    np.testing.assert_allclose(gpu[LOSS].to_numpy(), cpu[LOSS].to_numpy(), rtol=0, atol=0.05)
