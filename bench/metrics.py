"""Detection metrics: frame and video AUC, interpolated EER, AP, ACC, bootstrap intervals and DeLong's test.

Labels are 0 (real) / 1 (fake); scores are the probability of fake (any real score works for AUC, EER and AP).
ACC calls a frame fake when its score is above 0.5, as DeepfakeBench's ``get_test_metrics`` does: a score of exactly
0.5 (a tied two-class head) counts as real.

>>> binary_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])["auc"]
0.75
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import norm, rankdata
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score, roc_curve

ArrayLike = Sequence[Any] | np.ndarray


def _check(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(labels, scores)`` as int and float arrays; a ValueError names the first problem."""
    y, s = np.asarray(labels), np.asarray(scores, dtype=float)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D, got shapes {y.shape} and {s.shape}")
    if len(y) != len(s):
        raise ValueError(f"labels and scores differ in length: {len(y)} labels, {len(s)} scores")
    if len(y) == 0:
        raise ValueError("empty input: no labels and no scores")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 (real) or 1 (fake), got {sorted(set(np.unique(y).tolist()) - {0, 1})}")
    if not np.isfinite(s).all():
        raise ValueError(f"scores must be finite: {int((~np.isfinite(s)).sum())} are NaN or infinite")
    if len(np.unique(y)) < 2:
        raise ValueError(f"only one class present (all labels are {int(y[0])}): AUC and EER need real and fake")
    return y.astype(int), s


def _eer(labels: np.ndarray, scores: np.ndarray) -> float:
    """EER at the exact crossing FPR = FNR, interpolated linearly along the ROC segment where FPR - FNR changes sign.

    DeepfakeBench takes ``fpr[nanargmin(|fnr - fpr|)]``, the FPR of the nearest ROC point, which can be off by a
    whole step on small or tied test sets.
    """
    fpr, tpr, _ = roc_curve(labels, scores)
    gap = fpr - (1.0 - tpr)  # non-decreasing from -1 to 1 along the curve
    i = int(np.argmax(gap >= 0))
    if gap[i] == 0:
        return float(fpr[i])
    t = -gap[i - 1] / (gap[i] - gap[i - 1])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def _videos(labels: np.ndarray, scores: np.ndarray, video_ids: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-video ``(labels, mean scores)`` and each frame's video index; a video with mixed labels is an error."""
    ids = np.asarray(video_ids)
    if len(ids) != len(labels):
        raise ValueError(f"video_ids and labels differ in length: {len(ids)} video ids, {len(labels)} labels")
    names, frame_video = np.unique(ids, return_inverse=True)
    counts = np.bincount(frame_video)
    fake_share = np.bincount(frame_video, weights=labels) / counts
    mixed = np.flatnonzero((fake_share > 0) & (fake_share < 1))
    if len(mixed):
        raise ValueError(f"video {names[mixed[0]].item()!r} has both real and fake frames: its label must be constant")
    return fake_share.astype(int), np.bincount(frame_video, weights=scores) / counts, frame_video


def bootstrap_aucs(labels: np.ndarray, scores: np.ndarray, unit: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """The AUC of each resample of units (frames or videos, ``unit`` per row) in ``draws`` (resamples x units).

    Each draw weighs every row by how often its unit was drawn, which gives the AUC of the expanded resample
    (Mann-Whitney on tie groups, ties counting one half). A draw holding one class only gives NaN.
    """
    level = np.unique(scores, return_inverse=True)[1]
    levels, fake = level.max() + 1, labels == 1
    (fake_level, fake_unit), (real_level, real_unit) = ((level[rows], unit[rows]) for rows in (fake, ~fake))
    aucs = np.full(len(draws), np.nan)
    for i, draw in enumerate(draws):
        drawn = np.bincount(draw, minlength=unit.max() + 1)
        pos = np.bincount(fake_level, weights=drawn[fake_unit], minlength=levels)
        neg = np.bincount(real_level, weights=drawn[real_unit], minlength=levels)
        if pos.sum() and neg.sum():
            aucs[i] = pos @ (np.cumsum(neg) - neg / 2) / (pos.sum() * neg.sum())
    return aucs


def stratified_draws(labels: ArrayLike, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``resamples`` x ``len(labels)`` unit indices drawn with replacement within each class (as many reals and fakes
    as there are), so that every resample holds both classes."""
    y = np.asarray(labels)
    draws = np.empty((resamples, len(y)), dtype=int)
    for value in np.unique(y):
        members = np.flatnonzero(y == value)
        draws[:, members] = rng.choice(members, size=(resamples, len(members)))
    return draws


def _bootstrap_auc(labels: np.ndarray, scores: np.ndarray, unit: np.ndarray, draws: np.ndarray) -> tuple[float, float]:
    """95% percentile interval of :func:`bootstrap_aucs`, draws holding one class only skipped."""
    aucs = bootstrap_aucs(labels, scores, unit, draws)
    if np.isnan(aucs).all():
        raise ValueError("no bootstrap resample held both classes: too few samples for a confidence interval")
    low, high = np.nanpercentile(aucs, [2.5, 97.5])
    return float(low), float(high)


def binary_metrics(
    labels: ArrayLike,
    scores: ArrayLike,
    video_ids: ArrayLike | None = None,
    *,
    bootstrap: int = 0,
    seed: int = 0,
) -> dict[str, float]:
    """Frame metrics, and video metrics on the mean frame score per video when ``video_ids`` are given.

    Args:
        labels: 0 real / 1 fake per frame.
        scores: probability of fake per frame.
        video_ids: the video of each frame (any hashable values); adds ``video_auc``, ``video_eer``, ``n_videos``.
        bootstrap: number of resamples for 95% percentile intervals ``auc_lo``/``auc_hi`` (and
            ``video_auc_lo``/``video_auc_hi``); 0 skips them. With ``video_ids`` both intervals resample whole
            videos, since frames of one video are correlated and resampling them would understate the spread;
            without, frames are resampled.
        seed: seed of the resampling.

    Returns:
        ``auc``, ``eer``, ``ap``, ``acc``, ``n``, ``n_real``, ``n_fake`` and the optional keys above.
    """
    y, s = _check(labels, scores)
    out = {
        "auc": float(roc_auc_score(y, s)),
        "eer": _eer(y, s),
        "ap": float(average_precision_score(y, s)),
        "acc": float(accuracy_score(y, s > 0.5)),
        "n": float(len(y)),
        "n_real": float((y == 0).sum()),
        "n_fake": float((y == 1).sum()),
    }
    rng = np.random.default_rng(seed)
    if video_ids is None:
        if bootstrap:
            draws = rng.integers(0, len(y), size=(bootstrap, len(y)))
            out["auc_lo"], out["auc_hi"] = _bootstrap_auc(y, s, np.arange(len(y)), draws)
        return out
    video_y, video_s, frame_video = _videos(y, s, video_ids)
    out |= {"video_auc": float(roc_auc_score(video_y, video_s)), "video_eer": _eer(video_y, video_s)}
    out["n_videos"] = float(len(video_y))
    if bootstrap:
        draws = rng.integers(0, len(video_y), size=(bootstrap, len(video_y)))
        out["auc_lo"], out["auc_hi"] = _bootstrap_auc(y, s, frame_video, draws)
        out["video_auc_lo"], out["video_auc_hi"] = _bootstrap_auc(video_y, video_s, np.arange(len(video_y)), draws)
    return out


def _delong_components(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of each row of ``scores`` (k x n) and their DeLong covariance (k x k), by midranks (Sun & Xu 2014)."""
    pos, neg = scores[:, labels == 1], scores[:, labels == 0]
    m, n = pos.shape[1], neg.shape[1]
    rank_all = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    rank_pos, rank_neg = rankdata(pos, axis=1), rankdata(neg, axis=1)
    v_pos = (rank_all[:, :m] - rank_pos) / n  # share of negatives each positive beats (ties count 1/2)
    v_neg = 1.0 - (rank_all[:, m:] - rank_neg) / m  # share of positives that beat each negative
    aucs = v_pos.mean(axis=1)
    return aucs, np.atleast_2d(np.cov(v_pos) / m + np.cov(v_neg) / n)


def delong_difference(labels: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike) -> tuple[float, float, float]:
    """Two correlated AUCs measured on the same samples and DeLong's variance of their difference.

    Returns:
        ``(auc_a, auc_b, variance of auc_a - auc_b)``.
    """
    y, a = _check(labels, scores_a)
    _, b = _check(labels, scores_b)
    if min(y.sum(), len(y) - y.sum()) < 2:
        raise ValueError("DeLong's test needs at least two real and two fake samples to estimate a variance")
    (auc_a, auc_b), cov = _delong_components(y, np.stack([a, b]))
    return float(auc_a), float(auc_b), float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])


def delong_test(labels: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike) -> tuple[float, float, float]:
    """DeLong's test for two correlated AUCs measured on the same samples.

    Returns:
        ``(auc_a, auc_b, p)`` with ``p`` the two-sided p-value of ``auc_a == auc_b``; identical AUCs give 1, and
        a difference with zero variance gives 0.
    """
    auc_a, auc_b, var = delong_difference(labels, scores_a, scores_b)
    return auc_a, auc_b, delong_p(auc_a - auc_b, var)


def delong_p(difference: float, variance: float) -> float:
    """Two-sided p of an AUC difference with DeLong's variance; 1 for no difference, 0 for one without variance."""
    if difference == 0 or variance <= 0:
        return float(difference == 0)
    return float(2 * norm.sf(abs(difference) / np.sqrt(variance)))
