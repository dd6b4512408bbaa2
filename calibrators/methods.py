"""From a histogram of |x| to amax: entropy (TensorRT EntropyCalibration2 semantics), minmax, percentile."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from calibrators.histogram import AbsHistogram

QUANT_BINS = 128  # symmetric int8: 128 magnitudes per sign
DEFAULT_PERCENTILE = 99.99


def _kl(p: NDArray[np.float64], q: NDArray[np.float64]) -> float:
    """KL(p || q) of two unnormalised distributions; infinite where p has mass q lacks."""
    p_sum, q_sum = p.sum(), q.sum()
    if p_sum == 0:
        return 0.0
    if q_sum == 0:
        return float("inf")
    p = p / p_sum
    q = q / q_sum
    mask = p > 0
    if np.any(q[mask] == 0):
        return float("inf")
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def entropy_divergences(counts: NDArray[np.integer], start_bin: int = QUANT_BINS
                        ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """KL divergence of every candidate cut ``i`` in ``[start_bin, len(counts)]``.

    P = the first ``i`` bins with all the mass beyond ``i`` added to bin ``i - 1``; Q = those ``i``
    bins merged into 128 groups, each group's count spread evenly over its non-empty bins (empty
    bins stay empty). Bin 1 is first copied into bin 0 to tame the spike of exact zeros after ReLU.
    """
    bins = np.asarray(counts, dtype=np.float64).copy()
    if bins.size > 1:
        bins[0] = bins[1]
    cuts = np.arange(start_bin, bins.size + 1, dtype=np.int64)
    tail = np.concatenate([np.cumsum(bins[::-1])[::-1], [0.0]])  # tail[i] = sum(bins[i:])
    divergences = np.empty(cuts.size, np.float64)
    for k, i in enumerate(cuts):
        head = bins[:i]
        edges = np.linspace(0, i, num=QUANT_BINS + 1)
        group = np.digitize(np.arange(i), edges) - 1
        nonempty = head != 0
        group_mass = np.bincount(group[nonempty], weights=head[nonempty], minlength=QUANT_BINS)
        group_size = np.bincount(group[nonempty], minlength=QUANT_BINS)
        spread = np.divide(group_mass, group_size, out=np.zeros(QUANT_BINS), where=group_size > 0)
        q = np.where(nonempty, spread[group], 0.0)
        p = head.copy()
        p[-1] += tail[i]
        divergences[k] = _kl(p, q)
    return cuts, divergences


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
    """amax by ``method``: ``entropy`` | ``minmax`` | ``percentile``."""
    if method == "entropy":
        return amax_entropy(hist)
    if method == "minmax":
        return amax_minmax(hist)
    if method == "percentile":
        return amax_percentile(hist, percentile)
    raise ValueError(f"unknown calibration method {method!r}; expected entropy, minmax or percentile")
