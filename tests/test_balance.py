"""Distribution-aware resampling: weights, intended shares, and what the sampler really draws."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from bmglib.diffusion import balance

# Fitzpatrick17k-like skew: one big cell, then 50, 10 and a 3-image rare cell; plus unknown FST.
CELLS = {(2, "nevus"): 100, (3, "other"): 50, (5, "seborrheic_keratosis"): 10, (6, "melanoma"): 3}
N_UNKNOWN = 20
N_KNOWN = sum(CELLS.values())


def _table() -> pd.DataFrame:
    rows = [(f, les) for (f, les), n in CELLS.items() for _ in range(n)]
    rows += [(-1, "nevus")] * N_UNKNOWN
    rng = np.random.default_rng(0)
    rows = [rows[i] for i in rng.permutation(len(rows))]  # cells interleaved, not in blocks
    df = pd.DataFrame(rows, columns=["fitzpatrick_scale", "lesion"])
    df.index = df.index * 10 + 7  # non-positional labels: the sampler must yield positions
    return df


def _cell_of(df: pd.DataFrame) -> np.ndarray:
    return np.array([f"{f}/{les}" for f, les in zip(df["fitzpatrick_scale"], df["lesion"], strict=True)])


def _drawn_shares(df: pd.DataFrame, idx: np.ndarray) -> pd.Series:
    return pd.Series(_cell_of(df)[idx]).value_counts(normalize=True)


def _as_keyed(expected: pd.Series) -> pd.Series:
    s = expected[expected > 0]
    return pd.Series(s.to_numpy(), index=[f"{f}/{les}" for f, les in s.index])


def _tv(p: pd.Series, q: pd.Series) -> float:
    keys = p.index.union(q.index)
    return 0.5 * float((p.reindex(keys, fill_value=0) - q.reindex(keys, fill_value=0)).abs().sum())


def _hand_shares(alpha: float) -> dict:
    mass = {k: n ** (1 - alpha) for k, n in CELLS.items()}
    return {f"{f}/{les}": m / sum(mass.values()) for (f, les), m in mass.items()}


def test_cell_counts_full_grid_known_only():
    c = balance.cell_counts(_table())
    assert c.index.names == ["fitzpatrick_scale", "lesion"]
    assert len(c) == 24 and int(c.sum()) == N_KNOWN  # unknown-FST rows not counted
    for key, n in CELLS.items():
        assert c[key] == n
    assert c[(1, "melanoma")] == 0


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_expected_distribution_matches_formula(alpha):
    exp = _as_keyed(balance.expected_cell_distribution(_table(), alpha))
    hand = pd.Series(_hand_shares(alpha))
    assert np.allclose(exp.reindex(hand.index).to_numpy(), hand.to_numpy())
    assert set(exp.index) == set(hand.index)  # empty cells get no share


def test_alpha0_is_natural_and_alpha1_is_balanced():
    df = _table()
    w0 = balance.sample_weights(df, 0.0)
    known = (df["fitzpatrick_scale"] != -1).to_numpy()
    assert np.allclose(w0[known], 1 / N_KNOWN) and np.all(w0[~known] == 0)
    exp0 = _as_keyed(balance.expected_cell_distribution(df, 0.0))
    assert exp0["2/nevus"] == pytest.approx(100 / N_KNOWN)
    exp1 = _as_keyed(balance.expected_cell_distribution(df, 1.0))
    assert np.allclose(exp1.to_numpy(), 0.25)
    w1 = balance.sample_weights(df, 1.0)
    rare = (df["fitzpatrick_scale"] == 6).to_numpy()
    assert w1.sum() == pytest.approx(1.0) and np.allclose(w1[rare], 0.25 / 3)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_drawn_cell_frequencies_converge(alpha):
    df = _table()
    sampler = balance.CellBalancedSampler(df, alpha, num_samples=20_000, seed=1)
    idx = np.fromiter(iter(sampler), dtype=np.int64)
    assert len(idx) == len(sampler) == 20_000
    drawn = _drawn_shares(df, idx)
    assert _tv(drawn, pd.Series(_hand_shares(alpha))) < 0.03
    if alpha == 1.0:  # images within the rare cell are drawn uniformly, too
        rare = np.flatnonzero((df["fitzpatrick_scale"] == 6).to_numpy())
        per_image = np.bincount(idx, minlength=len(df))[rare] / len(idx)
        assert np.allclose(per_image, 0.25 / 3, atol=0.01)


def test_unknown_fst_never_drawn_with_exclude():
    df = _table()
    unknown = np.flatnonzero((df["fitzpatrick_scale"] == -1).to_numpy())
    idx = balance.CellBalancedSampler(df, 1.0, num_samples=5_000).draw(0)
    assert not np.isin(idx, unknown).any()


def test_unknown_own_cell_is_one_extra_cell():
    df = _table()
    exp = balance.expected_cell_distribution(df, 1.0, unknown="own_cell")
    assert exp[(-1, balance.UNKNOWN_CELL_LESION)] == pytest.approx(0.2)  # 5 cells, balanced
    idx = balance.CellBalancedSampler(df, 1.0, num_samples=20_000, unknown="own_cell").draw(0)
    unknown = (df["fitzpatrick_scale"] == -1).to_numpy()
    assert unknown[idx].mean() == pytest.approx(0.2, abs=0.02)


def test_repeat_cap_never_exceeded_and_binds():
    df = _table()
    with pytest.warns(UserWarning, match="repeat_cap=4 binds"):
        sampler = balance.CellBalancedSampler(df, 1.0, repeat_cap=4, seed=3)
    rare = np.flatnonzero((df["fitzpatrick_scale"] == 6).to_numpy())
    for _ in range(5):
        idx = np.fromiter(iter(sampler), dtype=np.int64)
        counts = np.bincount(idx, minlength=len(df))
        assert len(idx) == len(df) and counts.max() <= 4
        # uncapped, each rare image would be drawn ~ len(df)/12 ≈ 15 times: the cap is reached
        assert np.all(counts[rare] == 4)


def test_repeat_cap_has_sequential_law():
    """Cap 1 = drawing without replacement ∝ weights: compare with the exact ordered-pair law."""
    w = np.array([0.6, 0.3, 0.1])
    exact = {(a, b): w[a] * w[b] / (1 - w[a]) for a, b in itertools.permutations(range(3), 2)}
    n = 4_000
    seen = pd.Series([tuple(balance.draw_capped(w, 2, 1, np.random.default_rng([5, i])))
                      for i in range(n)]).value_counts() / n
    assert _tv(seen, pd.Series(exact)) < 0.03


def test_impossible_cap_raises():
    df = _table()
    with pytest.raises(ValueError, match="repeat_cap"):  # 163 drawable images (unknown excluded)
        balance.CellBalancedSampler(df, 1.0, num_samples=N_KNOWN + 1, repeat_cap=1)
    with pytest.raises(ValueError, match="repeat_cap"):
        balance.CellBalancedSampler(df, 1.0, repeat_cap=0)
    balance.CellBalancedSampler(df, 0.0, num_samples=N_KNOWN, repeat_cap=1)  # just possible


def test_determinism_per_seed_and_epoch():
    df = _table()
    a = balance.CellBalancedSampler(df, 0.5, seed=7)
    b = balance.CellBalancedSampler(df, 0.5, seed=7)
    e0, e1 = list(a), list(a)  # iterating advances the epoch
    assert e0 != e1
    b.set_epoch(1)
    assert list(b) == e1
    b.set_epoch(0)
    assert list(b) == e0
    assert list(balance.CellBalancedSampler(df, 0.5, seed=8)) != e0


def test_bad_arguments():
    df = _table()
    with pytest.raises(ValueError, match="alpha"):
        balance.sample_weights(df, -0.5)
    with pytest.raises(ValueError, match="unknown"):
        balance.sample_weights(df, 1.0, unknown="drop")
    with pytest.raises(ValueError, match="lesion"):
        balance.sample_weights(df.assign(lesion="bcc"), 1.0)
    with pytest.raises(ValueError, match="no row"):
        balance.sample_weights(df[df["fitzpatrick_scale"] == -1], 1.0)
