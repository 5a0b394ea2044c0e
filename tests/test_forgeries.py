"""The forgery families: confined to their region, scaled by severity, grey-preserving, deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from bench.data.forgeries import DEFAULT_SEVERITY, FAMILIES, elliptical_mask, is_grey


def _image(grey: bool = False, size: int = 64) -> np.ndarray:
    """A textured test image: smooth gradients plus fine noise, in ``[0.1, 0.9]``."""
    rng = np.random.default_rng(123)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 0.5 + 0.2 * np.sin(6 * xx + 3 * yy)[..., None] + 0.05 * rng.normal(size=(size, size, 3))
    base[..., 1] += 0.1 * yy
    img = np.clip(base, 0.1, 0.9).astype(np.float32)
    return np.repeat(img[..., :1], 3, axis=-1) if grey else img


def test_mask_is_soft_ellipse_inside_image() -> None:
    mask = elliptical_mask((64, 64), np.random.default_rng(0))
    assert mask.dtype == np.float32 and mask.min() == 0.0 and mask.max() == 1.0
    assert 0.0 < ((mask > 0) & (mask < 1)).mean() < (mask > 0).mean()
    assert mask[0].max() == mask[-1].max() == mask[:, 0].max() == mask[:, -1].max() == 0.0


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_changes_only_its_region(family: str) -> None:
    img = _image()
    out = FAMILIES[family](img, np.random.default_rng(5), DEFAULT_SEVERITY[family])
    mask = elliptical_mask(img.shape[:2], np.random.default_rng(5))
    change = np.abs(out - img).max(axis=-1)
    assert out.shape == img.shape and out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0
    assert change[mask == 0].max() < 1e-6
    assert change[mask > 0.5].mean() > 0.005


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_severity_zero_is_identity_and_more_severity_changes_more(family: str) -> None:
    img = _image()
    changes = [float(np.abs(FAMILIES[family](img, np.random.default_rng(7), s) - img).mean()) for s in (0.0, 0.3, 1.0)]
    assert changes[0] < 0.003
    assert changes[0] < changes[1] < changes[2]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_grey_sources_stay_grey(family: str) -> None:
    img = _image(grey=True)
    out = FAMILIES[family](img, np.random.default_rng(3), 1.0)
    assert is_grey(out)
    assert np.abs(out - img).max() > 0.01


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_same_seed_same_forgery(family: str) -> None:
    img = _image()
    first = FAMILIES[family](img, np.random.default_rng(11), 0.8)
    assert np.array_equal(first, FAMILIES[family](img, np.random.default_rng(11), 0.8))
    assert not np.array_equal(first, FAMILIES[family](img, np.random.default_rng(12), 0.8))


def test_colour_on_colour_source_shifts_channels_differently() -> None:
    img = _image()
    out = FAMILIES["colour"](img, np.random.default_rng(0), 1.0)
    mask = elliptical_mask(img.shape[:2], np.random.default_rng(0)) > 0.9
    ratios = (out[mask] / img[mask]).mean(axis=0)
    assert np.ptp(ratios) > 0.01
