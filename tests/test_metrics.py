"""Tests of bench.metrics: sklearn agreement, the interpolated EER, video metrics, bootstrap and DeLong's test."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

from bench.metrics import binary_metrics, delong_test


def _random(n: int = 300, signal: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    return labels, 1 / (1 + np.exp(-(signal * labels + rng.normal(size=n))))


def test_auc_ap_acc_match_sklearn_on_random_data() -> None:
    labels, scores = _random()
    scores = np.round(scores, 2)  # ties included
    m = binary_metrics(labels, scores)
    assert m["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert m["ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert m["acc"] == pytest.approx(np.mean((scores > 0.5) == labels))
    assert (m["n"], m["n_real"], m["n_fake"]) == (300, (labels == 0).sum(), (labels == 1).sum())


def test_eer_hand_computed_with_ties() -> None:
    # Scores high to low: 0.9 fake | 0.6 real, real, fake (tied) | 0.2 real; 3 real, 2 fake.
    # ROC points (FPR, TPR): (0, 0) -> (0, 1/2) -> (2/3, 1) -> (1, 1); FNR = 1 - TPR: 1, 1/2, 0, 0.
    # FPR - FNR goes -1/2 -> 2/3 across the tied segment from (FPR 0, FNR 1/2) to (FPR 2/3, FNR 0):
    # at t = (1/2) / (1/2 + 2/3) = 3/7, FPR = 3/7 * 2/3 = 2/7 and FNR = 1/2 * (1 - 3/7) = 2/7, so EER = 2/7.
    # DeepfakeBench's nearest point would give FPR 0 (|FNR - FPR| is 1/2 at (0, 1/2) and 2/3 at (2/3, 1)).
    m = binary_metrics([1, 0, 0, 1, 0], [0.9, 0.6, 0.6, 0.6, 0.2])
    assert m["eer"] == pytest.approx(2 / 7, abs=1e-12)


def test_eer_interpolates_between_roc_points() -> None:
    # High to low: fake, real, real, fake, real. ROC (FPR, FNR): (0, 1), (0, 1/2), (1/3, 1/2), (2/3, 1/2), (2/3, 0), ...
    # FPR = FNR = 1/2 lies inside the segment (1/3, 1/2) -> (2/3, 1/2); the nearest point would say 1/3.
    m = binary_metrics([1, 0, 0, 1, 0], [0.9, 0.8, 0.7, 0.6, 0.5])
    assert m["eer"] == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize(("scores", "eer"), [([0.1, 0.2, 0.8, 0.9], 0.0), ([0.9, 0.8, 0.2, 0.1], 1.0)])
def test_eer_perfect_and_reversed(scores: list[float], eer: float) -> None:
    assert binary_metrics([0, 0, 1, 1], scores)["eer"] == eer


def test_video_auc_differs_from_frame_auc() -> None:
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    scores = [0.1, 0.5, 0.3, 0.3, 0.4, 0.4, 0.6, 0.6]
    videos = ["r1", "r1", "r2", "r2", "f1", "f1", "f2", "f2"]
    m = binary_metrics(labels, scores, videos)
    # Frames: fakes 0.4, 0.4 beat 3 of the reals (0.1, 0.3, 0.3), fakes 0.6, 0.6 beat all 4 -> 14/16.
    assert m["auc"] == pytest.approx(14 / 16)
    # Video means: r1 0.3, r2 0.3, f1 0.4, f2 0.6 -> every fake video beats every real one.
    assert (m["video_auc"], m["video_eer"], m["n_videos"]) == (1.0, 0.0, 4)
    assert m["eer"] > 0


def test_video_with_mixed_labels_is_named() -> None:
    with pytest.raises(ValueError, match="video 'clip7' has both real and fake"):
        binary_metrics([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], ["clip7", "clip7", "a", "b"])


def test_bootstrap_brackets_auc_and_is_deterministic() -> None:
    labels, scores = _random(200)
    a = binary_metrics(labels, scores, bootstrap=200, seed=3)
    assert a["auc_lo"] < a["auc"] < a["auc_hi"]
    assert a == binary_metrics(labels, scores, bootstrap=200, seed=3)
    assert a["auc_lo"] != binary_metrics(labels, scores, bootstrap=200, seed=4)["auc_lo"]
    videos = np.arange(200) // 4 * 2 + labels  # 4 frames per video at most, one label per video
    v = binary_metrics(labels, scores, videos, bootstrap=200, seed=3)
    assert v["auc_lo"] < v["auc"] < v["auc_hi"]
    assert v["video_auc_lo"] < v["video_auc"] < v["video_auc_hi"]
    assert v == binary_metrics(labels, scores, videos, bootstrap=200, seed=3)


def test_bootstrap_equals_resampling_frames_with_sklearn() -> None:
    labels, scores = _random(60)
    scores = np.round(scores, 1)
    draws = np.random.default_rng(7).integers(0, 60, size=(100, 60))
    aucs = [roc_auc_score(labels[d], scores[d]) for d in draws if 0 < labels[d].sum() < 60]
    m = binary_metrics(labels, scores, bootstrap=100, seed=7)
    assert (m["auc_lo"], m["auc_hi"]) == pytest.approx(tuple(np.percentile(aucs, [2.5, 97.5])), abs=1e-12)


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        ([1, 1, 1], [0.1, 0.2, 0.3], "only one class"),
        ([0, 1, 1], [0.1, np.nan, 0.3], "NaN or infinite"),
        ([0, 1, 1], [0.1, np.inf, 0.3], "NaN or infinite"),
        ([0, 1, 1], [0.1, 0.2], "differ in length"),
        ([], [], "empty input"),
        ([0, 1, 2], [0.1, 0.2, 0.3], r"labels must be 0 \(real\) or 1 \(fake\), got \[2\]"),
    ],
)
def test_errors_name_the_problem(labels: list[int], scores: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        binary_metrics(labels, scores)


def test_video_ids_length_mismatch() -> None:
    with pytest.raises(ValueError, match="video_ids and labels differ in length"):
        binary_metrics([0, 1], [0.1, 0.9], ["a"])


def _slow_delong(labels: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """DeLong's p-value from the definition: O(n^2) structural components psi(x, y) = [x > y] + [x == y] / 2."""
    components = []
    for s in (a, b):
        pos, neg = s[labels == 1], s[labels == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        components.append((psi.mean(axis=1), psi.mean(axis=0), psi.mean()))
    v10 = np.stack([c[0] for c in components])
    v01 = np.stack([c[1] for c in components])
    cov = np.cov(v10) / v10.shape[1] + np.cov(v01) / v01.shape[1]
    z = (components[0][2] - components[1][2]) / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    return float(2 * norm.sf(abs(z)))


def test_delong_matches_slow_definition() -> None:
    labels, a = _random(150, signal=1.0, seed=1)
    b = np.round(0.5 * a + 0.5 * _random(150, signal=0.0, seed=2)[1], 2)  # correlated with a, with ties
    auc_a, auc_b, p = delong_test(labels, a, b)
    assert auc_a == pytest.approx(roc_auc_score(labels, a), abs=1e-12)
    assert auc_b == pytest.approx(roc_auc_score(labels, b), abs=1e-12)
    assert p == pytest.approx(_slow_delong(labels, a, b), rel=1e-9)
    assert 0 < p < 1


def test_delong_identical_scores_give_p_one() -> None:
    labels, scores = _random(50)
    assert delong_test(labels, scores, scores)[2] == 1.0


def test_delong_single_auc_variance_matches_hanley_mcneil_and_bootstrap() -> None:
    labels, scores = _random(400, signal=0.6, seed=5)
    # Against a constant score (AUC 1/2, zero variance) z = (A - 1/2) / sd(A): recover DeLong's variance of A.
    auc, _, p = delong_test(labels, scores, np.zeros_like(scores))
    var = ((auc - 0.5) / norm.isf(p / 2)) ** 2
    m, n = labels.sum(), len(labels) - labels.sum()
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    hanley_mcneil = (auc * (1 - auc) + (m - 1) * (q1 - auc**2) + (n - 1) * (q2 - auc**2)) / (m * n)
    assert var == pytest.approx(hanley_mcneil, rel=0.15)
    ci = binary_metrics(labels, scores, bootstrap=300, seed=0)
    assert np.sqrt(var) == pytest.approx((ci["auc_hi"] - ci["auc_lo"]) / (2 * 1.96), rel=0.25)


def test_delong_needs_two_of_each_class() -> None:
    with pytest.raises(ValueError, match="at least two real and two fake"):
        delong_test([0, 0, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])


def test_a_score_of_exactly_one_half_is_real_as_in_deepfakebench() -> None:
    """A tied head (equal logits) scores every frame 0.5: ACC is then the share of reals."""
    import torch

    tied = torch.softmax(torch.zeros(5, 2), dim=-1)[:, 1].numpy()
    assert (tied == 0.5).all()
    assert binary_metrics([0, 0, 0, 1, 1], tied)["acc"] == pytest.approx(0.6)
