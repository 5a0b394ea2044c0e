"""MASM: multi-artifact subspaces with selective layer masks, and its named ablations (docs/masm.md, section 2).

Every target weight is split by SVD into a frozen semantic principal subspace and K learnable rank-r artifact
subspaces (:class:`methods.subspaces.layer.SubspaceLayer`). Routing binds subspace k to training forgery method k; a
selective layer mask bounds how fast any subspace fits; orthogonality and spectral-consistency constraints keep the
subspaces diverse and the spectrum stable. Effort (K = 1, r = 1, no routing, no mask) is the same machinery with
other switches (``methods/effort.py``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench import distributed, figures
from bench.adapter import Activity, Adapter, Artifact
from bench.backbone import classifier
from bench.diagnostics import pairwise_angles, weight_report
from bench.errors import ConfigError
from bench.metric_keys import DIAG, TRAIN, grouped
from bench.options import MethodOptions, bound, per_forgery
from bench.registry import register_method, register_variant
from bench.schema import check_choice
from bench.slot_optim import Slots
from bench.targets import resolve_targets
from methods import masks
from methods.subspaces.constraints import effort_orth_loss, energy_loss, orth_loss, spectral_loss
from methods.subspaces.layer import FactorGroup, SubspaceLayer, inject, merged, routing, subspace_layers
from methods.subspaces.stack import shared_factors, stack_factors, subspace_drift
from methods.subspaces.svd import SVDCache


def svd_cache() -> SVDCache:
    """The on-disk SVD cache: ``BENCH_SVD_CACHE`` or ``~/.cache/deepfake-bench/svd``."""
    default = Path.home() / ".cache" / "deepfake-bench" / "svd"
    return SVDCache(os.environ.get("BENCH_SVD_CACHE") or default)


@dataclass
class MASMOptions(MethodOptions):
    """Switches of the SVD subspace methods.

    Attributes:
        K: artifact subspaces; ``None`` is the number of forgery methods of the training card.
        r: rank of each subspace.
        targets: a preset (``attn``, ``mlp``, ``all``, ``effnet``), a regex over module names, or ``auto``
            (``attn`` for ViTs, ``effnet`` for EfficientNets).
        split_qkv: decompose the q, k and v blocks of a fused qkv projection separately.
        routing: ``method`` (subspace k learns from reals + fakes of forgery method k), ``balanced`` (the same,
            each real's gradient shared equally by the K subspaces, so each learns from reals and fakes in the batch's
            proportion rather than K times more from reals) or ``none``.
        mask: ``state``, ``gradsnr``, ``random`` or ``none``.
        mask_every: optimizer steps between mask refreshes.
        rho_max: largest fraction of layers frozen for a subspace (``state``, ``random``).
        tau: relative loss gap at which a subspace reaches ``rho_max``.
        keep: fraction of layers kept per subspace (``gradsnr``).
        ema: decay of the loss and gradient EMAs.
        orth: ``masm`` (docs/masm.md, section 2.3), ``effort`` (Effort paper's loss) or ``none``.
        lambda_orth: weight of the orthogonality loss (averaged over layers).
        spectral: ``tail`` (svdvals of the artifact part vs the initial tail), ``energy`` (Effort's
            keep-singular-value loss) or ``none``.
        lambda_spec: weight of the spectral loss (averaged over layers).
        dense: materialise ``W_eff`` every step and let autograd form its dense gradient (Effort's released code;
            for benchmarks).
        seed: seeds the ``random`` mask.
    """

    K: int | None = None
    r: int = 1
    targets: str = "auto"
    split_qkv: bool = True
    routing: str = "balanced"  # chosen on validation over method (grids/tune-routing.yaml)
    mask: str = "state"
    mask_every: int = 20
    rho_max: float = 0.5
    tau: float = 0.5
    keep: float = 0.5
    ema: float = 0.9
    orth: str = "masm"
    lambda_orth: float = 0.1
    spectral: str = "tail"
    lambda_spec: float = 0.1
    dense: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        choices = {
            "routing": ("method", "balanced", "none"),
            "mask": ("state", "gradsnr", "random", "none"),
            "orth": ("masm", "effort", "none"),
            "spectral": ("tail", "energy", "none"),
        }
        for key, valid in choices.items():
            check_choice(f"method.options.{key}", getattr(self, key), valid)
        if self.dense and self.routing != "none":
            raise ConfigError("method.options.dense needs routing: none (routing uses the low-rank forward)")

    def bind(self, forgeries: Sequence[str] | None) -> None:
        """Fill ``K`` from the training card and check that routing has a subspace per forgery method."""
        self.K = per_forgery(self.K, forgeries)
        if forgeries is not None and self.routing != "none" and len(forgeries) != self.K:
            raise ConfigError(
                f"method.options.K={self.K} but routing: {self.routing} needs one subspace per training forgery method "
                f"({len(forgeries)}: {', '.join(forgeries)}); set K to that or routing: none"
            )


ORTH = {"masm": orth_loss, "effort": effort_orth_loss}
SPECTRAL = {"tail": spectral_loss, "energy": energy_loss}
SPECTRA = Artifact(
    "spectra.npz",
    figures.spectra_plot,
    "Singular values before and after training, first, middle and last target layer (first seed)",
)
MASK_HISTORY = Artifact(
    "mask_history.npz", figures.mask_heatmap, "Selective layer mask over training (first seed; dark = frozen)"
)


class MASM(Adapter):
    """The backbone with SVD subspace layers, routing, masks and constraints."""

    artifacts = (SPECTRA, MASK_HISTORY)  # the mask history only where a mask ran
    activity = (
        Activity(grouped(DIAG, "masked_fraction"), "masked"),
        Activity(grouped(TRAIN, "orth"), "orth"),
        Activity(grouped(TRAIN, "spec"), "spec"),
        Activity(grouped(DIAG, "routed_loss_spread"), "routed spread"),
        Activity(grouped(DIAG, "factor_drift"), "factor drift"),
        Activity(grouped(DIAG, "diversity_mean"), "diversity"),
    )
    mask: Tensor
    loss_ema: Tensor
    active: Tensor
    weight_norm: Tensor

    def __init__(self, backbone: nn.Module, options: MASMOptions, decompose: bool = True) -> None:
        super().__init__(backbone)
        self.options = options
        self.K = bound(options.K, "K")
        backbone.requires_grad_(False)
        classifier(backbone).requires_grad_(True)
        self.decompose(resolve_targets(backbone, options.targets) if decompose else [])

    def decompose(self, targets: str | list[str]) -> None:
        """Wrap the ``targets`` (a regex, or exact module names) in subspace layers and (re)build the state that
        follows the layers (mask, EMAs, gradient statistics)."""
        o = self.options
        if targets:
            inject(self.backbone, targets, self.K, o.r, o.split_qkv, o.dense, svd_cache())
        named = list(subspace_layers(self.backbone))
        self.layer_names = [n for n, _ in named]
        self.layers: list[SubspaceLayer] = [m for _, m in named]
        self.groups: list[FactorGroup] = list({id(m.home[0]): m.home[0] for m in self.layers}.values())
        position = {id(m): i for i, m in enumerate(self.layers)}
        for i, group in enumerate(self.groups):  # buffers, so that they follow the model to its device
            self.register_buffer(f"rows{i}", torch.tensor([position[id(m)] for m in group.layers]), persistent=False)
            self.register_buffer(f"live{i}", torch.ones(len(group.layers), self.K, dtype=torch.bool), persistent=False)
        L = len(self.layers)
        with torch.no_grad():
            norms = [m.pretrained_weight().norm() for m in self.layers]
        self.register_buffer("weight_norm", torch.stack(norms) if norms else torch.zeros(0), persistent=False)
        self.register_buffer("mask", torch.ones(L, self.K, dtype=torch.bool))
        self.register_buffer("loss_ema", torch.full((self.K,), float("nan")))
        self.history: list[Tensor] = []
        self.grad_stats = [masks.GradStats(o.ema) for _ in self.groups]
        self.generator = torch.Generator().manual_seed(o.seed)
        self.register_buffer("active", torch.zeros(self.K, dtype=torch.bool), persistent=False)  # routed since step

    def _group_buffers(self, kind: str) -> list[Tensor]:
        return [getattr(self, f"{kind}{i}") for i in range(len(self.groups))]

    def slots(self) -> dict[Tensor, Slots]:
        """Each group's factors, slot (layer, subspace) live where neither masked nor unrouted; none without a mask
        or routing (every slot is always live)."""
        if self.options.mask == "none" and self.options.routing == "none":
            return {}
        return {
            p: Slots(live, self.options.r)
            for group, live in zip(self.groups, self._group_buffers("live"), strict=True)
            for p in (group.u, group.s, group.v)
        }

    def route(self, forgeries: Tensor) -> Tensor | None:
        """(N, K) routing weights: a fake of forgery method j reaches subspace j alone, a real every subspace (with
        weight 1, or 1/K under ``balanced``)."""
        if self.options.routing == "none":
            return None
        fake = (forgeries >= 0) & (forgeries < self.K)
        onehot = forgeries[:, None] == torch.arange(self.K, device=forgeries.device)  # not F.one_hot: it syncs on CUDA
        real = 1 / self.K if self.options.routing == "balanced" else 1.0
        return torch.where(fake[:, None], onehot.float(), real)

    def training_loss(self, images: Tensor, labels: Tensor, forgeries: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        route = self.route(forgeries)
        with routing(self.layers, route), shared_factors(self.layers) as stacks:
            logits = self(images)
        per_sample = F.cross_entropy(logits, labels, reduction="none")
        ce = per_sample.mean()
        parts: dict[str, Tensor] = {"ce": ce.detach()}
        weights = route if route is not None else torch.ones(len(labels), self.K, device=labels.device)
        counts = weights.sum(0)
        seen = counts > 0
        self.active |= seen
        self._update_loss_ema((per_sample.detach()[:, None] * weights).sum(0) / counts.clamp_min(1), seen)
        loss = ce
        with torch.autocast(images.device.type, enabled=False):  # constraints in the factors' precision, never bf16
            if self.options.orth != "none" and stacks:
                parts["orth"] = torch.cat([ORTH[self.options.orth](s) for s in stacks]).mean()
                loss = loss + self.options.lambda_orth * parts["orth"]
            if self.options.spectral != "none" and stacks:
                parts["spec"] = torch.cat([SPECTRAL[self.options.spectral](s) for s in stacks]).mean()
                loss = loss + self.options.lambda_spec * parts["spec"]
        return loss, {k: v.detach() for k, v in parts.items()}

    @torch.no_grad()
    def _update_loss_ema(self, routed: Tensor, seen: Tensor) -> None:
        routed, seen = routed.to(self.loss_ema), seen.to(self.loss_ema.device)
        fresh = seen & self.loss_ema.isnan()
        decayed = self.options.ema * self.loss_ema + (1 - self.options.ema) * routed
        self.loss_ema.copy_(torch.where(fresh, routed, torch.where(seen, decayed, self.loss_ema)))

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Weight decay on the head's weight and the factors U, V; none on singular values and biases."""
        singular = {id(g.s) for g in self.groups}
        decay = [p for _, p in self.trainable_parameters() if p.ndim >= 2 and id(p) not in singular]
        other = [p for _, p in self.trainable_parameters() if p.ndim < 2 or id(p) in singular]
        return [
            g
            for g in ({"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0})
            if g["params"]
        ]

    @torch.no_grad()
    def before_optimizer_step(self, step: int) -> None:
        """Record gradient statistics, then mark the masked and the unrouted (layer, subspace) slots not live and
        zero their gradients (so clipping sees only what steps); on the device, without a host sync."""
        active = distributed.any_across(self.active)  # every process must step the same slots
        live = self.mask & active[None, :]
        for i, (group, rows, slot_live) in enumerate(
            zip(self.groups, self._group_buffers("rows"), self._group_buffers("live"), strict=True)
        ):
            grads = [p.grad for p in (group.u, group.s, group.v) if p.grad is not None]
            slots = Slots(slot_live, self.options.r)
            if self.options.mask == "gradsnr" and len(grads) == 3:
                self.grad_stats[i].update(grads, slots, self.active[None, :].expand(len(group.layers), -1))
            slot_live.copy_(live.index_select(0, rows))
            for grad in grads:
                grad.mul_(slots.mask(grad.ndim))
        self.active.zero_()

    def after_optimizer_step(self, step: int) -> None:
        if self.options.mask != "none" and (step + 1) % self.options.mask_every == 0:
            self.refresh_mask()

    @torch.no_grad()
    def refresh_mask(self) -> None:
        """Recompute the mask by the configured rule (on the device) and append it to the history."""
        o, L = self.options, len(self.layers)
        ema = torch.where(self.loss_ema.isnan(), self.loss_ema.nanmean().nan_to_num(0.0), self.loss_ema)
        if o.mask == "state":
            new = masks.state_mask(ema, self.drift(), o.rho_max, o.tau)
        elif o.mask == "random":
            new = masks.random_mask(ema.cpu(), L, o.rho_max, o.tau, self.generator)  # a host generator: portable
        else:
            new = masks.gradsnr_mask(self.snr(), o.keep)
        self.mask.copy_(new)
        self.history.append(self.mask.clone())

    def _by_layer(self, per_group: list[Tensor]) -> Tensor:
        """(layers, K) from each group's (its layers, K) rows."""
        out = torch.zeros(len(self.layers), self.K, device=self.mask.device, dtype=per_group[0].dtype)
        for rows, values in zip(self._group_buffers("rows"), per_group, strict=True):
            out.index_copy_(0, rows, values.to(out.dtype))
        return out

    @torch.no_grad()
    def snr(self) -> Tensor:
        """(layers, K) gradient bias^2 / variance per slot (the ``gradsnr`` rule's score)."""
        live = self._group_buffers("live")
        return self._by_layer([s.snr(Slots(v, self.options.r)) for s, v in zip(self.grad_stats, live, strict=True)])

    @torch.no_grad()
    def drift(self) -> Tensor:
        """(layers, K) relative drift ``||dW_lk||_F / ||W_l||_F`` of each subspace's term since injection."""
        if not self.layers:
            return torch.zeros(0, self.K)
        return self._by_layer([subspace_drift(s) for s in stack_factors(self.layers)]) / self.weight_norm[:, None]

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        with super().evaluating(), merged(self.backbone):
            yield

    def get_extra_state(self) -> dict[str, Any]:
        return {
            "history": [h.cpu() for h in self.history],
            "grad_stats": [stats.state_dict() for stats in self.grad_stats],
            "generator": self.generator.get_state(),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.history = [h.to(self.mask.device) for h in state["history"]]
        for stats, saved in zip(self.grad_stats, state["grad_stats"], strict=True):
            stats.load_state_dict(saved)
        self.generator.set_state(state["generator"])

    @torch.no_grad()
    def diagnostics(self, folder: Path) -> dict[str, float]:
        named = {
            n: (m.pretrained_weight(), m.effective_weight()) for n, m in zip(self.layer_names, self.layers, strict=True)
        }
        scalars, spectra = weight_report(named)
        scalars["factor_drift"] = float(self.drift().mean())
        ema = self.loss_ema[~self.loss_ema.isnan()].double().cpu()
        if len(ema) > 1:  # how far apart the subspaces' routed losses ended (coefficient of variation)
            scalars["routed_loss_spread"] = float(ema.std() / ema.mean().clamp_min(1e-12))
        angles = [pairwise_angles(_subspace_bases(m)) for m in self.layers] if self.K > 1 else []
        if angles:
            upper = np.triu_indices(self.K, 1)
            scalars["diversity_mean"] = float(np.mean([a[upper].mean() for a in angles]))
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / SPECTRA.file, **spectra)  # type: ignore[arg-type]  # numpy's stub types **kwds badly
        if self.history:
            np.savez(
                folder / MASK_HISTORY.file,
                masks=torch.stack(self.history).cpu().numpy(),
                layers=np.array(self.layer_names),
                every=self.options.mask_every,
            )
            scalars["masked_fraction"] = float(1 - torch.stack(self.history).float().mean())
        if angles:
            np.save(folder / "subspace_angles.npy", np.stack(angles))
        return scalars


def _subspace_bases(layer: SubspaceLayer) -> list[np.ndarray]:
    """Column bases of each subspace's left factor (blocks stacked along the rows)."""
    us = (layer.subspace(k)[0] for k in range(layer.K))
    return [u.detach().reshape(-1, u.shape[-1]).double().cpu().numpy() for u in us]


PERF_ROWS = (  # the low-rank path without routing, and dense W_eff (Effort's way), on attention and on all layers
    "masm",
    "masm:routing=none",
    "masm:routing=none:dense=true",
    "masm:routing=none:targets=all",
    "masm:routing=none:targets=all:dense=true",
)


@register_method(
    "masm",
    MASMOptions,
    "multi-artifact SVD subspaces, routing by forgery method, layer masks, constraints",
    artifacts=MASM.artifacts,
    perf_rows=PERF_ROWS,
    activity=MASM.activity,
)
def build(backbone: nn.Module, options: MASMOptions) -> Adapter:
    return MASM(backbone, options)


ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "masm/no-mask": ("no selective layer mask", {"mask": "none"}),
    "masm/random-mask": ("random layers masked at the state rule's ratio (control)", {"mask": "random"}),
    "masm/gradsnr-mask": ("mask by gradient bias^2/variance (v3 reading)", {"mask": "gradsnr"}),
    "masm/no-orth": ("without the orthogonality constraint", {"orth": "none"}),
    "masm/no-spec": ("without the spectral-consistency constraint", {"spectral": "none"}),
    "masm/no-constraints": ("without either constraint", {"orth": "none", "spectral": "none"}),
    "masm/no-routing": ("every subspace learns from every sample", {"routing": "none"}),
    "masm/K=1": ("one artifact subspace (Effort-like, with constraints)", {"K": 1, "routing": "none"}),
    "masm/r=2": ("rank 2 per subspace", {"r": 2}),
    "masm/r=4": ("rank 4 per subspace", {"r": 4}),
    "masm/targets=mlp": ("MLP layers instead of attention", {"targets": "mlp"}),
    "masm/targets=all": ("attention and MLP layers", {"targets": "all"}),
}
for _name, (_summary, _preset) in ABLATIONS.items():
    register_variant(_name, "masm", _summary, **_preset)
