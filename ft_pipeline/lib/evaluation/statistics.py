"""Paired significance statistics for the promotion gate: candidate vs baseline on the same items.

Both tests are *paired*: the candidate and the baseline answered the same eval items, so the
per-item difference removes the item difficulty shared by both models and the error on the
difference is much smaller than two independent per-model intervals would suggest.

* ``paired_bootstrap``: percentile CI of mean(candidate - baseline), resampling items (Koehn
  2004 style). Seeded, vectorized, deterministic. For continuous or decomposable metrics.
* ``mcnemar``: for binary correctness. Exact two-sided binomial test on the discordant pairs when
  there are few, chi-square with continuity correction otherwise.
* ``compare``: both, per metric column of two per-example score frames (see ``metrics``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

try:  # scipy comes with scikit-learn; the fallbacks below keep this module usable without it.
    from scipy import stats as _scipy_stats
except ImportError:  # pragma: no cover - exercised by monkeypatching in the tests
    _scipy_stats = None

BOOTSTRAP_CHUNK_ELEMENTS = 4_000_000
"""At most this many resampled indices are held at once (32 MB of int64): large (n_resamples, n)
problems are drawn in row chunks. The generator stream is the same whether it is drawn in one
call or in chunks, so the result does not depend on this value."""


@dataclass(frozen=True)
class BootstrapResult:
    """A paired bootstrap of mean(candidate - baseline) with a percentile confidence interval."""

    delta: float
    """The observed mean difference (candidate minus baseline), not a bootstrap estimate."""
    ci_low: float
    ci_high: float
    n: int
    """Number of paired examples."""
    n_resamples: int
    confidence: float


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's test on paired binary outcomes (1 = correct)."""

    b: int
    """Discordant pairs the candidate got right and the baseline wrong."""
    c: int
    """Discordant pairs the baseline got right and the candidate wrong."""
    statistic: float
    """min(b, c) for the exact test (statsmodels' convention); the corrected chi-square otherwise."""
    p_value: float
    """Two-sided p-value of H0: a discordant pair is equally likely to favour either model."""
    exact: bool
    """True when the exact binomial test was used."""
    delta: float
    """Accuracy difference, (b - c) / n = mean(candidate) - mean(baseline)."""

    @property
    def p_value_greater(self) -> float:
        """One-sided p-value for "the candidate is better" (the promotion question).

        Half the two-sided p when b > c (exact for the symmetric binomial, the usual convention
        for the chi-square), else 1 - p/2: a candidate that is not ahead never looks significant.
        """
        return self.p_value / 2 if self.b > self.c else 1.0 - self.p_value / 2


def _paired_arrays(candidate: Any, baseline: Any) -> tuple[np.ndarray, np.ndarray]:
    cand = np.asarray(candidate)
    base = np.asarray(baseline)
    if cand.ndim != 1 or base.ndim != 1:
        raise ValueError(f"expected 1-D per-example scores, got shapes {cand.shape} and {base.shape}")
    if cand.shape != base.shape:
        raise ValueError(f"paired scores differ in length: {cand.shape[0]} vs {base.shape[0]}")
    if cand.size == 0:
        raise ValueError("no examples to compare")
    return cand, base


def paired_bootstrap(
    candidate: np.ndarray,
    baseline: np.ndarray,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapResult:
    """Paired bootstrap of the mean per-example difference, with a percentile CI.

    Each replicate resamples example *indices* with replacement, the same indices for both
    models (that is what makes it paired), so it reduces to resampling d = candidate - baseline.
    All replicates come from one ``numpy.random.default_rng(seed)`` stream as an
    (n_resamples, n) index matrix, drawn in row chunks of at most ``BOOTSTRAP_CHUNK_ELEMENTS``.
    """
    cand, base = _paired_arrays(candidate, baseline)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    diff = cand.astype(np.float64) - base.astype(np.float64)
    if not np.isfinite(diff).all():
        raise ValueError("scores must be finite (a NaN would silently poison every replicate)")
    n = diff.size
    delta = float(diff.mean())

    if np.all(diff == diff[0]):
        # Every replicate mean is the same number; skip the draw so the CI is exactly [d, d]
        # instead of d +- a few ulps of summation noise.
        value = float(diff[0])
        return BootstrapResult(value, value, value, n, n_resamples, confidence)

    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=np.float64)
    rows = max(1, BOOTSTRAP_CHUNK_ELEMENTS // n)
    for start in range(0, n_resamples, rows):
        stop = min(start + rows, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = diff[idx].mean(axis=1)

    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1.0 - alpha / 2])
    return BootstrapResult(delta, float(low), float(high), n, n_resamples, confidence)


def is_binary(values: np.ndarray) -> bool:
    """True if every value is 0 or 1 (or a bool) and there is at least one; NaN is not binary."""
    arr = np.asarray(values)
    if arr.size == 0:
        return False
    if arr.dtype == bool:
        return True
    if not np.issubdtype(arr.dtype, np.number):
        return False
    return bool(np.isin(arr, (0, 1)).all())


def _binom_two_sided_half(k: int, n: int) -> float:
    """Two-sided exact binomial p-value for p = 0.5: min(1, 2 * P(X <= k)) with k = min(b, c)."""
    if _scipy_stats is not None:
        tail = float(_scipy_stats.binom.cdf(k, n, 0.5))
    else:
        # Exact integer arithmetic; int / int is correctly rounded even for huge numbers.
        tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2.0 * tail)


def _chi2_sf_1dof(statistic: float) -> float:
    """Upper tail of a chi-square with one degree of freedom."""
    if _scipy_stats is not None:
        return float(_scipy_stats.chi2.sf(statistic, 1))
    # chi2(1) is Z**2, so P(chi2 > x) = P(|Z| > sqrt(x)) = erfc(sqrt(x / 2)).
    return math.erfc(math.sqrt(statistic / 2.0))


def mcnemar(
    candidate_correct: np.ndarray,
    baseline_correct: np.ndarray,
    *,
    exact_below: int = 25,
) -> McNemarResult:
    """McNemar's test on paired binary correctness.

    b = #(candidate right, baseline wrong), c = #(candidate wrong, baseline right). With
    b + c < ``exact_below`` the exact two-sided binomial test (b ~ Bin(b + c, 1/2)); otherwise the
    chi-square ``max(|b - c| - 1, 0)**2 / (b + c)`` on 1 dof. The continuity correction is clipped
    at zero so that b == c (or |b - c| == 1) gives p = 1, not slightly less (statsmodels and R's
    ``mcnemar.test`` do not clip). No discordant pairs: p = 1.
    """
    cand, base = _paired_arrays(candidate_correct, baseline_correct)
    if not (is_binary(cand) and is_binary(base)):
        raise ValueError("McNemar's test needs 0/1 (or boolean) correctness values")
    cand = cand.astype(bool)
    base = base.astype(bool)
    b = int(np.count_nonzero(cand & ~base))
    c = int(np.count_nonzero(~cand & base))
    n_discordant = b + c
    delta = (b - c) / cand.size
    exact = n_discordant < exact_below
    if n_discordant == 0:
        return McNemarResult(b, c, 0.0, 1.0, exact, delta)
    if exact:
        k = min(b, c)
        return McNemarResult(b, c, float(k), _binom_two_sided_half(k, n_discordant), True, delta)
    statistic = max(abs(b - c) - 1, 0) ** 2 / n_discordant
    return McNemarResult(b, c, float(statistic), _chi2_sf_1dof(statistic), False, delta)


def compare(
    candidate: pd.DataFrame,
    baseline: pd.DataFrame,
    metrics: Sequence[str],
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict]:
    """Paired comparison of per-example score frames, metric by metric.

    Rows are aligned by position: both frames must hold the same examples in the same order (the
    index is ignored, so a reset or differently-labelled index does not misalign anything).

    For each metric: ``delta``, ``ci_low``, ``ci_high`` (``paired_bootstrap``), ``n``,
    ``n_resamples``, ``confidence``, ``candidate_mean`` and ``baseline_mean``; for a metric
    binary in both frames also McNemar's ``b``, ``c``, ``p_value`` (two-sided),
    ``p_value_greater`` (one-sided, candidate better), ``statistic`` and ``exact``.
    Every metric uses the same seed, hence the same resampled items: the intervals of several
    metrics describe the same bootstrap replicates.
    """
    if len(candidate) != len(baseline):
        raise ValueError(
            f"candidate has {len(candidate)} rows and baseline {len(baseline)}: the comparison is paired, "
            "so both must score the same examples in the same order"
        )
    missing = [m for m in metrics if m not in candidate.columns or m not in baseline.columns]
    if missing:
        raise KeyError(f"metric column(s) missing from the candidate or baseline scores: {missing}")

    results: dict[str, dict] = {}
    for metric in metrics:
        cand = candidate[metric].to_numpy()
        base = baseline[metric].to_numpy()
        boot = paired_bootstrap(cand, base, n_resamples=n_resamples, confidence=confidence, seed=seed)
        entry: dict[str, Any] = {
            "delta": boot.delta,
            "ci_low": boot.ci_low,
            "ci_high": boot.ci_high,
            "n": boot.n,
            "n_resamples": boot.n_resamples,
            "confidence": boot.confidence,
            "candidate_mean": float(np.mean(cand.astype(np.float64))),
            "baseline_mean": float(np.mean(base.astype(np.float64))),
        }
        if is_binary(cand) and is_binary(base):
            test = mcnemar(cand, base)
            entry.update(
                b=test.b,
                c=test.c,
                p_value=test.p_value,
                p_value_greater=test.p_value_greater,
                statistic=test.statistic,
                exact=test.exact,
            )
        results[metric] = entry
    return results
