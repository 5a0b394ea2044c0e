"""The one record every data source produces: a frame on disk with its label, forgery method and video id."""

from __future__ import annotations

from dataclasses import dataclass

REAL = "real"


@dataclass(frozen=True)
class Frame:
    """One image of a data set.

    Attributes:
        path: image file.
        label: 0 real, 1 fake.
        forgery: forgery method of a fake (``"real"`` for reals).
        video: id of the video the frame belongs to (unique within a card).
    """

    path: str
    label: int
    forgery: str
    video: str


def sample_evenly(available: int, n: int) -> list[int]:
    """Indices of ``n`` evenly spaced frames out of ``available`` (all of them when there are fewer).

    DeepfakeBench takes the first ``n`` frames whenever ``n`` is below the count (its step collapses to 1); here the
    first and last frames are always included and the rest spread evenly between them.
    """
    if available <= n:
        return list(range(available))
    if n == 1:
        return [(available - 1) // 2]
    return [round(i * (available - 1) / (n - 1)) for i in range(n)]
