"""The subspace layer, its factor groups, routing, merging and injection into a model."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import ConfigError
from bench.targets import resolve_targets
from methods.subspaces.low_rank import LayerStep, LowRankLinear
from methods.subspaces.svd import Factors, SVDCache, block_svd

QKV_PATTERN = r"(.*\.)?qkv"
"""Module names of fused q/k/v projections, split into three blocks when ``split_qkv`` is set."""


def _check_wrappable(module: nn.Module, name: str = "module") -> None:
    if not isinstance(module, nn.Linear | nn.Conv2d):
        raise TypeError(f"{name} is a {type(module).__name__}; only nn.Linear and nn.Conv2d can be wrapped")
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        raise ConfigError(f"{name} is a grouped convolution (groups={module.groups}); only groups=1 can be wrapped")


class SubspaceLayer(nn.Module):
    """A Linear or Conv2d whose weight is ``W_sem`` (frozen) plus K trainable rank-r subspaces.

    Forward paths, in order of precedence:

    - merged (:meth:`merge`, eval only): one plain linear/conv with ``W_eff``;
    - ``dense``: ``W_eff`` materialised each call and differentiated by autograd, which forms the dense weight
      gradient ``g^T x`` (Effort's released code does this);
    - low rank (default): ``x W_sem^T + ((x V_A) * s_A) U_A^T + b`` without a dense weight gradient. Linears run
      :class:`LowRankLinear`; convolutions add a low-rank branch to the frozen ``W_sem`` convolution.

    Routing: when ``route`` is an (N, K) tensor of weights in [0, 1], subspace k's factors get sample n's gradient
    scaled by ``route[n, k]`` (0: none of it); the output and the gradient with respect to the input stay exact.
    Linears weight the samples in :class:`LowRankLinear`'s factor gradients; convolutions run live factors scaled by
    the route beside detached factors scaled by its complement, as one branch of twice the rank. ``route`` applies to
    every forward while set (see :func:`routing`) and is ignored without autograd. ``shared``, when set (see
    :func:`shared_factors`), holds this step's factors and their compute copies as slices of a :class:`FactorStack`
    and takes the place of :meth:`factors`.

    ``base_layer.weight`` holds ``W_sem`` after injection (frozen, in ``state_dict``). Frozen, non-persistent buffers
    (rebuilt from the SVD, never in ``state_dict``): ``sigma_tail`` (B, K*r), the tail factors at injection
    ``u_tail0`` (B, out/B, K*r) and ``v_tail0`` (B, in, K*r); ``u_sem`` (B, out/B, p - K*r) only when ``out/B > in``
    and ``v_sem`` (B, in, p - K*r) only when ``in > out/B`` (else None: the tail's complement is the semantic basis);
    and ``merged_weight`` (None unless merged).

    Args:
        base: the layer to wrap; its parameters are frozen and kept as ``base_layer``, its weight becomes ``W_sem``.
        K: number of artifact subspaces.
        r: rank of each subspace; ``K * r`` must not exceed ``min(out / blocks, in)``.
        blocks: equal row blocks decomposed separately (3 for a fused qkv Linear).
        dense: use the dense forward.
        svd: precomputed :func:`block_svd` of ``base.weight`` (e.g. from :class:`SVDCache`).
    """

    base_layer: nn.Linear | nn.Conv2d
    home: tuple[FactorGroup, int]
    u_sem: Tensor | None
    v_sem: Tensor | None
    sigma_tail: Tensor
    u_tail0: Tensor
    v_tail0: Tensor
    merged_weight: Tensor | None

    def __init__(
        self,
        base: nn.Linear | nn.Conv2d,
        K: int,
        r: int,
        blocks: int = 1,
        dense: bool = False,
        svd: Factors | None = None,
    ) -> None:
        super().__init__()
        _check_wrappable(base)
        weight = base.weight.detach()
        out = weight.shape[0]
        matrix = weight.reshape(out, -1)
        if (isinstance(base, nn.Conv2d) and blocks != 1) or out % blocks:
            raise ValueError(f"cannot split a {type(base).__name__} with {out} outputs into {blocks} row blocks")
        p = min(out // blocks, matrix.shape[1])
        if K < 1 or r < 1 or K * r > p:
            raise ConfigError(f"K={K}, r={r}: need K, r >= 1 and K*r <= {p} (the rank of each weight block)")
        base.requires_grad_(False)
        self.base_layer = base
        self.K, self.r, self.blocks, self.dense = K, r, blocks, dense
        self.route: Tensor | None = None
        self.shared: LayerStep | None = None
        self._custom_conv = isinstance(base, nn.Conv2d) and type(base).forward is not nn.Conv2d.forward

        u, sigma, v = (t.to(weight) for t in (svd if svd is not None else block_svd(weight, blocks)))
        if u.shape != (blocks, out // blocks, p) or v.shape != (blocks, matrix.shape[1], p):
            raise ValueError(
                f"svd factors {tuple(u.shape)}, {tuple(v.shape)} do not fit the weight {tuple(weight.shape)}"
            )
        t = p - K * r
        own = torch.contiguous_format  # own storage, never a view of the full factors (e.g. a memory-mapped file)
        self.register_buffer("u_sem", u[..., :t].clone(memory_format=own) if u.shape[1] > p else None, False)
        self.register_buffer("v_sem", v[..., :t].clone(memory_format=own) if v.shape[1] > p else None, False)
        self.register_buffer("sigma_tail", sigma[:, t:].clone(memory_format=own), persistent=False)
        self.register_buffer("u_tail0", u[..., t:].clone(memory_format=own), persistent=False)
        self.register_buffer("v_tail0", v[..., t:].clone(memory_format=own), persistent=False)
        self.register_buffer("merged_weight", None, persistent=False)
        with torch.no_grad():
            base.weight.sub_(self.initial_tail().reshape(weight.shape))  # W_sem, in place of W
        self.own: FactorGroup | None = FactorGroup([self], [(u[..., t:], sigma[:, t:], v[..., t:])])
        self.train(base.training)

    def extra_repr(self) -> str:
        return f"K={self.K}, r={self.r}, blocks={self.blocks}, dense={self.dense}, merged={self.merged}"

    @property
    def merged(self) -> bool:
        return self.merged_weight is not None

    def factors(self) -> Factors:
        """All subspaces side by side: ``U_A`` (B, out/B, K*r), ``s_A`` (B, K*r), ``V_A`` (B, in, K*r), views of
        this layer's slice of its :class:`FactorGroup`."""
        group, i = self.home
        return group.u[i], group.s[i], group.v[i]

    def subspace(self, k: int) -> Factors:
        """Subspace k's factors ``U_k`` (B, out/B, r), ``s_k`` (B, r), ``V_k`` (B, in, r), as views."""
        columns = slice(k * self.r, (k + 1) * self.r)
        u, s, v = self.factors()
        return u[..., columns], s[..., columns], v[..., columns]

    def subspace_grads(self, k: int) -> list[Tensor | None]:
        """The gradients of :meth:`subspace` (None where its group has none)."""
        group, i = self.home
        columns = slice(k * self.r, (k + 1) * self.r)
        return [None if p.grad is None else p.grad[i][..., columns] for p in (group.u, group.s, group.v)]

    def semantic_weight(self) -> Tensor:
        """``W_sem`` as an (out, in) matrix (a conv kernel flattened to in*kh*kw columns)."""
        weight = self.base_layer.weight
        return weight.reshape(weight.shape[0], -1)

    def initial_tail(self) -> Tensor:
        """``W_tail0 = U_0 diag(sigma_tail) V_0^T``, the tail at injection, as an (out, in) matrix."""
        tail = (self.u_tail0 * self.sigma_tail[:, None]) @ self.v_tail0.mT
        return tail.reshape(-1, tail.shape[-1])

    def pretrained_weight(self) -> Tensor:
        """The wrapped layer's weight before injection, ``W = W_sem + W_tail0``, as an (out, in) matrix."""
        return self.semantic_weight() + self.initial_tail()

    def effective_weight(self, factors: Factors | None = None) -> Tensor:
        """``W_eff = W_sem + U_A diag(s_A) V_A^T`` as an (out, in) matrix, from ``factors`` or :meth:`factors`."""
        return LowRankLinear.effective(self.semantic_weight(), *(factors if factors is not None else self.factors()))

    def delta_weight(self, k: int) -> Tensor:
        """How far subspace k's term ``U_k diag(s_k) V_k^T`` moved since injection, as an (out, in) matrix.

        The K deltas sum to ``W_eff - W``.
        """
        b = slice(k * self.r, (k + 1) * self.r)
        u, s, v = self.subspace(k)
        now = (u * s[:, None]) @ v.mT
        init = (self.u_tail0[..., b] * self.sigma_tail[:, None, b]) @ self.v_tail0[..., b].mT
        return (now - init).reshape(self.semantic_weight().shape)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ``W_eff`` into one weight used by the forward; evaluation only (``train()`` unmerges)."""
        if self.training:
            raise RuntimeError("merge() is for evaluation: call eval() first (training needs the factored weights)")
        self.merged_weight = self.effective_weight()

    def unmerge(self) -> None:
        """Back to the factored forward."""
        self.merged_weight = None

    def train(self, mode: bool = True) -> SubspaceLayer:
        if mode:
            self.unmerge()
        return super().train(mode)

    def forward(self, x: Tensor) -> Tensor:
        bias, route = self.base_layer.bias, self.route
        if self.merged_weight is not None:
            return self._op(x, self.merged_weight, bias)
        shared = self.shared
        factors = (shared.u, shared.s, shared.v) if shared is not None else self.factors()
        if self.dense:
            if route is not None:
                raise ValueError("routing needs the low-rank forward; set dense=False")
            return self._op(x, self.effective_weight(factors), bias)
        keep = self._route_mask(route, x) if route is not None and torch.is_grad_enabled() else None
        if isinstance(self.base_layer, nn.Linear):
            copies = shared.copies if shared is not None else None
            return LowRankLinear.apply(x, self.semantic_weight(), bias, *factors, keep, copies)
        u, s, v = (f[0] for f in factors)  # a convolution has one block
        if keep is not None:  # live factors weighted by the route beside detached ones weighted by the rest
            u, v = torch.cat([u, u.detach()], -1), torch.cat([v, v.detach()], -1)
            s = torch.cat([s * keep, s.detach() * (1 - keep)], -1)  # (N, 2c)
        low_rank = self._op(x, v.mT, None) * s[..., None, None]
        return self._op(x, self.semantic_weight(), bias) + F.conv2d(low_rank, u[..., None, None])

    def _op(self, x: Tensor, matrix: Tensor, bias: Tensor | None) -> Tensor:
        """The base layer's operation (with its stride, padding and dilation for a conv) with weight ``matrix``."""
        base = self.base_layer
        if isinstance(base, nn.Linear):
            return F.linear(x, matrix, bias)
        kernel = matrix.reshape(-1, *base.weight.shape[1:])
        if self._custom_conv:  # e.g. timm's Conv2dSame pads by input size in its own forward
            params = {"weight": kernel, "bias": bias}  # a None bias switches the base's off
            return torch.func.functional_call(base, params, (x,))  # type: ignore[arg-type]
        return base._conv_forward(x, kernel, bias)

    def _route_mask(self, route: Tensor, x: Tensor) -> Tensor:
        """``route`` (N, K) as (N, K*r) weights over the low-rank columns of every block."""
        if route.shape != (x.shape[0], self.K):
            raise ValueError(f"route has shape {tuple(route.shape)}; expected (batch, K) = ({x.shape[0]}, {self.K})")
        route = route.to(x.device)  # in the dtype routing() gave it
        return route[:, :, None].expand(-1, -1, self.r).flatten(1)  # no repeat_interleave: it syncs on CUDA


class FactorGroup(nn.Module):
    """The factors of same-shape subspace layers as three parameters with a leading layer axis: ``u``
    (L, B, out/B, K*r), ``s`` (L, B, K*r) and ``v`` (L, B, in, K*r), columns ordered subspace by subspace.

    A layer made on its own holds a group of one (``layer.own``); :func:`group_layers` gathers same-shape layers
    into one group held by their model. Each layer reads its slice through ``layer.home = (group, index)``; slot
    ``(l, k)`` of a parameter is layer l's subspace k (see :class:`bench.slot_optim.Slots`).
    """

    def __init__(self, layers: list[SubspaceLayer], factors: Sequence[Factors]) -> None:
        super().__init__()
        u, s, v = (torch.stack([f[i] for f in factors]) for i in range(3))  # own storage, never a view of the SVD
        self.u, self.s, self.v = nn.Parameter(u), nn.Parameter(s), nn.Parameter(v)
        self.layers = layers  # a plain list: the layers are registered where they sit in the model
        self.K, self.r = layers[0].K, layers[0].r
        for i, layer in enumerate(layers):
            layer.home = (self, i)

    def extra_repr(self) -> str:
        return f"layers={len(self.layers)}, K={self.K}, r={self.r}"


def _group_key(m: SubspaceLayer) -> tuple[object, ...]:
    u, _, v = m.factors()
    return (type(m.base_layer), m.dense, m.K, u.shape, v.shape, u.dtype, u.device)


def group_layers(model: nn.Module, layers: Sequence[SubspaceLayer]) -> list[FactorGroup]:
    """Gather ``layers`` by kind, forward path, factor shapes, dtype and device (in first-seen order) into one
    :class:`FactorGroup` each, held by ``model`` in ``model.subspace_factors``."""
    by_key: dict[tuple[object, ...], list[SubspaceLayer]] = {}
    for m in layers:
        by_key.setdefault(_group_key(m), []).append(m)
    groups = []
    for members in by_key.values():
        groups.append(FactorGroup(members, [tuple(f.detach() for f in m.factors()) for m in members]))  # type: ignore[misc]
        for m in members:
            m.own = None
    held = getattr(model, "subspace_factors", None)
    if isinstance(held, nn.ModuleList):
        held.extend(groups)
    else:
        model.subspace_factors = nn.ModuleList(groups)
    return groups


def subspace_layers(model: nn.Module) -> Iterator[tuple[str, SubspaceLayer]]:
    """The :class:`SubspaceLayer` modules of ``model`` with their names."""
    return ((n, m) for n, m in model.named_modules() if isinstance(m, SubspaceLayer))


@contextmanager
def routing(layers: Sequence[SubspaceLayer], route: Tensor | None) -> Iterator[None]:
    """Set ``route`` (N, K) on each of ``layers`` for the forward passes inside the block.

    The route is cast once to the autocast dtype active on its device, the dtype the layers' products run in.
    """
    if route is not None and torch.is_autocast_enabled(route.device.type):
        route = route.to(torch.get_autocast_dtype(route.device.type))
    for layer in layers:
        layer.route = route
    try:
        yield
    finally:
        for layer in layers:
            layer.route = None


@contextmanager
def merged(model: nn.Module) -> Iterator[None]:
    """Merge every subspace layer (the model must be in eval mode) and unmerge on exit."""
    layers = [m for _, m in subspace_layers(model)]
    try:
        for layer in layers:
            layer.merge()
        yield
    finally:
        for layer in layers:
            layer.unmerge()


def inject(
    model: nn.Module,
    targets: str | list[str],
    K: int,
    r: int,
    split_qkv: bool = True,
    dense: bool = False,
    cache: SVDCache | None = None,
    qkv_pattern: str = QKV_PATTERN,
) -> list[str]:
    """Replace every module whose full name matches a target with a :class:`SubspaceLayer` wrapping it.

    Args:
        model: modified in place; the wrapped layers' own parameters are frozen, nothing else is touched.
        targets: presets or regexes (:func:`resolve_targets`), matched with ``re.fullmatch`` against
            ``named_modules()``.
        K: number of artifact subspaces.
        r: rank of each subspace.
        split_qkv: decompose the q, k and v row blocks of Linears matching ``qkv_pattern`` separately.
        dense: give the layers the dense forward.
        cache: where SVDs are read from and written to; None computes them.
        qkv_pattern: regex (``re.fullmatch``) of fused qkv projections.

    Returns:
        The names of the replaced modules.
    """
    patterns = [resolve_targets(model, t) for t in ([targets] if isinstance(targets, str) else targets)]
    compiled = [re.compile(p) for p in patterns]
    modules = dict(model.named_modules())
    names = [n for n in modules if n and any(c.fullmatch(n) for c in compiled)]
    if not names:
        candidates = [n for n, m in modules.items() if isinstance(m, nn.Linear | nn.Conv2d)][:6]
        raise ConfigError(f"no module name matches {patterns}; layer names look like {candidates}")
    for name in names:
        if isinstance(modules[name], SubspaceLayer):
            raise ValueError(f"{name} is already a SubspaceLayer")
        _check_wrappable(modules[name], name)
    for name in names:
        module = modules[name]
        blocks = 3 if split_qkv and re.fullmatch(qkv_pattern, name) else 1
        svd = cache.get(name, module.weight, blocks) if cache is not None else None
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, SubspaceLayer(module, K, r, blocks, dense, svd))
    group_layers(model, [model.get_submodule(n) for n in names])  # type: ignore[misc]
    return names
