"""SubspaceLayer: identity at injection, forward paths, routing, merging, constraint losses, injection and cache."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from torch import Tensor, nn

from methods.subspaces.constraints import effort_orth_loss, energy_loss, orth_loss, small_svdvals, spectral_loss
from methods.subspaces.layer import SubspaceLayer, inject, merged, routing, subspace_layers
from methods.subspaces.low_rank import LowRankLinear, compute_copies
from methods.subspaces.stack import FactorStack, shared_factors, stack_factors, subspace_drift
from methods.subspaces.svd import SVDCache, fingerprint

F64 = torch.float64


def vit(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_vit", pretrained=False, num_classes=2, img_size=32).to(dtype).eval()


def lite0(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=2).to(dtype).eval()


def images(model: nn.Module, n: int = 4, size: int = 32) -> Tensor:
    dtype = next(model.parameters()).dtype
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=dtype)


@torch.no_grad()
def perturb(model: nn.Module, scale: float = 0.1) -> None:
    """Move every factor (a stand-in for training)."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _, layer in subspace_layers(model):
            for f in layer.factors():
                f.add_(scale * f.abs().mean() * torch.randn(f.shape, generator=g, dtype=f.dtype))


def layers_of(model: nn.Module) -> list[SubspaceLayer]:
    return [m for _, m in subspace_layers(model)]


def factor_grads(model: nn.Module) -> dict[str, Tensor | None]:
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad and ".base_layer." not in n}


def relative_error(a: Tensor, b: Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


# Each case: model factory, targets, split_qkv, input size, number of wrapped layers.
CASES = {
    "vit-split": (vit, "all", True, 32, 24),
    "vit-fused": (vit, "all", False, 32, 24),
    "lite0": (lite0, ["all", "conv_stem"], True, 64, 33),  # conv_stem is a Conv2dSame (TF padding)
}


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (F64, 1e-10)])
@pytest.mark.parametrize("case", list(CASES))
def test_identity_at_init(case: str, dtype: torch.dtype, tol: float) -> None:
    make, targets, split, size, count = CASES[case]
    model = make(dtype)
    x = images(model, size=size)
    with torch.no_grad():
        before = model(x)
        names = inject(model, targets, K=3, r=2, split_qkv=split)
        after = model(x)
    assert len(names) == count
    assert all(isinstance(model.get_submodule(n), SubspaceLayer) for n in names)
    assert relative_error(after, before) < tol


def test_presets_select_the_documented_layers() -> None:
    model = lite0()
    pointwise = {
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1 and n.startswith("blocks.")
    }
    assert set(inject(model, "all", K=1, r=1)) == pointwise | {"conv_head"}
    names = inject(vit(), "attn", K=1, r=1)
    assert names == [f"blocks.{i}.attn.{p}" for i in range(6) for p in ("qkv", "proj")]
    assert isinstance(lite0().conv_stem, Conv2dSame)


def test_split_qkv_decomposes_q_k_v_separately() -> None:
    model = vit(F64)
    weight = model.blocks[0].attn.qkv.weight.detach().clone()
    inject(model, "attn", K=2, r=3)
    layer = model.blocks[0].attn.qkv
    assert layer.blocks == 3 and layer.subspace(0)[0].shape == (3, 64, 3) and layer.u_tail0.shape == (3, 64, 6)
    for b, rows in enumerate(weight.split(64)):
        sigma = torch.linalg.svdvals(rows)
        torch.testing.assert_close(layer.sigma_tail[b], sigma[-6:])
        singular = torch.cat([layer.subspace(0)[1][b], layer.subspace(1)[1][b]])
        torch.testing.assert_close(singular, sigma[-6:])  # subspace 0: largest
    assert model.blocks[0].attn.proj.blocks == 1
    assert not any(p.requires_grad for p in layer.base_layer.parameters())
    torch.testing.assert_close(layer.pretrained_weight(), weight, rtol=1e-12, atol=1e-14)
    semantic = layer.base_layer.weight.detach().reshape(3, 64, 64)  # W_sem in place of W: rank 64 - 6 per block
    assert (torch.linalg.svdvals(semantic)[:, -6:] < 1e-12).all() and (
        torch.linalg.svdvals(semantic)[:, :58] > 1e-3
    ).all()


def test_only_the_long_side_of_a_non_square_weight_keeps_a_semantic_basis() -> None:
    model = vit()
    inject(model, "all", K=2, r=2)
    qkv, fc1, fc2 = model.blocks[0].attn.qkv, model.blocks[0].mlp.fc1, model.blocks[0].mlp.fc2
    assert qkv.u_sem is None and qkv.v_sem is None  # 64 x 64 blocks
    assert fc1.u_sem is not None and fc1.u_sem.shape == (1, 192, 60) and fc1.v_sem is None  # 192 x 64
    assert fc2.v_sem is not None and fc2.v_sem.shape == (1, 192, 60) and fc2.u_sem is None  # 64 x 192
    attn = vit()
    inject(attn, "attn", K=4, r=1)
    tails = sum(m.blocks * (m.u_tail0.shape[1] + m.v_tail0.shape[1] + 1) * 4 for _, m in subspace_layers(attn))
    assert sum(b.numel() for b in attn.buffers()) == tails == 6 * (3 * 129 + 129) * 4  # thin tail factors only


def test_semantic_part_frozen_and_outside_state_dict() -> None:
    model = vit().requires_grad_(False)
    inject(model, "all", K=2, r=1)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    assert {"sigma_tail", "u_tail0", "v_tail0"} <= {n.rsplit(".", 1)[-1] for n in buffers}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("subspace_factors.") for n in trainable)
    state = model.state_dict()
    assert not set(buffers) & set(state) and "blocks.0.attn.qkv.base_layer.weight" in state
    factors = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    F.cross_entropy(model(images(model)), torch.tensor([0, 1, 0, 1])).backward()
    optimizer.step()

    assert all(not torch.equal(p, factors[n]) for n, p in model.named_parameters() if p.requires_grad)
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, buffers[name]) and not buffer.requires_grad and buffer.grad is None


@pytest.mark.parametrize("case", ["vit-split", "lite0"])
def test_low_rank_dense_and_merged_outputs_agree(case: str) -> None:
    make, targets, split, size, _ = CASES[case]
    model = make(F64)
    inject(model, targets, K=2, r=2, split_qkv=split)
    perturb(model)
    x = images(model, size=size)
    with torch.no_grad():
        low_rank = model(x)
        with merged(model):
            merged_out = model(x)
        for _, layer in subspace_layers(model):
            layer.dense = True
        dense = model(x)
    torch.testing.assert_close(merged_out, low_rank, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dense, low_rank, rtol=1e-10, atol=1e-12)


def loss_and_grads(model: nn.Module, x: Tensor) -> tuple[Tensor, dict[str, Tensor | None]]:
    model.zero_grad()
    loss = F.cross_entropy(model(x), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    return loss.detach(), {n: g.clone() for n, g in factor_grads(model).items() if g is not None}


@pytest.mark.parametrize("case", ["vit-split", "lite0"])
def test_dense_and_low_rank_same_loss_and_factor_gradients(case: str) -> None:
    make, targets, split, size, _ = CASES[case]
    model = make(F64).requires_grad_(False)
    inject(model, targets, K=2, r=2, split_qkv=split)
    perturb(model)
    x = images(model, size=size)
    loss, grads = loss_and_grads(model, x)
    for _, layer in subspace_layers(model):
        layer.dense = True
    dense_loss, dense_grads = loss_and_grads(model, x)
    torch.testing.assert_close(dense_loss, loss, rtol=1e-12, atol=0)
    groups = {id(layer.home[0]) for _, layer in subspace_layers(model)}
    assert grads.keys() == dense_grads.keys() and len(grads) == 3 * len(groups)
    for name, grad in grads.items():
        torch.testing.assert_close(dense_grads[name], grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("routed", [False, True])
def test_low_rank_linear_gradients_match_finite_differences(routed: bool) -> None:
    """Two row blocks of two rows, c = 2 columns; with routing, a finite-difference check of the masked gradients."""
    g = torch.Generator().manual_seed(4)
    x, w_sem, bias, u, s, v = (
        torch.randn(shape, generator=g, dtype=F64, requires_grad=True)
        for shape in ((2, 3, 5), (4, 5), (4,), (2, 2, 2), (2, 2), (2, 5, 2))
    )
    keep = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=F64) if routed else None
    if not routed:
        assert torch.autograd.gradcheck(LowRankLinear.apply, (x, w_sem, bias, u, s, v, None))
        return
    out = LowRankLinear.apply(x, w_sem, bias, u, s, v, keep)
    torch.testing.assert_close(out, LowRankLinear.apply(x, w_sem, bias, u, s, v, None))
    weights = torch.randn(out.shape, generator=g, dtype=F64)
    grads = torch.autograd.grad((out * weights).sum(), (u, s, v), retain_graph=True)
    # column 1 of every block learns from sample 1 only: its gradient is that of sample 1's loss alone
    only = torch.autograd.grad((out[1:] * weights[1:]).sum(), (u, s, v))
    for got, alone in zip(grads, only, strict=True):
        torch.testing.assert_close(got[..., 1], alone[..., 1])
    plain = torch.autograd.grad((LowRankLinear.apply(x, w_sem, bias, u, s, v, None) * weights).sum(), (u, s, v))
    for got, want in zip(grads, plain, strict=True):
        torch.testing.assert_close(got[..., 0], want[..., 0])  # column 0 sees both samples


def routed_run(model: nn.Module, x: Tensor, route: Tensor | None, samples: list[int] | None = None) -> Tensor:
    """Backward of the mean cross-entropy (or of the summed loss of ``samples`` over N); returns the input grad."""
    model.zero_grad()
    x = x.clone().requires_grad_(True)
    labels = torch.arange(len(x)) % 2
    with routing(layers_of(model), route):
        logits = model(x)
    if samples is None:
        F.cross_entropy(logits, labels).backward()
    else:
        (F.cross_entropy(logits[samples], labels[samples], reduction="sum") / len(x)).backward()
    assert x.grad is not None
    return x.grad


def subspace_grads(model: nn.Module, k: int) -> list[Tensor | None]:
    return [g for _, layer in subspace_layers(model) for g in layer.subspace_grads(k)]


class ConvNet(nn.Module):
    """Two wrapped convolutions: zero padding with stride, and TF 'same' padding."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.b = Conv2dSame(8, 6, 3, stride=2)
        self.head = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.b(torch.tanh(self.a(x))).mean((2, 3)))


def routable(case: str, n: int, K: int) -> tuple[nn.Module, Tensor]:
    """A ViT or a two-conv net with K rank-1 subspaces in every target, only the factors trainable, and n inputs."""
    if case == "vit":
        model = vit(F64)
        x = images(model, n=n)
        inject(model, "all", K=K, r=1)
    else:
        torch.manual_seed(0)
        model, x = ConvNet().to(F64), torch.randn(n, 4, 11, 11, dtype=F64)
        inject(model, "a|b", K=K, r=1)
    model.requires_grad_(False)
    model.subspace_factors.requires_grad_(True)
    perturb(model)
    return model, x


@pytest.mark.parametrize("case", ["vit", "conv"])
def test_routing_confines_subspace_gradients_and_keeps_input_gradient(case: str) -> None:
    model, x = routable(case, n=6, K=3)
    plain_input_grad = routed_run(model, x, None)

    route = torch.zeros(6, 3)
    samples = [0, 2, 3]
    route[samples, 1] = 1
    input_grad = routed_run(model, x, route)
    torch.testing.assert_close(input_grad, plain_input_grad, rtol=1e-10, atol=1e-14)
    for k in (0, 2):
        assert all(g is None or not g.any() for g in subspace_grads(model, k))
    routed = [g.clone() for g in subspace_grads(model, 1) if g is not None and g.any()]
    assert len(routed) == 3 * len(list(subspace_layers(model)))

    routed_run(model, x, None, samples)  # the loss of the routed samples alone, no routing
    for got, want in zip(routed, subspace_grads(model, 1), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-14)
    assert all(layer.route is None for _, layer in subspace_layers(model))


@pytest.mark.parametrize("case", ["vit", "conv"])
def test_fractional_routing_weights_each_samples_gradient(case: str) -> None:
    """A route weight w scales that sample's share of the subspace's gradient by w (``balanced`` routing)."""
    model, x = routable(case, n=4, K=2)
    weights = torch.tensor([0.25, 1.0, 0.0, 0.5], dtype=F64)
    route = torch.stack([weights, torch.ones(4, dtype=F64)], 1)
    routed_run(model, x, route)
    got = [g.clone() for g in subspace_grads(model, 0) if g is not None]

    model.zero_grad()
    labels = torch.arange(len(x)) % 2
    (F.cross_entropy(model(x), labels, reduction="none") * weights).mean().backward()  # the weighted loss, unrouted
    want = [g for g in subspace_grads(model, 0) if g is not None]
    assert len(got) == len(want) == 3 * len(list(subspace_layers(model)))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-14)


def test_merge_unmerge_round_trip() -> None:
    model = vit(F64)
    inject(model, "all", K=2, r=2)
    perturb(model)
    x = images(model)
    layer = model.blocks[1].mlp.fc1
    with torch.no_grad():
        factored = model(x)
        with merged(model):
            assert layer.merged
            torch.testing.assert_close(layer.merged_weight, layer.effective_weight())
            torch.testing.assert_close(model(x), factored, rtol=1e-10, atol=1e-12)
        assert not layer.merged
        assert torch.equal(model(x), factored)
    layer.merge()
    model.train()
    assert not layer.merged, "train() must unmerge"
    with pytest.raises(RuntimeError, match="eval"):
        layer.merge()


def test_delta_weights_sum_to_the_change() -> None:
    model = vit(F64)
    inject(model, "attn", K=3, r=1)
    layer = model.blocks[0].attn.qkv
    assert all(not layer.delta_weight(k).any() for k in range(3))
    perturb(model)
    weight = layer.pretrained_weight()
    change = sum(layer.delta_weight(k) for k in range(3))
    torch.testing.assert_close(change, layer.effective_weight() - weight, rtol=1e-10, atol=1e-12)


def test_subspace_drift_is_the_norm_of_each_subspaces_delta() -> None:
    model = vit(F64)
    inject(model, "attn", K=3, r=2)
    perturb(model)
    layers = layers_of(model)
    for stack in stack_factors(layers):
        want = torch.stack([torch.stack([m.delta_weight(k).norm() for k in range(3)]) for m in stack.layers])
        torch.testing.assert_close(subspace_drift(stack), want, rtol=1e-9, atol=1e-14)


LOSSES = [orth_loss, spectral_loss, energy_loss, effort_orth_loss]


def sample_layers() -> list[SubspaceLayer]:
    """A split qkv (B = 3), a tall Linear, a wide Linear and a TF-padded conv, in float64."""
    model, cnn = vit(F64), lite0(F64)
    inject(model, ["blocks\\.0\\.attn\\.qkv", "blocks\\.0\\.mlp\\.fc[12]"], K=2, r=2)
    inject(cnn, "conv_stem", K=2, r=2)
    return [model.blocks[0].attn.qkv, model.blocks[0].mlp.fc1, model.blocks[0].mlp.fc2, cnn.conv_stem]


def one(loss: Callable[[FactorStack], Tensor], layer: SubspaceLayer) -> Tensor:
    """The loss of a single layer."""
    [value] = loss(stack_factors([layer])[0])
    return value


@pytest.mark.parametrize("loss", LOSSES)
def test_losses_zero_at_init_positive_after_perturbation(loss: Callable[[FactorStack], Tensor]) -> None:
    layers = sample_layers()
    for layer in layers:
        value = one(loss, layer)
        assert 0 <= value < 1e-10
        value.backward()
        assert all(torch.isfinite(p.grad).all() for p in layer.home[0].parameters() if p.grad is not None)
    for layer in layers:
        perturb(layer)
        assert one(loss, layer) > 1e-6


def naive_losses(layer: SubspaceLayer) -> dict[str, Tensor]:
    """The formulas of the spec, block by block, with dense matrices."""
    u, s, v = layer.factors()
    weight = layer.pretrained_weight().reshape(layer.blocks, u.shape[1], -1)
    w_eff = layer.effective_weight().reshape(weight.shape)
    svd_u, sigmas, svd_vh = torch.linalg.svd(weight, full_matrices=False)  # the semantic bases, from scratch
    t = sigmas.shape[-1] - u.shape[-1]
    out: dict[str, list[Tensor]] = {"orth": [], "spec": [], "energy": [], "effort": []}
    for b in range(layer.blocks):
        ub, vb, sigma = u[b], v[b], layer.sigma_tail[b]
        us, vs = svd_u[b, :, :t], svd_vh[b, :t].T
        eye = torch.eye(ub.shape[1], dtype=F64)
        out["orth"].append(
            torch.linalg.matrix_norm(ub.T @ ub - eye) ** 2
            + torch.linalg.matrix_norm(vb.T @ vb - eye) ** 2
            + torch.linalg.matrix_norm(us.T @ ub) ** 2
            + torch.linalg.matrix_norm(vs.T @ vb) ** 2
        )
        svals = torch.linalg.svdvals(ub @ torch.diag(s[b]) @ vb.T)[: len(sigma)].sort(descending=True).values
        out["spec"].append(((svals - sigma) ** 2).sum() / (sigma**2).sum())
        out["energy"].append((torch.linalg.matrix_norm(w_eff[b]) ** 2 - torch.linalg.matrix_norm(weight[b]) ** 2).abs())
        full_u, full_v = torch.cat([us, ub], 1), torch.cat([vs, vb], 1)
        eye_u, eye_v = torch.eye(full_u.shape[1], dtype=F64), torch.eye(full_v.shape[1], dtype=F64)
        out["effort"].append(
            0.5 * torch.linalg.matrix_norm(full_u.T @ full_u - eye_u)
            + 0.5 * torch.linalg.matrix_norm(full_v.T @ full_v - eye_v)
        )
    return {k: torch.stack(v).mean() for k, v in out.items()}


@torch.no_grad()
def test_fast_losses_equal_naive_formulas_on_random_factors() -> None:
    g = torch.Generator().manual_seed(3)
    for layer in sample_layers():
        for f in layer.factors():
            f.copy_(torch.randn(f.shape, generator=g, dtype=F64) * (0.3 if f.ndim == 3 else 1.0))
        naive = naive_losses(layer)
        fast = {"orth": orth_loss, "spec": spectral_loss, "energy": energy_loss, "effort": effort_orth_loss}
        for key, fn in fast.items():
            torch.testing.assert_close(one(fn, layer), naive[key], rtol=1e-10, atol=1e-10, msg=key)


@pytest.mark.parametrize("loss", LOSSES)
def test_stacked_losses_equal_each_layers_own(loss: Callable[[FactorStack], Tensor]) -> None:
    model = vit(F64)
    inject(model, "all", K=2, r=2)
    perturb(model, scale=0.5)
    layers = [m for _, m in subspace_layers(model)]
    stacks = stack_factors(layers)
    assert [len(s.layers) for s in stacks] == [6, 6, 6, 6]  # qkv, proj, fc1, fc2 of test_vit's 6 blocks
    assert [m for s in stacks for m in s.layers] == [m for kind in range(4) for m in layers[kind::4]]
    batched = torch.cat([loss(s) for s in stacks])
    torch.testing.assert_close(batched, torch.stack([one(loss, m) for s in stacks for m in s.layers]))


def test_shared_factors_give_the_same_output_and_gradients() -> None:
    model = vit(F64)
    inject(model, "all", K=2, r=2)
    perturb(model)
    x = images(model)
    route = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
    layers = [m for _, m in subspace_layers(model)]
    want, want_grads = (
        routed_run(model, x, route),
        {n: g.clone() for n, g in factor_grads(model).items() if g is not None},
    )
    with shared_factors(layers) as stacks:
        assert all(m.shared is not None and m.shared[0].shape == m.factors()[0].shape for m in layers)
        got = routed_run(model, x, route)
    assert len(stacks) == 4 and all(m.shared is None for m in layers)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    got_grads = factor_grads(model)
    assert want_grads.keys() == {n for n, g in got_grads.items() if g is not None}
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-10, atol=1e-14)


def test_compute_copies_follow_the_autocast_dtype() -> None:
    u, s, v = torch.randn(3, 8, 2), torch.rand(3, 2), torch.randn(3, 5, 2)
    plain = compute_copies(u, s, v)
    torch.testing.assert_close(plain.us, u * s[:, None], rtol=0, atol=0)
    assert plain.vt.is_contiguous() and torch.equal(plain.vt, v.mT) and plain.u.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = compute_copies(u.requires_grad_(), s, v)
    assert all(c.dtype == torch.bfloat16 and not c.requires_grad for c in low) and low.vt.is_contiguous()
    assert torch.equal(low.us, (u * s[:, None]).to(torch.bfloat16)) and torch.equal(low.vt, v.mT.to(torch.bfloat16))


def test_trainable_count_vit_large_attn() -> None:
    with torch.device("meta"):
        model = timm.create_model("vit_large_patch14_clip_224", pretrained=False, img_size=224)
    model.requires_grad_(False)
    names = inject(model, "attn", K=1, r=1, split_qkv=True)
    assert len(names) == 48
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 196_704 == 24 * 4 * (1024 + 1 + 1024)


def test_cache_hit_returns_identical_factors_without_svd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pristine = vit()
    cold, warm = copy.deepcopy(pristine), copy.deepcopy(pristine)
    cold_cache = SVDCache(tmp_path)
    names = inject(cold, "all", K=2, r=2, cache=cold_cache)
    assert (cold_cache.hits, cold_cache.misses) == (0, len(names)) == (0, len(list(tmp_path.iterdir())))

    def no_svd(*args: object, **kwargs: object) -> None:
        raise AssertionError("the SVD ran on a cache hit")

    monkeypatch.setattr(torch.linalg, "svd", no_svd)
    warm_cache = SVDCache(tmp_path)
    inject(warm, "all", K=2, r=2, cache=warm_cache)
    assert (warm_cache.hits, warm_cache.misses) == (len(names), 0)
    cold_tensors = {**dict(cold.named_parameters()), **dict(cold.named_buffers())}
    warm_tensors = {**dict(warm.named_parameters()), **dict(warm.named_buffers())}
    assert cold_tensors.keys() == warm_tensors.keys()
    assert all(torch.equal(t, warm_tensors[n]) for n, t in cold_tensors.items())

    changed = copy.deepcopy(pristine)
    with torch.no_grad():
        changed.blocks[0].attn.qkv.weight[5, 7] += 1e-3
    with pytest.raises(AssertionError, match="cache hit"):
        inject(changed, "all", K=2, r=2, cache=SVDCache(tmp_path))


def test_fingerprint_tracks_content() -> None:
    weight = torch.randn(64, 48)
    assert fingerprint(weight) == fingerprint(weight.clone()) != fingerprint(weight.double())
    moved = weight.clone()
    moved[3, 5], moved[5, 3] = weight[5, 3], weight[3, 5]  # same values, other places
    assert fingerprint(moved) != fingerprint(weight)


def test_injection_errors() -> None:
    model = vit()
    with pytest.raises(ValueError, match=r"no module name matches.*nothing.*blocks\.0\.attn\.qkv"):
        inject(model, "nothing", K=1, r=1)
    with pytest.raises(TypeError, match="LayerNorm"):
        inject(model, r"blocks\.0\.norm1", K=1, r=1)
    with pytest.raises(ValueError, match="K\\*r <= 64"):
        inject(model, r"blocks\.0\.attn\.proj", K=33, r=2)
    inject(model, r"blocks\.0\.attn\.proj", K=1, r=1)
    with pytest.raises(ValueError, match="already"):
        inject(model, r"blocks\.0\.attn\.proj", K=1, r=1)
    with pytest.raises(ValueError, match="groups"):
        inject(lite0(), r"blocks\.0\.0\.conv_dw", K=1, r=1)
    with pytest.raises(ValueError, match=r"route has shape \(2, 1\)"), routing(layers_of(model), torch.ones(2, 1)):
        model(images(model))


@pytest.mark.parametrize("c", [1, 3, 4, 16])
def test_small_svdvals_equal_torch_values_and_gradients_without_a_host_read(c: int) -> None:
    core = torch.randn(5, 3, c, c, generator=torch.Generator().manual_seed(c), dtype=F64, requires_grad=True)
    with torch.profiler.profile() as prof:
        ours = small_svdvals(core)
    assert not [e for e in prof.key_averages() if e.key == "aten::_local_scalar_dense"]
    reference = torch.linalg.svdvals(core)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    (got,) = torch.autograd.grad((ours.square() + ours).sum(), core)
    (want,) = torch.autograd.grad((reference.square() + reference).sum(), core)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
