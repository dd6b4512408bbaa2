"""From a histogram of |x| to amax: entropy (TensorRT EntropyCalibration2 semantics), minmax, percentile.

``auto`` (the default of ``trtserve calibrate``) is chosen per model, not per tensor: every tensor gets each
method in :data:`AUTO_CANDIDATES`' range (:func:`candidate_amax`), and :func:`calibrators.sensitivity.choose_ranges`
keeps the first whose INT8 model agrees with FP32 well enough on the calibration frames (falling back to
keeping the most sensitive layers float). Asked for one tensor's range, ``auto`` answers entropy's.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from calibrators.histogram import AbsHistogram

QUANT_BINS = 128  # symmetric int8: 128 magnitudes per sign
DEFAULT_PERCENTILE = 99.99
METHODS = ("auto", "entropy", "minmax", "percentile")
# in the order ``auto`` tries them: from the most clipping to none (``percentile`` is the caller's percentile)
AUTO_CANDIDATES = ("entropy", "percentile", "percentile 99.999", "minmax")


def entropy_divergences(counts: NDArray[np.integer], start_bin: int = QUANT_BINS
                        ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """KL divergence of every candidate cut ``i`` in ``[start_bin, len(counts)]``.

    P = the first ``i`` bins with all the mass beyond ``i`` added to bin ``i - 1``; Q = those ``i``
    bins merged into 128 groups, each group's count spread evenly over its non-empty bins (empty
    bins stay empty). Bin 1 is first copied into bin 0 to tame the spike of exact zeros after ReLU.

    Evaluated for all cuts at once from prefix sums: per cut O(128) work instead of O(i), so a
    2048-bin histogram takes milliseconds. Group boundaries come from the same ``linspace`` edges
    and ``digitize`` rule as the literal procedure (checked against it in the tests).
    """
    bins = np.asarray(counts, dtype=np.float64).copy()
    if bins.size > 1:
        bins[0] = bins[1]
    cuts = np.arange(start_bin, bins.size + 1, dtype=np.int64)
    if cuts.size == 0:
        return cuts, np.zeros(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(bins > 0, bins * np.log(np.where(bins > 0, bins, 1.0)), 0.0)
    mass = np.concatenate([[0.0], np.cumsum(bins)])  # mass[k] = sum(bins[:k])
    ent = np.concatenate([[0.0], np.cumsum(plogp)])
    nonempty = np.concatenate([[0], np.cumsum(bins > 0)])
    total = mass[-1]
    # bin j is in group g when edges[g] <= j < edges[g + 1], i.e. groups start at ceil(edges)
    edges = np.linspace(0, cuts.astype(np.float64), QUANT_BINS + 1, axis=1)
    starts = np.ceil(edges).astype(np.int64)
    lo, hi = starts[:, :-1], starts[:, 1:]
    group_mass = mass[hi] - mass[lo]
    group_count = nonempty[hi] - nonempty[lo]
    with np.errstate(divide="ignore", invalid="ignore"):
        group_q = np.where(group_count > 0, group_mass / np.maximum(group_count, 1), 0.0)
        s_plogq = np.where(group_mass > 0, group_mass * np.log(np.where(group_q > 0, group_q, 1.0)), 0.0).sum(1)
    last = bins[cuts - 1]
    tail = total - mass[cuts]
    last_group = (lo <= (cuts - 1)[:, None]).sum(1) - 1
    q_last = group_q[np.arange(cuts.size), last_group]
    # the tail moves into bin i-1 of P: correct that bin's two terms
    grown = last + tail
    with np.errstate(divide="ignore", invalid="ignore"):
        s_plogp = ent[cuts] + np.where(tail > 0, grown * np.log(np.where(grown > 0, grown, 1.0))
                                       - np.where(last > 0, last * np.log(np.where(last > 0, last, 1.0)), 0.0), 0.0)
        s_plogq = s_plogq + np.where(tail > 0, tail * np.log(np.where(q_last > 0, q_last, 1.0)), 0.0)
        q_total = mass[cuts]
        kl = (s_plogp - s_plogq) / total - np.log(total) + np.log(np.where(q_total > 0, q_total, 1.0))
    kl = np.where((tail > 0) & (last == 0), np.inf, kl)  # P has mass where Q has none
    kl = np.where(q_total > 0, kl, np.inf)
    return cuts, kl if total > 0 else np.zeros(cuts.size)


def amax_entropy(hist: AbsHistogram, start_bin: int = QUANT_BINS) -> float:
    """amax minimising KL divergence; the last minimum wins (as NVIDIA's ports choose)."""
    if hist.counts is None:
        return 0.0
    if hist.counts.size <= start_bin:
        return float(hist.max_abs)
    cuts, div = entropy_divergences(hist.counts, start_bin)
    last_min = len(div) - 1 - int(np.argmin(div[::-1]))
    return float(hist.edges[cuts[last_min]])


def amax_minmax(hist: AbsHistogram) -> float:
    return float(hist.max_abs)


def amax_percentile(hist: AbsHistogram, percentile: float = DEFAULT_PERCENTILE) -> float:
    """Upper edge of the bin where the cumulative share of |x| reaches ``percentile`` percent."""
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile {percentile} is outside (0, 100]")
    if hist.counts is None:
        return 0.0
    cdf = np.cumsum(hist.counts) / hist.counts.sum()
    idx = int(np.searchsorted(cdf, percentile / 100.0))
    return float(min(hist.edges[min(idx + 1, hist.counts.size)], hist.max_abs))


def compute_amax(hist: AbsHistogram, method: str, percentile: float = DEFAULT_PERCENTILE) -> float:
    """amax by ``method``: ``entropy`` | ``minmax`` | ``percentile`` | ``auto`` (entropy's, for one tensor)."""
    if method in ("entropy", "auto"):
        return amax_entropy(hist)
    if method == "minmax":
        return amax_minmax(hist)
    if method == "percentile":
        return amax_percentile(hist, percentile)
    raise ValueError(f"unknown calibration method {method!r}; expected one of {', '.join(METHODS)}")


def candidate_amax(hist: AbsHistogram, percentile: float = DEFAULT_PERCENTILE) -> dict[str, float]:
    """amax of one tensor by every method ``auto`` may choose (:data:`AUTO_CANDIDATES`), keyed by its label
    (``percentile`` becomes e.g. ``percentile 99.99``)."""
    found: dict[str, float] = {}
    for candidate in AUTO_CANDIDATES:
        method, _, value = candidate.partition(" ")
        pct = float(value) if value else percentile
        label = f"percentile {pct:g}" if method == "percentile" else method
        found.setdefault(label, compute_amax(hist, method, pct))
    return found
