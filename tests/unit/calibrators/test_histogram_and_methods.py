from collections import Counter

import numpy as np
import pytest

from calibrators.histogram import MAX_BINS, AbsHistogram
from calibrators.methods import amax_entropy, amax_percentile, compute_amax, entropy_divergences


def reference_divergences(bins_in: list[float], start: int = 128, nbins: int = 128) -> list[float]:
    """A literal, loop-by-loop reading of the EntropyCalibration2 procedure, to check the vectorised one."""
    bins = list(bins_in)
    bins[0] = bins[1]
    out = []
    for i in range(start, len(bins) + 1):
        space = np.linspace(0, i, num=nbins + 1)
        digitized = [int(d) - 1 for d in np.digitize(range(i), space)]
        digitized = [-1 if bins[j] == 0 else d for j, d in enumerate(digitized)]
        density = [0.0] * nbins
        for j, d in enumerate(digitized):
            if d != -1:
                density[d] += bins[j]
        for key, count in Counter(digitized).items():
            if key != -1:
                density[key] /= count
        q = [density[d] if d != -1 else 0.0 for d in digitized]
        p = bins[:i]
        p[-1] += sum(bins[i:])
        ps, qs = sum(p), sum(q)
        kl = 0.0
        for a, b in zip(p, q):
            if a > 0:
                kl = float("inf") if b == 0 else kl + (a / ps) * np.log((a / ps) / (b / qs))
        out.append(kl)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_entropy_matches_a_literal_reading_of_the_algorithm(seed: int) -> None:
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rng.uniform(0, 50, 300) * np.exp(-np.arange(300) / 60)).astype(np.int64)
    counts[rng.integers(0, 300, 20)] = 0  # empty bins must stay empty in Q
    _, div = entropy_divergences(counts)
    np.testing.assert_allclose(div, reference_divergences(counts.astype(float).tolist()), rtol=1e-7, atol=1e-12)


def test_histogram_grows_by_appending_bins_of_the_same_width() -> None:
    h = AbsHistogram()
    h.update(np.linspace(-1, 1, 1001))
    width = h.bin_width
    h.update(np.array([3.0]))
    assert h.bin_width == width and h.counts is not None
    assert h.counts.size == int(np.ceil(3.0 / width))
    assert int(h.counts.sum()) == h.values_seen == 1002
    assert h.max_abs == 3.0


def test_memory_does_not_grow_with_the_number_of_batches() -> None:
    h = AbsHistogram()
    rng = np.random.default_rng(0)
    sizes = []
    for _ in range(200):
        h.update(rng.normal(0, 1, 5000).clip(-4, 4))
        assert h.counts is not None
        sizes.append(h.counts.size)
    assert len(set(sizes[1:])) <= 2 and max(sizes) < 3 * 2048
    h.update(np.array([1e9]))  # a wild outlier merges bins instead of allocating billions
    assert h.counts is not None and h.counts.size <= MAX_BINS
    assert int(h.counts.sum()) == h.values_seen


def test_leading_all_zero_batches_are_counted() -> None:
    h = AbsHistogram()
    h.update(np.zeros(10))
    h.update(np.ones(5))
    assert h.counts is not None and int(h.counts[0]) == 10 and int(h.counts.sum()) == 15


def test_non_finite_values_are_rejected() -> None:
    with pytest.raises(ValueError, match="NaN or infinity"):
        AbsHistogram().update(np.array([1.0, np.nan]))


def test_entropy_clips_rare_outliers_and_minmax_does_not() -> None:
    rng = np.random.default_rng(0)
    h = AbsHistogram()
    for _ in range(10):
        h.update(rng.normal(0, 1, 100_000))
    h.update(np.array([60.0, -55.0]))
    entropy = amax_entropy(h)
    assert 2.0 < entropy < 15.0
    assert compute_amax(h, "minmax") == 60.0
    assert 3.0 < compute_amax(h, "percentile", 99.99) < 5.0


def test_percentile_of_uniform_data() -> None:
    h = AbsHistogram()
    h.update(np.linspace(0, 1, 1_000_001))
    assert amax_percentile(h, 99.99) == pytest.approx(0.9999, abs=1e-3)
    with pytest.raises(ValueError, match="outside"):
        amax_percentile(h, 0)
    with pytest.raises(ValueError, match="unknown calibration method"):
        compute_amax(h, "kl")


def test_known_answers() -> None:
    # uniform counts: no cut loses anything only at the full range, where Q reproduces P exactly
    h = AbsHistogram()
    h.update(np.linspace(0, 4.0, 2048 * 50))
    _, div = entropy_divergences(h.counts)  # type: ignore[arg-type]
    assert div[-1] == pytest.approx(0.0, abs=1e-5) and div[-1] == div.min()
    assert amax_entropy(h) == pytest.approx(4.0)
    # a cut whose last bin is empty while mass lies beyond it is impossible (infinite divergence)
    counts = np.ones(300, np.int64)
    counts[199] = 0
    _, div = entropy_divergences(counts)
    assert np.isinf(div[200 - 128])
