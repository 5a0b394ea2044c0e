"""Test-time perturbations: determinism, strength growing with the level, the config syntax, the dataset hook."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image
from skimage import data

from bench.config import build_config
from bench.data.frames import Frame
from bench.data.loader import FrameDataset
from bench.data.perturb import LEVELS, parse_perturbations, perturb
from bench.errors import ConfigError

FACE = data.astronaut()[:256, 128:384]


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


@pytest.mark.parametrize("kind", sorted(LEVELS))
def test_levels_are_deterministic_and_grow_stronger(kind: str) -> None:
    errors = []
    for level in range(1, 6):
        out = perturb(FACE, kind, level)
        assert out.shape == FACE.shape and out.dtype == np.uint8
        assert np.array_equal(out, perturb(FACE.copy(), kind, level))
        errors.append(_mse(out, FACE))
    assert errors[0] > 0 and all(b > a for a, b in itertools.pairwise(errors)), errors


def test_pil_in_pil_out_matches_the_array_path() -> None:
    out = perturb(Image.fromarray(FACE), "noise", 2)
    assert isinstance(out, Image.Image) and np.array_equal(np.asarray(out), perturb(FACE, "noise", 2))
    with pytest.raises(ValueError, match="level 6 is not in 1..5"):
        perturb(FACE, "blur", 6)


def test_parse_specs_and_eval_config() -> None:
    assert parse_perturbations(["jpeg:2..3", "blur:5", "noise"]) == [
        ("jpeg", 2), ("jpeg", 3), ("blur", 5), *[("noise", i) for i in range(1, 6)]
    ]  # fmt: skip
    cfg = build_config({"eval": {"perturbations": "resize:1..2"}})
    assert cfg.eval.perturbation_levels() == [("resize", 1), ("resize", 2)]
    for bad, message in (("jpeg:0", "levels must lie in 1..5"), ("crop:1", "KIND one of"), ("jpeg:3..1", "1..5")):
        with pytest.raises(ConfigError, match=message):
            build_config({"eval": {"perturbations": [bad]}})
    with pytest.raises(ConfigError, match="jpeg:1 is listed twice"):
        build_config({"eval": {"perturbations": ["jpeg", "jpeg:1"]}})


def test_dataset_applies_the_perturbation_before_normalising(tmp_path) -> None:
    Image.fromarray(FACE).save(tmp_path / "f.png")
    frames = [Frame(str(tmp_path / "f.png"), 0, "real", "v")]
    clean = FrameDataset(frames, 256, (0, 0, 0), (1, 1, 1))[0]["image"]
    blurred = FrameDataset(frames, 256, (0, 0, 0), (1, 1, 1), perturbation=("blur", 3))[0]["image"]
    expected = perturb(FACE, "blur", 3).astype(np.float32) / 255
    assert np.allclose(blurred.permute(1, 2, 0).numpy(), expected) and not np.allclose(clean, blurred)
