"""Training augmentation as configuration, built on albumentations.

``data.augment`` is a preset name or a list of albumentations transforms, each a one-key mapping from the class name
to its arguments (``{"Rotate": {"limit": 10, "p": 0.5}}``); ``OneOf`` and ``SomeOf`` take ``transforms`` in the same
form. The pipeline runs in the loader workers on training frames only (8-bit RGB, after resizing, before
normalisation), reseeded for every sample from the seed the step sampler hands out, so that a draw depends on
``(train.seed, step, slot)`` alone and a resumed run sees exactly the frames an uninterrupted one would.

The papers' recipes were written for albumentations 1.1.0; the presets spell out every argument whose default or
name changed in 2.x (rotation borders, JPEG quality, noise, cut-out) so that their distributions are 1.1.0's, except
the blur's sigma, which 1.1.0 derived from the kernel size (0.8 to 1.4 for kernels 3 to 7) and 2.x draws from that
range; the random streams are not 1.1.0's.
"""

from __future__ import annotations

import math
import os
import random
from typing import Any

import numpy as np

from bench.errors import ConfigError

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # its import asks PyPI for a newer release otherwise

Spec = list[dict[str, Any]]

REFLECT_101 = 4  # cv2.BORDER_REFLECT_101, albumentations 1.x's default border for rotations

PRESETS: dict[str, Spec] = {
    "none": [],
    "flip": [{"HorizontalFlip": {"p": 0.5}}],
    # DeepfakeBench's training augmentation (training/dataset/abstract_dataset.py, init_data_aug_method) with the
    # data_aug values of its detector configs (effort.yaml's included); its IsotropicResize is our resize.
    "deepfakebench": [
        {"HorizontalFlip": {"p": 0.5}},
        {"Rotate": {"limit": [-10, 10], "border_mode": REFLECT_101, "p": 0.5}},
        {"GaussianBlur": {"blur_limit": [3, 7], "sigma_limit": [0.8, 1.4], "p": 0.5}},  # 1.x: sigma of the kernel
        {
            "OneOf": {
                "p": 0.5,
                "transforms": [
                    {"RandomBrightnessContrast": {"brightness_limit": [-0.1, 0.1], "contrast_limit": [-0.1, 0.1]}},
                    {"FancyPCA": {}},
                    {"HueSaturationValue": {}},
                ],
            }
        },
        {"ImageCompression": {"quality_range": [40, 100], "p": 0.5}},
    ],
    # What Effort's released code applies (DeepfakeBench/training/dataset/abstract_dataset.py of
    # YZY-stack/Effort-AIGI-Detection): a fixed list that does not read the data_aug values of its effort.yaml.
    "effort-released": [
        {"HorizontalFlip": {"p": 0.5}},
        {"RandomBrightnessContrast": {"brightness_limit": [-0.2, 0.2], "contrast_limit": [-0.2, 0.2], "p": 0.5}},
        {"HueSaturationValue": {"p": 0.3}},
        {"ImageCompression": {"quality_range": [40, 100], "p": 0.1}},
        {"GaussNoise": {"std_range": [math.sqrt(10) / 255, math.sqrt(50) / 255], "p": 0.1}},  # 1.x var 10-50
        {"MotionBlur": {"blur_limit": [3, 7], "p": 0.1}},
        {"CLAHE": {"p": 0.1}},
        {"ChannelShuffle": {"p": 0.1}},
        {  # 1.x Cutout: 8 holes of 8x8 pixels, black
            "CoarseDropout": {
                "num_holes_range": [8, 8],
                "hole_height_range": [8, 8],
                "hole_width_range": [8, 8],
                "p": 0.1,
            }
        },
        {"RandomGamma": {"p": 0.3}},
        {"GlassBlur": {"p": 0.3}},
    ],
}

NESTED = ("OneOf", "SomeOf", "Sequential")


class AugmentError(ConfigError):
    """A ``data.augment`` value albumentations cannot build; the message names the entry."""


def resolve(augment: str | Spec) -> Spec:
    """The transform list of a preset name, or ``augment`` itself."""
    if isinstance(augment, str):
        if augment not in PRESETS:
            raise AugmentError(f"no augmentation preset {augment!r}; presets: {', '.join(PRESETS)}")
        return PRESETS[augment]
    return augment


def _build(spec: Spec, where: str) -> list[Any]:
    import albumentations as A

    transforms = []
    for i, item in enumerate(spec):
        at = f"{where}[{i}]"
        if not isinstance(item, dict) or len(item) != 1:
            raise AugmentError(f"{at}: expected one mapping from a transform name to its arguments, got {item!r}")
        ((name, args),) = item.items()
        cls = getattr(A, str(name), None)
        if not isinstance(cls, type):
            raise AugmentError(f"{at}: albumentations has no transform {name!r}")
        args = dict(args or {})
        if name in NESTED:
            args["transforms"] = _build(args.get("transforms", []), f"{at}.{name}.transforms")
        try:
            transforms.append(cls(**args, strict=True) if name not in NESTED else cls(**args))
        except (TypeError, ValueError) as err:
            raise AugmentError(f"{at}: {name}: {str(err).splitlines()[0]}") from None
    return transforms


class Augment:
    """The albumentations pipeline of a ``data.augment`` value (false when it is empty)."""

    def __init__(self, augment: str | Spec) -> None:
        import albumentations as A

        self.spec = resolve(augment)
        transforms = _build(self.spec, "data.augment")
        self.pipeline = A.Compose(transforms, save_applied_params=True) if transforms else None

    def __bool__(self) -> bool:
        return self.pipeline is not None

    def apply(self, image: np.ndarray, seed: int) -> tuple[np.ndarray, list[str]]:
        """``image`` (H x W x 3, uint8) augmented with the draws of ``seed``, and the transforms that applied.

        One generator pair serves every transform in turn (``set_random_state``); albumentations'
        ``set_random_seed`` would give each transform its own generator with the same seed, so that all of them
        would draw the same numbers and apply together or not at all.
        """
        if self.pipeline is None:
            return image, []
        self.pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
        out = self.pipeline(image=image)
        return out["image"], [name for name, _ in out["applied_transforms"]]

    def __call__(self, image: np.ndarray, seed: int) -> np.ndarray:
        return self.apply(image, seed)[0]
