"""Synthetic forgery families, each modelled on an artifact of real deepfakes and applied inside a soft ellipse.

Every family is ``family(img, rng, severity) -> img`` on float32 ``HxWx3`` images in ``[0, 1]``. ``severity`` in
``[0, 1]`` scales the artifact (0 leaves the image (nearly) unchanged). The first draw from ``rng`` is always the
region, :func:`elliptical_mask`, so a caller holding the same seed can rebuild it; pixels outside the region are
left unchanged. Grey sources (three equal channels) stay grey: every per-channel change is then shared.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

Forgery = Callable[[np.ndarray, np.random.Generator, float], np.ndarray]


def elliptical_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A soft, rotated ellipse at a random position and size: 1 inside, a smooth falloff, 0 outside.

    Args:
        shape: ``(height, width)`` of the image.
        rng: the generator; this function draws six numbers from it.

    Returns:
        A float32 ``HxW`` mask in ``[0, 1]``.
    """
    h, w = shape
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
    ay, ax = rng.uniform(0.22, 0.38) * h, rng.uniform(0.22, 0.38) * w
    theta, feather = rng.uniform(0.0, np.pi), rng.uniform(0.15, 0.35)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    dy, dx = yy - cy, xx - cx
    u = (dx * np.cos(theta) + dy * np.sin(theta)) / ax
    v = (-dx * np.sin(theta) + dy * np.cos(theta)) / ay
    t = np.clip((1.0 - np.sqrt(u * u + v * v)) / feather, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def is_grey(img: np.ndarray) -> bool:
    """Whether the three channels of an image are equal."""
    return bool(np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2]))


def _channel_draw(rng: np.random.Generator, grey: bool, low: float, high: float) -> np.ndarray:
    """One uniform number per channel, or one shared by the three channels of a grey image."""
    return np.repeat(rng.uniform(low, high), 3) if grey else rng.uniform(low, high, size=3)


def _paste(img: np.ndarray, forged: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blend ``forged`` into ``img`` through ``mask`` and clip to ``[0, 1]``."""
    m = mask[..., None]
    return np.clip(img + m * (forged - img), 0.0, 1.0).astype(np.float32)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of each channel."""
    return ndimage.gaussian_filter(img, sigma=(sigma, sigma, 0.0), mode="reflect")


def blend(img: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Self-blend (SBI): a slightly shifted, scaled, recoloured and sharpened or blurred copy pasted onto itself."""
    mask = elliptical_mask(img.shape[:2], rng)
    grey = is_grey(img)
    shift = rng.uniform(-6.0, 6.0, size=2) * severity
    scale = 1.0 + rng.uniform(-0.1, 0.1) * severity
    gain = 1.0 + _channel_draw(rng, grey, -0.15, 0.15) * severity
    offset = _channel_draw(rng, grey, -0.04, 0.04) * severity
    sharpen = rng.uniform(-1.0, 1.0) * severity
    centre = (np.array(img.shape[:2]) - 1) / 2.0
    matrix = np.diag([1.0 / scale, 1.0 / scale, 1.0])
    start = np.append(centre - (centre + shift) / scale, 0.0)
    copy = ndimage.affine_transform(img, matrix, offset=start, order=1, mode="reflect")
    copy = copy + sharpen * (copy - _blur(copy, 1.0))
    return _paste(img, copy * gain + offset, mask)


def warp(img: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Reenactment-like warp: a smooth random displacement field (up to 16 px) that fades out at the region's edge."""
    mask = elliptical_mask(img.shape[:2], rng)
    h, w = img.shape[:2]
    coarse = rng.normal(size=(2, 4, 4))
    field = np.stack([ndimage.zoom(c, (h / 4, w / 4), order=3, mode="nearest", grid_mode=True) for c in coarse])
    field *= 16.0 * severity / max(float(np.abs(field).max()), 1e-6) * mask
    coords = np.mgrid[0:h, 0:w].astype(np.float32) + field
    warped = np.stack(
        [ndimage.map_coordinates(img[..., c], coords, order=1, mode="reflect") for c in range(3)], axis=-1
    )
    return _paste(img, warped, mask)


def upsample(img: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """GAN upsampling: the region halved, then zero-insertion upsampling with an ``[a, 1, a]`` kernel (checkerboard).

    ``a = 0.5`` is plain linear interpolation; ``a = 0.5 + 0.2 * severity`` gives the checkerboard of a transposed
    convolution, and the region is mixed in with opacity ``min(1, 3 * severity)``.
    """
    mask = elliptical_mask(img.shape[:2], rng)
    h, w = img.shape[:2]
    a = 0.5 + 0.2 * severity * rng.uniform(0.5, 1.0)
    small = img[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))
    up = np.zeros((h // 2 * 2, w // 2 * 2, 3), np.float32)
    up[::2, ::2] = small
    kernel = np.array([a, 1.0, a], np.float32)
    up = ndimage.correlate1d(up, kernel, axis=0, mode="reflect")
    up = ndimage.correlate1d(up, kernel, axis=1, mode="reflect")
    forged = img.copy()
    forged[: up.shape[0], : up.shape[1]] = up
    return _paste(img, img + min(1.0, 3.0 * severity) * (forged - img), mask)


def spectral(img: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """GAN fingerprint: a few periodic high-frequency waves (peaks in the spectrum) added to the region."""
    mask = elliptical_mask(img.shape[:2], rng)
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    pattern = np.zeros((h, w), np.float32)
    for _ in range(3):
        freq, angle, phase = rng.uniform(0.2, 0.5), rng.uniform(0.0, np.pi), rng.uniform(0.0, 2 * np.pi)
        pattern += np.cos(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
    amplitude = 0.03 * severity * rng.uniform(0.5, 1.0)
    return _paste(img, img + amplitude * pattern[..., None], mask)


def noise(img: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Noise mismatch: the region denoised (blurred), then re-noised at a different level."""
    mask = elliptical_mask(img.shape[:2], rng)
    sigma = 2.5 * severity * rng.uniform(0.5, 1.0)
    std = 0.08 * severity * rng.uniform(0.3, 1.0)
    shape = img.shape[:2] + ((1,) if is_grey(img) else (3,))
    fresh = rng.normal(0.0, 1.0, size=shape).astype(np.float32) * std
    return _paste(img, _blur(img, sigma) + fresh, mask)


def _jpeg(img: np.ndarray, quality: int, shift: tuple[int, int]) -> np.ndarray:
    """JPEG round trip of an image on an 8x8 grid shifted by ``shift`` pixels (grey images stay single-channel)."""
    grey = is_grey(img)
    rolled = np.roll(img, shift, axis=(0, 1))
    pixels = np.round(np.clip(rolled[..., 0] if grey else rolled, 0.0, 1.0) * 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG", quality=quality)
    decoded = np.asarray(Image.open(buffer), dtype=np.float32) / 255.0
    decoded = np.repeat(decoded[..., None], 3, axis=-1) if grey else decoded
    return np.roll(decoded, (-shift[0], -shift[1]), axis=(0, 1))


def jpeg(img: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Double JPEG: the region compressed on an 8x8 grid shifted against the image's, then again on the image's grid.

    Quality falls from 95 to 10-35 with severity; the region is mixed in with opacity ``min(1, 4 * severity)``.
    Apply it to the final crop: any later resize destroys the block grid.
    """
    mask = elliptical_mask(img.shape[:2], rng)
    shift = (int(rng.integers(1, 8)), int(rng.integers(1, 8)))
    first = round(95 - 85 * severity * rng.uniform(0.7, 1.0))
    second = round(100 - 10 * severity)
    forged = _jpeg(_jpeg(img, first, shift), second, (0, 0))
    return _paste(img, img + min(1.0, 4.0 * severity) * (forged - img), mask)


def colour(img: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Colour and illumination mismatch: per-channel gain, gamma and a brightness ramp (shared gain for grey)."""
    mask = elliptical_mask(img.shape[:2], rng)
    h, w = img.shape[:2]
    gain = 1.0 + _channel_draw(rng, is_grey(img), -0.3, 0.3) * severity
    gamma = float(np.exp(rng.uniform(-0.3, 0.3) * severity))
    angle, slope = rng.uniform(0.0, 2 * np.pi), rng.uniform(-0.3, 0.3) * severity
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = 1.0 + slope * ((xx / w - 0.5) * np.cos(angle) + (yy / h - 0.5) * np.sin(angle))
    return _paste(img, np.clip(img, 0.0, 1.0) ** gamma * gain * ramp[..., None], mask)


FAMILIES: dict[str, Forgery] = {
    "blend": blend,
    "warp": warp,
    "upsample": upsample,
    "spectral": spectral,
    "noise": noise,
    "jpeg": jpeg,
    "colour": colour,
}

DEFAULT_SEVERITY: dict[str, float] = {
    "blend": 1.0,
    "warp": 1.0,
    "upsample": 0.4,
    "spectral": 0.6,
    "noise": 0.8,
    "jpeg": 1.0,
    "colour": 1.0,
}
"""Calibrated so that a linear probe on frozen ImageNet ``lite0`` features sits well below AUC 1 (see the cards)."""
