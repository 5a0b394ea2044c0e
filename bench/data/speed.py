"""``bench data bench``: images per second of the data loader alone (decoding, resizing, collation; no model)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench.data.frames import Frame
from bench.data.loader import FrameDataset, eval_loader


@dataclass
class LoaderSpeed:
    """One timed pass: images delivered, seconds (worker start-up included) and the wait for the first batch."""

    images: int
    seconds: float
    first_batch_s: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


def loader_speed(
    frames: list[Frame], size: int, batch_size: int, workers: int, pin: bool = False, max_batches: int | None = None
) -> LoaderSpeed:
    """Time one pass of an evaluation loader (persistent workers, optional pinned memory) over ``frames``."""
    loader = eval_loader(FrameDataset(frames, size, (0.5,) * 3, (0.5,) * 3), batch_size, workers, pin)
    start = time.perf_counter()
    first, images = 0.0, 0
    for i, batch in enumerate(loader):
        images += len(batch["index"])
        first = first or time.perf_counter() - start
        if max_batches is not None and i + 1 >= max_batches:
            break
    return LoaderSpeed(images, time.perf_counter() - start, first)
