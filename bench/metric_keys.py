"""The names of a run's values: the loop writes them (``metrics.json``, MLflow), the leaderboard and the report read
them back, all through this module.

========================================  ===========================================================================
``<metric>/<set>``                        a test set, validation-selected checkpoint (:class:`ResultKey`)
``last/<metric>/<set>``                   a test set, last checkpoint (:class:`ResultKey`)
``robust/<kind>/<level>/<metric>/<set>``  a perturbed test set, validation-selected checkpoint (:class:`RobustKey`)
``val/<name>``                            validation: per epoch, and the selected checkpoint's at the end
``train/<name>``                          training curves, steps and step time
``diag/<name>``                           summaries of the method's diagnostics
``params/<name>``                         parameter counts
``avg/<metric>``                          the mean over the cross-dataset test sets (MLflow only)
``resume_step``                           the step a resumed run went on from
========================================  ===========================================================================

A method's diagnostics key its per-layer values ``<quantity>/<layer>`` (:class:`LayerKey`); they go to a table, not
to the run's values.
"""

from __future__ import annotations

from typing import NamedTuple

SELECTED, LAST = "selected", "last"
CHECKPOINTS = (SELECTED, LAST)
ROBUST, VAL, TRAIN, DIAG, PARAMS, AVG = "robust", "val", "train", "diag", "params", "avg"
GROUPS = (LAST, ROBUST, VAL, TRAIN, DIAG, PARAMS, AVG)
"""The first parts of keys that are not a test metric's."""
RESUME_STEP = "resume_step"


def grouped(group: str, name: str) -> str:
    """``<group>/<name>``, e.g. ``val/auc`` or ``diag/drift_mean``."""
    return f"{group}/{name}"


STEPS = grouped(TRAIN, "steps")
STEP_TIME = grouped(TRAIN, "step_seconds")
"""Wall time per optimizer step of the training loop, validation left out (loading, compiling in)."""
SELECTED_STEP = grouped(VAL, "selected_step")
TRAINABLE, TOTAL = grouped(PARAMS, "trainable"), grouped(PARAMS, "total")


def _parts(key: str, count: int) -> list[str] | None:
    """The ``count`` non-empty ``/``-separated parts of ``key``, or None."""
    parts = key.split("/")
    return parts if len(parts) == count and all(parts) else None


class ResultKey(NamedTuple):
    """A test set's metric of one checkpoint: ``<metric>/<set>`` (selected) or ``last/<metric>/<set>``."""

    metric: str
    test_set: str
    checkpoint: str = SELECTED

    @property
    def key(self) -> str:
        key = f"{self.metric}/{self.test_set}"
        return key if self.checkpoint == SELECTED else grouped(LAST, key)

    @classmethod
    def parse(cls, key: str) -> ResultKey | None:
        """The key's parts, or None for any other key (``val/auc``, ``robust/...``, ``diag/x``, ...)."""
        checkpoint = LAST if key.startswith(f"{LAST}/") else SELECTED
        parts = _parts(key.removeprefix(f"{LAST}/") if checkpoint == LAST else key, 2)
        if parts is None or parts[0] in GROUPS:
            return None
        return cls(parts[0], parts[1], checkpoint)


class RobustKey(NamedTuple):
    """A perturbed test set's metric: ``robust/<kind>/<level>/<metric>/<set>``."""

    kind: str
    level: int
    metric: str
    test_set: str

    @property
    def key(self) -> str:
        return f"{ROBUST}/{self.kind}/{self.level}/{self.metric}/{self.test_set}"

    @classmethod
    def parse(cls, key: str) -> RobustKey | None:
        """The key's parts, or None for any other key."""
        parts = _parts(key, 5)
        if parts is None or parts[0] != ROBUST or not parts[2].isdigit():
            return None
        return cls(parts[1], int(parts[2]), parts[3], parts[4])


class LayerKey(NamedTuple):
    """A diagnostic quantity of one layer: ``<quantity>/<layer>`` (e.g. ``drift/blocks.0.attn.qkv``)."""

    quantity: str
    layer: str

    @property
    def key(self) -> str:
        return f"{self.quantity}/{self.layer}"

    @classmethod
    def parse(cls, key: str) -> LayerKey | None:
        """The key's parts, or None for a summary (a key without ``/``, e.g. ``drift_mean``)."""
        quantity, _, layer = key.partition("/")
        return cls(quantity, layer) if quantity and layer else None
