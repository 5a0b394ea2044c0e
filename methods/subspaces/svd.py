"""Block SVDs of layer weights, and their on-disk cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import Tensor

from bench.checkpoint import save_atomic

Factors = tuple[Tensor, Tensor, Tensor]


def block_svd(weight: Tensor, blocks: int = 1) -> Factors:
    """Thin SVD of each of ``blocks`` equal row blocks of a weight read as a matrix.

    Runs in float64 on the CPU and in float32 on an accelerator, and returns that precision.

    Returns:
        ``U`` (B, out/B, p), ``S`` (B, p) descending and ``V`` (B, in, p), with ``W_b = U_b diag(S_b) V_b^T``.
    """
    matrix = weight.detach().reshape(blocks, weight.shape[0] // blocks, -1)
    dtype = torch.float64 if weight.device.type == "cpu" else torch.float32
    u, s, vh = torch.linalg.svd(matrix.to(dtype), full_matrices=False)
    return u, s, vh.mT


def fingerprint(weight: Tensor, samples: int = 4096) -> str:
    """A cheap content hash of a weight: shape, dtype, a strided sample of values and position-weighted sums.

    The sums are rounded to 12 significant digits, so the same weights give the same hash on any device.
    """
    matrix = weight.detach().reshape(weight.shape[0], -1)
    flat = matrix.reshape(-1)
    sample = flat[:: max(1, flat.numel() // samples)][:samples].to("cpu", torch.float64)
    wide = matrix.to(torch.float64)
    rows, cols = wide.sum(1), wide.sum(0)
    sums = (
        rows.sum(),
        wide.square().sum(),
        (rows * torch.arange(len(rows), device=rows.device)).sum(),
        (cols * torch.arange(len(cols), device=cols.device)).sum(),
    )
    digest = hashlib.sha1(f"{tuple(weight.shape)}|{weight.dtype}|".encode())
    digest.update(sample.numpy().tobytes())
    digest.update("|".join(f"{v.item():.11e}" for v in sums).encode())
    return digest.hexdigest()


class SVDCache:
    """Block SVDs on disk, computed once per backbone and weights.

    One file per target layer, named by a hash of the layer name, the block count and :func:`fingerprint` of its
    weight, so changed weights never hit a stale entry. A file is a ``torch.save`` archive of the full factors ``U``,
    ``S``, ``V`` in the weight's dtype, written atomically and loaded memory-mapped (semantic buffers of a model
    left on the CPU stay backed by the file's pages; replacing a file by rename never changes them).

    Attributes:
        hits: lookups answered from disk.
        misses: lookups that ran the SVD.
    """

    version = 1

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.hits = 0
        self.misses = 0

    def path(self, name: str, weight: Tensor, blocks: int) -> Path:
        """The file holding the factors of ``weight`` (layer ``name``, split into ``blocks``)."""
        key = f"{self.version}|{name}|{blocks}|{fingerprint(weight)}"
        return self.folder / f"{hashlib.sha1(key.encode()).hexdigest()}.pt"

    def get(self, name: str, weight: Tensor, blocks: int = 1) -> Factors:
        """:func:`block_svd` of ``weight`` in its dtype and on its device, from disk when cached.

        Weights on the meta device (shapes only, e.g. for parameter counts) bypass the cache.
        """
        if weight.is_meta:
            return block_svd(weight, blocks)
        path = self.path(name, weight, blocks)
        if path.is_file():
            self.hits += 1
            entry = torch.load(path, map_location=weight.device, mmap=True, weights_only=True)
            return entry["U"], entry["S"], entry["V"]
        self.misses += 1
        u, s, v = (t.to(weight.dtype).contiguous() for t in block_svd(weight, blocks))
        save_atomic({"name": name, "U": u.cpu(), "S": s.cpu(), "V": v.cpu()}, path)
        return u, s, v
