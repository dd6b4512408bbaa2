"""Streaming histograms of |x| per activation tensor: memory O(bins), independent of the image count."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

DEFAULT_NUM_BINS = 2048
MAX_BINS = DEFAULT_NUM_BINS * 64  # past this, neighbouring bins are merged (the width doubles)
SUMMARY_BINS = 64  # bins of the small histograms reports draw


@dataclass
class AbsHistogram:
    """Histogram of absolute values with bins starting at 0.

    The first batch fixes the bin width (its max |x| spread over ``num_bins`` bins). A later batch
    with a larger value appends bins of the same width, as NVIDIA's open calibrators do, so earlier
    counts are never re-binned approximately; should the bin count pass :data:`MAX_BINS`, pairs of
    bins are merged, which is exact too.
    """

    num_bins: int = DEFAULT_NUM_BINS
    counts: NDArray[np.int64] | None = None
    bin_width: float = 0.0
    max_abs: float = 0.0
    values_seen: int = 0
    zeros_before_range: int = 0  # values seen while every value so far was 0
    min_value: float = float("inf")  # the smallest signed value seen (>= 0: a non-negative tensor)

    def update(self, values: NDArray[np.floating]) -> None:
        """Add a batch of values (any shape). Non-finite values are rejected with a ValueError."""
        signed = np.asarray(values, dtype=np.float32).ravel()
        if signed.size == 0:
            return
        x = np.abs(signed)
        batch_max = float(x.max())
        if not np.isfinite(batch_max):
            raise ValueError("tensor contains NaN or infinity; check the model and the calibration feeds")
        self.values_seen += int(x.size)
        self.min_value = min(self.min_value, float(signed.min()))
        self.max_abs = max(self.max_abs, batch_max)
        if self.counts is None:
            if batch_max == 0.0:  # all zeros so far: remember the count, fix the width later
                self.zeros_before_range += int(x.size)
                return
            self.bin_width = batch_max / self.num_bins
            self.counts = np.zeros(self.num_bins, np.int64)
            self.counts[0] += self.zeros_before_range
        needed = max(1, int(np.ceil(batch_max / self.bin_width)))  # the top edge is inclusive
        while needed > MAX_BINS:  # merge pairs of bins (exact) before growing past the cap
            padded = np.concatenate([self.counts, np.zeros(self.counts.size % 2, np.int64)])
            self.counts = padded.reshape(-1, 2).sum(1)
            self.bin_width *= 2
            needed = max(1, int(np.ceil(batch_max / self.bin_width)))
        if needed > self.counts.size:
            self.counts = np.concatenate([self.counts, np.zeros(needed - self.counts.size, np.int64)])
        idx = np.minimum((x / self.bin_width).astype(np.int64), self.counts.size - 1)
        self.counts += np.bincount(idx, minlength=self.counts.size)

    @property
    def edges(self) -> NDArray[np.float64]:
        """Bin edges, ``len(counts) + 1`` of them, from 0."""
        size = 0 if self.counts is None else self.counts.size
        return np.arange(size + 1, dtype=np.float64) * self.bin_width

    @property
    def empty(self) -> bool:
        return self.counts is None

    def summary(self, max_bins: int = SUMMARY_BINS) -> HistogramSummary:
        """The histogram with neighbouring bins merged (exactly) down to at most ``max_bins``, for reports."""
        if self.counts is None:
            return HistogramSummary(0.0, (self.zeros_before_range,) if self.zeros_before_range else ())
        group = -(-self.counts.size // max_bins)
        padded = np.concatenate([self.counts, np.zeros(-self.counts.size % group, np.int64)])
        return HistogramSummary(self.bin_width * group, tuple(int(c) for c in padded.reshape(-1, group).sum(1)))


@dataclass(frozen=True)
class HistogramSummary:
    """A small histogram of |x| for reports: ``counts[i]`` values in ``[i, i + 1) * bin_width``.

    ``bin_width`` is 0 for a tensor that was all zeros (then ``counts`` holds that one count, if any).
    """

    bin_width: float
    counts: tuple[int, ...]
