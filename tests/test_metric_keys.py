"""The run's value names: every key the loop builds parses back to its parts, and other keys parse to nothing."""

from __future__ import annotations

import pytest

from bench.metric_keys import STEP_TIME, TRAINABLE, LayerKey, ResultKey, RobustKey, grouped


@pytest.mark.parametrize(
    ("record", "key"),
    [
        (ResultKey("auc", "offline-ff"), "auc/offline-ff"),
        (ResultKey("video_auc_lo", "celebdf-v2", "last"), "last/video_auc_lo/celebdf-v2"),
        (RobustKey("jpeg", 3, "auc", "dfd"), "robust/jpeg/3/auc/dfd"),
        (LayerKey("drift", "blocks.0.attn.qkv"), "drift/blocks.0.attn.qkv"),
    ],
)
def test_keys_round_trip(record: ResultKey | RobustKey | LayerKey, key: str) -> None:
    assert record.key == key
    assert type(record).parse(key) == record


@pytest.mark.parametrize(
    "key",
    [
        "val/auc",
        "val/selected_step",
        "train/loss",
        "diag/drift_mean",
        "avg/auc",
        TRAINABLE,
        STEP_TIME,
        "resume_step",
        "robust/jpeg/3/auc/dfd",
        "last/robust/jpeg",
        "auc/",
        "auc/a/b",
        "last/auc",
    ],
)
def test_a_result_key_is_a_test_sets_metric_only(key: str) -> None:
    assert ResultKey.parse(key) is None


@pytest.mark.parametrize(
    "key", ["auc/dfd", "last/auc/dfd", "robust/jpeg/high/auc/dfd", "robust/jpeg/3/auc", "robust//3/auc/dfd"]
)
def test_a_robust_key_has_five_parts_and_a_numeric_level(key: str) -> None:
    assert RobustKey.parse(key) is None


def test_summaries_are_no_layer_keys_and_groups_prefix() -> None:
    assert LayerKey.parse("drift_mean") is None
    assert grouped("diag", "drift_mean") == "diag/drift_mean"
    assert (STEP_TIME, TRAINABLE) == ("train/step_seconds", "params/trainable")
