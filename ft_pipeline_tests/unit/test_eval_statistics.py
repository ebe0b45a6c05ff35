"""Paired bootstrap and McNemar against hand-computed values and a null simulation."""

import math

import numpy as np
import pandas as pd
import pytest

from ft_pipeline.lib.evaluation import statistics
from ft_pipeline.lib.evaluation.statistics import (
    BootstrapResult,
    McNemarResult,
    compare,
    is_binary,
    mcnemar,
    paired_bootstrap,
)

# --- paired bootstrap ------------------------------------------------------------------------


def test_identical_scores_give_zero_delta_and_degenerate_ci():
    scores = np.random.default_rng(1).random(50)
    result = paired_bootstrap(scores, scores.copy())
    assert result == BootstrapResult(delta=0.0, ci_low=0.0, ci_high=0.0, n=50, n_resamples=2000, confidence=0.95)


def test_constant_shift_gives_that_shift_exactly():
    result = paired_bootstrap(np.full(40, 0.1), np.zeros(40))
    assert (result.delta, result.ci_low, result.ci_high) == (0.1, 0.1, 0.1)
    # With arbitrary baseline scores, base + 0.1 - base differs from 0.1 by float rounding only.
    base = np.random.default_rng(2).random(300)
    result = paired_bootstrap(base + 0.1, base)
    assert result.delta == pytest.approx(0.1, abs=1e-12)
    assert result.ci_low == pytest.approx(0.1, abs=1e-12)
    assert result.ci_high == pytest.approx(0.1, abs=1e-12)


def test_known_case_ci_excludes_zero_with_the_right_width():
    # d = 1 on 80 items and 0 on 20: mean 0.8, bootstrap SE sqrt(0.8 * 0.2 / 100) = 0.04, so the
    # 95% percentile interval is about 0.8 -+ 1.96 * 0.04 = [0.7216, 0.8784].
    candidate = np.r_[np.ones(80), np.zeros(20)]
    baseline = np.zeros(100)
    result = paired_bootstrap(candidate, baseline, n_resamples=4000, seed=3)
    assert result.delta == pytest.approx(0.8)
    assert result.ci_low > 0
    assert result.ci_low == pytest.approx(0.7216, abs=0.02)
    assert result.ci_high == pytest.approx(0.8784, abs=0.02)
    # Pairing matters: the same scores shuffled against each other are a different comparison.
    assert (result.n, result.n_resamples, result.confidence) == (100, 4000, 0.95)


def test_confidence_level_widens_the_interval():
    rng = np.random.default_rng(4)
    a, b = rng.random(200), rng.random(200)
    narrow = paired_bootstrap(a, b, confidence=0.8)
    wide = paired_bootstrap(a, b, confidence=0.99)
    assert wide.ci_low < narrow.ci_low < narrow.ci_high < wide.ci_high


def test_bootstrap_is_deterministic_in_the_seed():
    rng = np.random.default_rng(5)
    a, b = rng.random(120), rng.random(120)
    assert paired_bootstrap(a, b, seed=7) == paired_bootstrap(a, b, seed=7)
    assert paired_bootstrap(a, b, seed=7) != paired_bootstrap(a, b, seed=8)


def test_bootstrap_does_not_depend_on_chunking(monkeypatch):
    rng = np.random.default_rng(6)
    a, b = rng.random(100), rng.random(100)
    whole = paired_bootstrap(a, b, n_resamples=500)
    monkeypatch.setattr(statistics, "BOOTSTRAP_CHUNK_ELEMENTS", 730)  # 7 rows per chunk, ragged end
    assert paired_bootstrap(a, b, n_resamples=500) == whole


def test_equal_models_rarely_look_better():
    # Two identically distributed score vectors: a 95% CI should exclude 0 on the positive side
    # about 2.5% of the time, i.e. in ~0.5 of 20 seeds. At most 2 is allowed.
    false_wins = 0
    for seed in range(20):
        rng = np.random.default_rng(1000 + seed)
        a, b = rng.random(200), rng.random(200)
        if paired_bootstrap(a, b, seed=seed).ci_low > 0:
            false_wins += 1
    assert false_wins <= 2


def test_bootstrap_input_validation():
    with pytest.raises(ValueError, match="length"):
        paired_bootstrap(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="no examples"):
        paired_bootstrap(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="finite"):
        paired_bootstrap(np.array([1.0, np.nan]), np.ones(2))
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap(np.ones(2), np.zeros(2), confidence=95)


# --- McNemar ---------------------------------------------------------------------------------


def _pairs(b, c, both_right=0, both_wrong=0):
    """Correctness vectors with b (candidate only), c (baseline only) and concordant pairs."""
    cand = [1] * b + [0] * c + [1] * both_right + [0] * both_wrong
    base = [0] * b + [1] * c + [1] * both_right + [0] * both_wrong
    return np.array(cand), np.array(base)


@pytest.fixture(params=["scipy", "fallback"])
def backend(request, monkeypatch):
    """Run McNemar cases with scipy and with the pure-Python fallback."""
    if request.param == "fallback":
        monkeypatch.setattr(statistics, "_scipy_stats", None)
    return request.param


def test_mcnemar_exact_one_sided_sweep(backend):
    result = mcnemar(*_pairs(10, 0, both_right=5, both_wrong=5))
    assert (result.b, result.c, result.exact) == (10, 0, True)
    assert result.p_value == pytest.approx(2 * 0.5**10, rel=1e-12)
    assert result.statistic == 0.0
    assert result.delta == pytest.approx(0.5)  # (10 - 0) / 20
    assert result.p_value_greater == pytest.approx(0.5**10, rel=1e-12)


def test_mcnemar_exact_mixed(backend):
    # b = 10, c = 3: p = 2 * P(X <= 3 | n = 13) = 2 * (1 + 13 + 78 + 286) / 2**13 = 756 / 8192.
    result = mcnemar(*_pairs(10, 3, both_right=7))
    assert result.exact
    assert result.p_value == pytest.approx(756 / 8192, rel=1e-12)
    assert result.p_value_greater == pytest.approx(378 / 8192, rel=1e-12)
    # Candidate behind: the one-sided p for "better" is large.
    assert mcnemar(*_pairs(3, 10)).p_value_greater == pytest.approx(1 - 378 / 8192, rel=1e-12)


def test_mcnemar_equal_discordant_counts_give_p_one(backend):
    result = mcnemar(*_pairs(20, 20, both_right=10))
    assert not result.exact  # b + c = 40 >= 25: chi-square with continuity correction
    assert result.statistic == 0.0  # max(|b - c| - 1, 0)**2 / (b + c)
    assert result.p_value == 1.0
    assert result.delta == 0.0
    # And with the exact test.
    assert mcnemar(*_pairs(5, 5)).p_value == 1.0


def test_mcnemar_chi_square_matches_the_formula(backend):
    result = mcnemar(*_pairs(30, 10, both_right=50, both_wrong=10))
    expected = (abs(30 - 10) - 1) ** 2 / (30 + 10)  # 361 / 40 = 9.025
    assert not result.exact
    assert result.statistic == pytest.approx(expected)
    # chi-square(1) survival function = erfc(sqrt(x / 2)); ~0.002663.
    assert result.p_value == pytest.approx(math.erfc(math.sqrt(expected / 2)), rel=1e-9)
    assert result.p_value == pytest.approx(0.0026634, abs=1e-6)
    assert result.delta == pytest.approx(20 / 100)


def test_mcnemar_no_discordant_pairs_and_threshold():
    result = mcnemar(*_pairs(0, 0, both_right=3, both_wrong=3))
    assert (result.b, result.c, result.p_value, result.delta) == (0, 0, 1.0, 0.0)
    assert mcnemar(*_pairs(20, 4)).exact  # 24 < 25
    assert not mcnemar(*_pairs(21, 4)).exact  # 25
    assert mcnemar(*_pairs(21, 4), exact_below=100).exact


def test_mcnemar_accepts_bools_and_rejects_non_binary():
    cand, base = _pairs(4, 1)
    assert mcnemar(cand.astype(bool), base.astype(bool)) == mcnemar(cand.astype(float), base)
    with pytest.raises(ValueError, match="0/1"):
        mcnemar(np.array([0.5, 1.0]), np.array([0, 1]))
    assert isinstance(mcnemar(cand, base), McNemarResult)


def test_is_binary():
    assert is_binary(np.array([0, 1, 1]))
    assert is_binary(np.array([0.0, 1.0]))
    assert is_binary(np.array([True, False]))
    assert is_binary(np.ones(3))
    assert not is_binary(np.array([0.0, 0.5]))
    assert not is_binary(np.array([0.0, np.nan]))
    assert not is_binary(np.array([]))
    assert not is_binary(np.array(["0", "1"]))


# --- compare ---------------------------------------------------------------------------------


def test_compare_frames():
    cand_correct, base_correct = _pairs(10, 0, both_right=5, both_wrong=5)
    rng = np.random.default_rng(9)
    rouge = rng.random(20)
    candidate = pd.DataFrame({"exact_match": cand_correct.astype(float), "rougeL": rouge + 0.05})
    # A different index on the baseline must not matter: rows align by position.
    baseline = pd.DataFrame({"exact_match": base_correct.astype(float), "rougeL": rouge}, index=range(100, 120))
    out = compare(candidate, baseline, ["exact_match", "rougeL"], n_resamples=500, seed=1)

    em = out["exact_match"]
    assert em["delta"] == pytest.approx(0.5)
    assert (em["b"], em["c"]) == (10, 0)
    assert em["p_value"] == pytest.approx(2 * 0.5**10)
    assert em["ci_low"] > 0 and em["n"] == 20 and em["n_resamples"] == 500
    assert em["candidate_mean"] == pytest.approx(0.75) and em["baseline_mean"] == pytest.approx(0.25)
    assert em == {**em, **paired_bootstrap(cand_correct, base_correct, n_resamples=500, seed=1).__dict__}

    rl = out["rougeL"]
    assert rl["delta"] == pytest.approx(0.05) and rl["ci_low"] == pytest.approx(0.05)
    assert "p_value" not in rl and "b" not in rl


def test_compare_validation():
    frame = pd.DataFrame({"m": [1.0, 0.0]})
    with pytest.raises(ValueError, match="same examples"):
        compare(frame, frame.iloc[:1], ["m"])
    with pytest.raises(KeyError, match="missing"):
        compare(frame, frame, ["nope"])
