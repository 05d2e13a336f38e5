"""Distribution-aware resampling: draw training images with weight ``n_cell^-α``.

Cells are FST × lesion (``fitzpatrick_scale`` × ``lesion``). An image in a cell of ``n`` images
gets weight ``n^-α``, so a cell receives a share of draws ∝ ``n^(1-α)``:

* ``α = 0`` — every image equally likely: the natural distribution of the table;
* ``α = 1`` — every non-empty cell equally likely: balanced cells;
* ``0 < α < 1`` — in between (α > 1 over-weights rare cells; allowed, rarely wise).

Rows of unknown FST (``fitzpatrick_scale == -1``) belong to no FST × lesion cell. With
``unknown="exclude"`` (default) they get weight 0 and are never drawn; with ``"own_cell"`` all of
them together form one extra cell, keyed ``(-1, UNKNOWN_CELL_LESION)``, weighted like any other.

:class:`CellBalancedSampler` draws an epoch of row positions with these weights for a
``DataLoader``, with an optional per-epoch repeat cap: at α = 1 the ~15 images of a rare cell would
otherwise each be seen dozens of times per epoch (memorisation risk). When the cap binds, the draws
it refuses go to the other images in proportion to their weights, so the rare cells then get
*less* than :func:`expected_cell_distribution` (the sampler warns when this is expected).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch

from bmglib.data import schema
from bmglib.data.splits import cell_table

UNKNOWN_POLICIES = ("exclude", "own_cell")
#: The ``lesion`` key of the one cell that holds every unknown-FST row under ``"own_cell"``.
UNKNOWN_CELL_LESION = "all"


def _check(df: pd.DataFrame, alpha: float, unknown: str) -> None:
    """Raise ``ValueError`` for a bad α, policy, FST or lesion value (never a silent drop)."""
    if not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    if unknown not in UNKNOWN_POLICIES:
        raise ValueError(f"unknown must be one of {UNKNOWN_POLICIES}, got {unknown!r}")
    for col in ("fitzpatrick_scale", "lesion"):
        if col not in df.columns:
            raise KeyError(f"the table needs a {col!r} column; found {list(df.columns)}")
    bad_fst = ~df["fitzpatrick_scale"].isin([schema.FST_UNKNOWN, *schema.FST_LEVELS])
    if bad_fst.any():
        raise ValueError(f"fitzpatrick_scale must be -1 or 1..6; bad values "
                         f"{sorted(set(df.loc[bad_fst, 'fitzpatrick_scale']))[:5]}")
    bad_lesion = ~df["lesion"].isin(schema.LESIONS)
    if bad_lesion.any():
        raise ValueError(f"lesion must be one of {schema.LESIONS}; bad values "
                         f"{sorted(set(df.loc[bad_lesion, 'lesion'].astype(str)))[:5]}")


def cell_counts(df: pd.DataFrame) -> pd.Series:
    """Images per FST × lesion cell, known FST only.

    Returns:
        int Series with a ``(fitzpatrick_scale, lesion)`` MultiIndex over all 6 × 4 cells of
        ``schema.FST_LEVELS`` × ``schema.LESIONS`` (empty cells are 0), FST-major order.
    """
    _check(df, 0.0, "exclude")
    return cell_table(df).stack().rename("n_images").astype(int)


def _row_cells(df: pd.DataFrame, unknown: str) -> tuple[pd.Series, np.ndarray]:
    """The cells and which rows belong to one.

    Returns ``(counts, in_cell)``: ``counts`` is :func:`cell_counts` (+ the unknown cell under
    ``"own_cell"``); ``in_cell`` is (len(df),) bool — False only for unknown FST under
    ``"exclude"``.
    """
    counts = cell_counts(df)
    n_unknown = int((df["fitzpatrick_scale"] == schema.FST_UNKNOWN).sum())
    if unknown == "own_cell":
        key = pd.MultiIndex.from_tuples([(schema.FST_UNKNOWN, UNKNOWN_CELL_LESION)],
                                        names=counts.index.names)
        counts = pd.concat([counts, pd.Series([n_unknown], index=key, name=counts.name)])
        in_cell = np.ones(len(df), dtype=bool)
    else:
        in_cell = (df["fitzpatrick_scale"] != schema.FST_UNKNOWN).to_numpy()
    return counts, in_cell


def _row_sizes(df: pd.DataFrame, counts: pd.Series) -> np.ndarray:
    """(len(df),) int: the size of each row's cell (unknown rows → the unknown cell, or 0)."""
    fst = df["fitzpatrick_scale"].to_numpy()
    lesion = np.where(fst == schema.FST_UNKNOWN, UNKNOWN_CELL_LESION, df["lesion"].to_numpy())
    keys = pd.MultiIndex.from_arrays([fst, lesion])
    return counts.reindex(keys, fill_value=0).to_numpy()


def sample_weights(df: pd.DataFrame, alpha: float, unknown: str = "exclude") -> np.ndarray:
    """Per-image draw probability ∝ ``n_cell^-α``.

    Args:
        df: a schema table (``fitzpatrick_scale`` in {-1, 1..6}, ``lesion`` in ``schema.LESIONS``).
        alpha: ≥ 0; 0 = natural distribution, 1 = balanced cells.
        unknown: ``"exclude"`` — unknown-FST rows get weight 0; ``"own_cell"`` — they form one
            extra cell.
    Returns:
        (len(df),) float64 in [0, 1], summing to 1, in ``df``'s row order.
    Raises:
        ValueError: bad ``alpha``/``unknown``/labels, or no row can be drawn.
    """
    _check(df, alpha, unknown)
    counts, in_cell = _row_cells(df, unknown)
    sizes = _row_sizes(df, counts).astype(float)
    w = np.zeros(len(df))
    w[in_cell] = sizes[in_cell] ** -float(alpha)
    if w.sum() <= 0:
        raise ValueError(f"no row can be drawn (unknown={unknown!r}, {len(df)} rows, "
                         f"{int(in_cell.sum())} in a cell)")
    return w / w.sum()


def expected_cell_distribution(df: pd.DataFrame, alpha: float,
                               unknown: str = "exclude") -> pd.Series:
    """The intended share of draws per cell: ``n^(1-α) / Σ n^(1-α)`` over non-empty cells.

    Returns:
        float Series over the index of :func:`cell_counts` (plus ``(-1, UNKNOWN_CELL_LESION)``
        under ``"own_cell"``), in [0, 1], summing to 1; empty cells get 0. A binding repeat cap in
        :class:`CellBalancedSampler` lowers the share of small cells below this.
    """
    _check(df, alpha, unknown)
    counts, _ = _row_cells(df, unknown)
    n = counts.to_numpy().astype(float)
    mass = np.zeros_like(n)
    mass[n > 0] = n[n > 0] ** (1.0 - float(alpha))
    if mass.sum() <= 0:
        raise ValueError("no row can be drawn: every cell is empty")
    return pd.Series(mass / mass.sum(), index=counts.index, name="share")


def draw_shares(df: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """:func:`expected_cell_distribution` of the natural mix (α = 0) and of ``alpha`` side by
    side: one row per FST × lesion cell, columns ``natural`` and ``alpha=<alpha>``."""
    return pd.concat({"natural": expected_cell_distribution(df, 0.0),
                      f"alpha={alpha}": expected_cell_distribution(df, alpha)}, axis=1)


def _rank_within(draws: np.ndarray) -> np.ndarray:
    """For each position, how many earlier positions hold the same value (0, 1, 2, ...)."""
    order = np.argsort(draws, kind="stable")
    s = draws[order]
    pos = np.arange(len(s))
    first = np.r_[True, s[1:] != s[:-1]]
    start = np.maximum.accumulate(np.where(first, pos, 0))
    rank = np.empty_like(pos)
    rank[order] = pos - start
    return rank


def draw_capped(weights: np.ndarray, num_samples: int, repeat_cap: int | None,
                rng: np.random.Generator) -> np.ndarray:
    """``num_samples`` indices drawn with replacement ∝ ``weights``, none more than ``repeat_cap``.

    Same law as drawing one at a time and zeroing (then renormalising) an image's weight once it
    has been drawn ``repeat_cap`` times; done in rounds: each round draws all missing indices from
    the weights of the images not yet capped and keeps, in order, those that do not overshoot.

    Returns:
        (num_samples,) int64 in [0, len(weights)).
    """
    n = len(weights)
    if repeat_cap is None:
        return rng.choice(n, size=num_samples, p=weights)
    counts = np.zeros(n, dtype=np.int64)
    out: list[np.ndarray] = []
    left = num_samples
    while left > 0:
        p = np.where(counts < repeat_cap, weights, 0.0)
        draws = rng.choice(n, size=left, p=p / p.sum())
        keep = draws[counts[draws] + _rank_within(draws) < repeat_cap]  # the first always fits
        counts += np.bincount(keep, minlength=n)
        out.append(keep)
        left -= len(keep)
    return np.concatenate(out).astype(np.int64)


class CellBalancedSampler(torch.utils.data.Sampler[int]):
    """Epochs of row positions drawn with :func:`sample_weights`, capped per image.

    Args:
        df: the training table; yielded indices are row *positions* 0..len(df)-1 (as for a
            ``Dataset`` built from the same table in the same order), not ``df.index`` labels.
        alpha: ≥ 0, see :func:`sample_weights`.
        num_samples: draws per epoch (default ``len(df)``).
        repeat_cap: at most this many draws of one image per epoch (None = no cap).
        seed: the epoch-``e`` order is a pure function of ``(df, alpha, ..., seed, e)``.
        unknown: ``"exclude"`` (unknown-FST rows never drawn) or ``"own_cell"``.

    Epochs: ``__iter__`` draws epoch ``self.epoch`` and then advances it by one, so successive
    iterations differ even without :meth:`set_epoch`; call ``set_epoch(e)`` before iterating to
    reproduce epoch ``e`` (e.g. when resuming).

    Raises:
        ValueError: ``repeat_cap`` < 1, or ``repeat_cap`` × (images of weight > 0) < ``num_samples``.
    """

    def __init__(self, df: pd.DataFrame, alpha: float, num_samples: int | None = None,
                 repeat_cap: int | None = None, seed: int = 0, unknown: str = "exclude"):
        super().__init__()
        self.weights = sample_weights(df, alpha, unknown)
        self.num_samples = len(df) if num_samples is None else int(num_samples)
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        self.repeat_cap, self.seed, self.epoch = repeat_cap, int(seed), 0
        if repeat_cap is not None:
            self._check_cap(int(repeat_cap))

    def _check_cap(self, cap: int) -> None:
        if cap < 1:
            raise ValueError(f"repeat_cap must be >= 1 or None, got {cap}")
        n_pos = int((self.weights > 0).sum())
        if cap * n_pos < self.num_samples:
            raise ValueError(f"repeat_cap={cap} × {n_pos} drawable images = {cap * n_pos} < "
                             f"num_samples={self.num_samples}: raise repeat_cap or lower "
                             "num_samples")
        worst = self.num_samples * float(self.weights.max())
        if worst > cap:
            warnings.warn(f"repeat_cap={cap} binds: the most up-weighted image would be drawn "
                          f"~{worst:.1f} times per epoch, so small cells get less than "
                          "expected_cell_distribution()", stacklevel=3)

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``__iter__`` draw epoch ``epoch``."""
        self.epoch = int(epoch)

    def draw(self, epoch: int) -> np.ndarray:
        """Epoch ``epoch``'s indices: (num_samples,) int64 row positions, in draw order."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        return draw_capped(self.weights, self.num_samples, self.repeat_cap, rng)

    def __iter__(self) -> Iterator[int]:
        idx = self.draw(self.epoch)
        self.epoch += 1
        return iter(idx.tolist())

    def __len__(self) -> int:
        return self.num_samples


# --- the quota planner for synthetic top-ups ---------------------------------------------------

QUOTA_POLICIES = ("top_up", "fixed_total", "per_cell")


def plan_quota(df: pd.DataFrame, policy: str = "top_up", per_cell: int = 0,
               max_ratio: float | None = 10.0, budget: int | None = None,
               lesions: tuple[str, ...] | None = None) -> pd.DataFrame:
    """How many synthetic images to draw per FST × lesion cell of the real training table ``df``.

    Policies:

    * ``top_up`` — every cell of a lesion is filled up to that lesion's largest FST cell;
    * ``fixed_total`` — every cell is filled up to ``per_cell`` images (real + synthetic);
    * ``per_cell`` — ``per_cell`` synthetic images in every cell, whatever the real count
      (an evaluation set, balanced per cell).

    ``max_ratio`` caps synthetic:real per cell (gains level off past ~10:1 in the literature; an
    empty real cell then gets none); ``budget`` caps the total by trimming the largest top-ups
    first (one common ceiling per cell, so the small top-ups of rare cells are kept whole);
    ``lesions`` restricts the plan to some lesion types.

    Returns:
        one row per cell, FST-major: ``fitzpatrick_scale``, ``lesion``, ``n_real``, ``target``
        (wanted before the caps), ``n_synthetic``, ``ratio`` (synthetic:real, NaN for empty
        cells), ``capped`` (the ratio cap bound), ``scaled`` (the budget bound).
    """
    if policy not in QUOTA_POLICIES:
        raise ValueError(f"policy must be one of {QUOTA_POLICIES}, got {policy!r}")
    if policy != "top_up" and per_cell < 1:
        raise ValueError(f"policy {policy!r} needs per_cell >= 1, got {per_cell}")
    if max_ratio is not None and max_ratio < 0:
        raise ValueError(f"max_ratio must be >= 0 or None, got {max_ratio}")
    if budget is not None and budget < 0:
        raise ValueError(f"budget must be >= 0 or None, got {budget}")
    bad = sorted(set(lesions or ()) - set(schema.LESIONS))
    if bad:
        raise ValueError(f"lesions {bad} are not in {schema.LESIONS}")
    plan = cell_counts(df).rename("n_real").reset_index()
    if policy == "top_up":
        wanted = plan.groupby("lesion")["n_real"].transform("max")
    else:
        wanted = pd.Series(per_cell, index=plan.index)
    plan["target"] = wanted if policy == "per_cell" else (wanted - plan["n_real"]).clip(lower=0)
    if lesions is not None:
        plan.loc[~plan["lesion"].isin(lesions), "target"] = 0
    n = plan["target"].to_numpy(dtype=np.int64)
    plan["capped"] = False
    if max_ratio is not None:
        cap = np.floor(max_ratio * plan["n_real"].to_numpy()).astype(np.int64)
        plan["capped"] = n > cap
        n = np.minimum(n, cap)
    plan["scaled"] = False
    if budget is not None and n.sum() > budget:
        trimmed = _water_fill(n, budget)
        plan["scaled"] = trimmed < n
        n = trimmed
    plan["n_synthetic"] = n
    with np.errstate(divide="ignore", invalid="ignore"):
        plan["ratio"] = np.where(plan["n_real"] > 0, n / plan["n_real"].to_numpy(), np.nan)
    return plan[["fitzpatrick_scale", "lesion", "n_real", "target", "n_synthetic", "ratio",
                 "capped", "scaled"]]


def _water_fill(n: np.ndarray, budget: int) -> np.ndarray:
    """Cap every entry of ``n`` at one level L so that the total is ``budget``: the largest
    entries are trimmed first and small ones (the rare cells' top-ups) are kept whole."""
    lo, hi = 0, int(n.max())
    while lo < hi:  # the largest L with sum(min(n, L)) <= budget
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if np.minimum(n, mid).sum() <= budget else (lo, mid - 1)
    out = np.minimum(n, lo)
    for i in np.flatnonzero(n > lo)[: budget - int(out.sum())]:  # hand out the remainder
        out[i] += 1
    return out


def plan_summary(plan: pd.DataFrame) -> pd.DataFrame:
    """A plan as an FST × lesion table of ``real + synthetic`` strings, with row/column totals."""
    cell = plan.assign(text=[f"{r} + {s}" for r, s in zip(plan["n_real"], plan["n_synthetic"],
                                                          strict=True)])
    table = cell.pivot(index="fitzpatrick_scale", columns="lesion", values="text")
    table = table.reindex(columns=[les for les in schema.LESIONS if les in table.columns])
    totals = plan.groupby("fitzpatrick_scale")[["n_real", "n_synthetic"]].sum()
    table["all"] = [f"{r} + {s}" for r, s in zip(totals["n_real"], totals["n_synthetic"], strict=True)]
    table.index = [schema.FST_ROMAN[f] for f in table.index]
    table.index.name = "FST"
    return table


def per_cell_subset(df: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """At most ``n`` rows of every FST × lesion cell (all rows of a smaller cell), drawn with
    ``seed``; e.g. the real reference sets of the image metrics. Row order: by cell."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    shuffled = df.sample(frac=1.0, random_state=seed)
    out = shuffled.groupby(["fitzpatrick_scale", "lesion"], sort=True).head(n)
    return out.sort_values(["fitzpatrick_scale", "lesion"], kind="stable")
