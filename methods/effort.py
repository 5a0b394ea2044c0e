"""Effort (ICML 2025): one rank-1 SVD residual per attention projection, q, k and v decomposed separately.

``effort`` trains as the released code does (cross-entropy only); ``effort-paper`` adds the paper's orthogonality
and keep-singular-value losses (weight 1.0 on their mean over layers, i.e. 1.0 / number of layers on their sum).
Both are MASM's machinery with K = 1, r = 1, no routing and no mask (docs/masm.md, section 1).
"""

from __future__ import annotations

from typing import Any

from bench.registry import register_variant
from methods import masm  # noqa: F401  (registers the base method)

EFFORT: dict[str, Any] = {"K": 1, "r": 1, "targets": "auto", "split_qkv": True, "routing": "none", "mask": "none"}

register_variant(
    "effort",
    "masm",
    "Effort as released: rank-1 SVD residuals, cross-entropy only",
    **EFFORT,
    orth="none",
    spectral="none",
)
register_variant(
    "effort-paper",
    "masm",
    "Effort as published: plus orthogonality and keep-singular-value losses",
    **EFFORT,
    orth="effort",
    lambda_orth=1.0,
    spectral="energy",
    lambda_spec=1.0,
)
