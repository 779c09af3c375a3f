"""Selection strategies: what they pick, tie-breaking, NaN handling, determinism, sampling law."""

from __future__ import annotations

import numpy as np
import pytest

from lfr_ray.selection import (
    composition,
    num_keep,
    select_diverse,
    select_forgotten_first,
    select_hardest,
    select_sample,
)


def reference_hardest(loss: np.ndarray, k: int) -> np.ndarray:
    """Sort by (NaN first, loss descending, block_id ascending) and take k: slow but obviously right."""
    key = np.where(np.isnan(loss), np.inf, loss)
    order = np.lexsort((np.arange(loss.size), -key))
    return np.sort(order[:k])


def test_num_keep():
    assert num_keep(10, 0.5) == 5
    assert num_keep(10, 0.01) == 1
    assert num_keep(10, 1.0) == 10
    assert num_keep(1000, 0.3333) == 333
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="keep_frac"):
            num_keep(10, bad)
    with pytest.raises(ValueError, match="num_blocks"):
        num_keep(0, 0.5)


@pytest.mark.parametrize("keep_frac", [0.01, 0.3, 0.5, 0.99, 1.0])
def test_hardest_are_the_highest(keep_frac):
    rng = np.random.default_rng(1)
    loss = rng.normal(size=1000).astype(np.float32)
    ids = select_hardest(loss, keep_frac)
    k = num_keep(1000, keep_frac)
    assert ids.dtype == np.int64 and ids.size == k and np.all(np.diff(ids) > 0)
    rest = np.setdiff1d(np.arange(1000), ids)
    if rest.size:
        assert loss[ids].min() >= loss[rest].max()
    np.testing.assert_array_equal(ids, reference_hardest(loss, k))


def test_hardest_ties_go_to_the_lower_block_id():
    np.testing.assert_array_equal(select_hardest(np.ones(6, np.float32), 0.5), [0, 1, 2])
    loss = np.array([1, 3, 2, 3, 2, 2, 0], np.float32)  # k=4: both 3s, then the first two 2s
    np.testing.assert_array_equal(select_hardest(loss, 4 / 7), [1, 2, 3, 4])
    rng = np.random.default_rng(2)
    coarse = rng.integers(0, 4, size=500).astype(np.float32)  # heavy ties
    np.testing.assert_array_equal(select_hardest(coarse, 0.37), reference_hardest(coarse, num_keep(500, 0.37)))


def test_never_recorded_counts_as_hardest():
    loss = np.array([5.0, np.nan, 1.0, np.nan, 9.0], np.float32)
    np.testing.assert_array_equal(select_hardest(loss, 0.4), [1, 3])
    np.testing.assert_array_equal(select_hardest(loss, 0.6), [1, 3, 4])
    np.testing.assert_array_equal(select_sample(loss, 0.4, temperature=1.0, seed=3), [1, 3])
    np.testing.assert_array_equal(select_forgotten_first(loss, np.full(5, np.nan), 0.6), [1, 3, 4])
    ids, _ = select_diverse(loss, 0.4, np.zeros(5, np.int64))
    np.testing.assert_array_equal(ids, [1, 3])


def test_every_strategy_is_deterministic_and_returns_sorted_int64():
    rng = np.random.default_rng(4)
    loss = rng.normal(size=300).astype(np.float32)
    previous = rng.normal(size=300).astype(np.float32)
    groups = rng.integers(0, 5, size=300)
    calls = [
        lambda seed: select_hardest(loss, 0.2, seed=seed),
        lambda seed: select_sample(loss, 0.2, temperature=1.0, seed=seed),
        lambda seed: select_sample(loss, 0.2, temperature=np.inf, seed=seed),
        lambda seed: select_diverse(loss, 0.2, groups, seed=seed)[0],
        lambda seed: select_forgotten_first(loss, previous, 0.2, seed=seed),
    ]
    for call in calls:
        ids = call(7)
        assert ids.dtype == np.int64 and ids.size == 60 and np.all(np.diff(ids) > 0)
        np.testing.assert_array_equal(ids, call(7))
    assert not np.array_equal(calls[1](7), calls[1](8))


def test_sample_at_infinite_temperature_is_uniform():
    # 20 blocks with very unequal losses, keep 5: each block should be in 25% of 4000 seeded draws.
    # Binomial sd = sqrt(.25 * .75 / 4000) = 0.0068; the tolerance 0.03 is 4.4 sd, and a sampler that
    # let the loss matter even slightly (hardest block always in) would fail it.
    loss = np.linspace(0, 50, 20).astype(np.float32)
    hits = np.zeros(20)
    trials = 4000
    for seed in range(trials):
        hits[select_sample(loss, 0.25, temperature=np.inf, seed=seed)] += 1
    np.testing.assert_allclose(hits / trials, 0.25, atol=0.03)


def test_sample_follows_softmax_of_standardized_loss():
    # k = 1: P(block) = softmax(z / T) exactly.
    loss = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    z = (loss - loss.mean()) / loss.std()
    temperature = 1.5
    expected = np.exp(z / temperature) / np.exp(z / temperature).sum()
    hits = np.zeros(4)
    trials = 4000
    for seed in range(trials):
        hits[select_sample(loss, 0.25, temperature=temperature, seed=seed)] += 1
    np.testing.assert_allclose(hits / trials, expected, atol=0.03)  # sd <= 0.008


def test_sample_at_tiny_temperature_equals_hardest():
    rng = np.random.default_rng(5)
    loss = rng.permutation(1000).astype(np.float32)  # distinct losses
    hardest = select_hardest(loss, 0.1)
    for seed in range(5):
        np.testing.assert_array_equal(select_sample(loss, 0.1, temperature=1e-6, seed=seed), hardest)
    np.testing.assert_array_equal(select_sample(np.ones(8, np.float32), 0.5, temperature=0.0, seed=1), [0, 1, 2, 3])


def test_sample_rejects_bad_temperature():
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            select_sample(np.ones(4, np.float32), 0.5, temperature=bad, seed=0)


def test_diverse_quotas_sum_to_k_and_each_group_gets_its_hardest():
    # sizes 50, 30, 15, 5 of 100, k = 33: shares 16.5, 9.9, 4.95, 1.65 -> floors 16, 9, 4, 1 (30);
    # the 3 leftover go to the largest remainders .95, .9, .65 -> 16, 10, 5, 2.
    labels = np.repeat([7, -2, 100, 3], [50, 30, 15, 5])
    rng = np.random.default_rng(6)
    groups = rng.permutation(labels)
    loss = rng.normal(size=100).astype(np.float32)
    loss[groups == 3] -= 100  # the easiest group: select_hardest would take none of it
    ids, quotas = select_diverse(loss, 0.33, groups)
    assert quotas == {-2: 10, 3: 2, 7: 16, 100: 5}
    assert sum(quotas.values()) == ids.size == 33
    assert ids.dtype == np.int64 and np.all(np.diff(ids) > 0)
    for label, quota in quotas.items():
        members = np.flatnonzero(groups == label)
        chosen = np.intersect1d(ids, members)
        assert chosen.size == quota
        np.testing.assert_array_equal(chosen, members[reference_hardest(loss[members], quota)])
    assert not np.isin(np.flatnonzero(groups == 3), select_hardest(loss, 0.33)).any()


def test_diverse_with_string_labels_and_ties():
    groups = np.array(["b", "a", "b", "a", "b", "a"])
    ids, quotas = select_diverse(np.ones(6, np.float32), 0.5, groups)
    assert quotas == {"a": 2, "b": 1}  # equal remainders and sizes: the lower label wins
    np.testing.assert_array_equal(ids, [0, 1, 3])  # lowest ids within each group
    with pytest.raises(ValueError, match="one label per block"):
        select_diverse(np.ones(6, np.float32), 0.5, groups[:2])


def test_diverse_remainder_ties_prefer_the_larger_group():
    groups = np.array([0, 1, 1, 1, 2, 2, 2, 2, 2, 2])  # sizes 1, 3, 6; k = 5: shares .5, 1.5, 3
    _, quotas = select_diverse(np.zeros(10, np.float32), 0.5, groups)
    assert quotas == {0: 0, 1: 2, 2: 3}


def test_forgotten_first_ordering():
    latest = np.array([1.0, 9.0, 2.0, 8.0, 3.0, np.nan, 0.5], np.float32)
    previous = np.array([0.5, 9.5, 1.0, 7.0, 4.0, np.nan, 0.1], np.float32)
    # forgotten (latest > previous): 0 (1.0), 2 (2.0), 3 (8.0), 6 (0.5); the rest: 5 (NaN), 1 (9.0), 4 (3.0)
    np.testing.assert_array_equal(select_forgotten_first(latest, previous, 2 / 7), [2, 3])
    np.testing.assert_array_equal(select_forgotten_first(latest, previous, 4 / 7), [0, 2, 3, 6])
    np.testing.assert_array_equal(select_forgotten_first(latest, previous, 5 / 7), [0, 2, 3, 5, 6])
    np.testing.assert_array_equal(select_forgotten_first(latest, previous, 6 / 7), [0, 1, 2, 3, 5, 6])
    with pytest.raises(ValueError, match="previous_loss must match"):
        select_forgotten_first(latest, previous[:3], 0.5)


def test_forgotten_first_ties_by_block_id():
    latest = np.full(6, 2.0, np.float32)
    previous = np.array([1, 3, 1, 3, 1, 3], np.float32)  # forgotten: 0, 2, 4
    np.testing.assert_array_equal(select_forgotten_first(latest, previous, 2 / 6), [0, 2])
    np.testing.assert_array_equal(select_forgotten_first(latest, previous, 4 / 6), [0, 1, 2, 4])


def test_composition():
    domains = np.array(["web", "code", "web", "books", "web"])
    assert composition(np.array([0, 1, 4]), domains) == {"code": 1, "web": 2}
    assert composition(np.array([], np.int64), domains) == {}


def test_selection_rejects_bad_losses():
    with pytest.raises(ValueError, match="float array"):
        select_hardest(np.arange(4), 0.5)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        select_hardest(np.ones((2, 2), np.float32), 0.5)
