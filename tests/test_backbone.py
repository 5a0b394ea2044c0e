"""Backbones: the offline lite0 with its real weights, local weight files, a fast failure without the hub."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from skimage import data as skdata

from bench import backbone
from bench.backbone import BackboneError, create_backbone, data_config, map_in_order
from bench.config import ModelConfig

EGYPTIAN_CAT = 285  # ImageNet class index


def test_lite0_carries_real_imagenet_weights() -> None:
    cfg = ModelConfig(name="lite0", img_size=224)
    model = backbone._pretrained(cfg).eval()  # keep the ImageNet head to check the weights
    image = torch.from_numpy(skdata.chelsea().copy()).permute(2, 0, 1).float().div(255)[None]
    image = F.interpolate(image, size=(224, 224), mode="bicubic", align_corners=False)
    cfg_data = data_config(model, cfg)
    assert cfg_data["mean"] == (0.5, 0.5, 0.5) and cfg_data["std"] == (0.5, 0.5, 0.5)
    with torch.no_grad():
        probs = model((image - 0.5) / 0.5).softmax(-1)[0]
    assert int(probs.argmax()) == EGYPTIAN_CAT and probs.max() > 0.6


def test_two_class_head_seeded() -> None:
    cfg = ModelConfig(name="lite0")
    a, b, c = create_backbone(cfg, seed=0), create_backbone(cfg, seed=0), create_backbone(cfg, seed=1)
    assert a.get_classifier().out_features == 2
    assert torch.equal(a.get_classifier().weight, b.get_classifier().weight)
    assert not torch.equal(a.get_classifier().weight, c.get_classifier().weight)
    assert torch.equal(a.conv_stem.weight, c.conv_stem.weight)  # pretrained weights do not depend on the seed


def test_map_in_order_rejects_shape_mismatch() -> None:
    source = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2)}
    with pytest.raises(BackboneError, match="mismatch"):
        map_in_order(source, {"x.weight": torch.zeros(3, 3), "x.bias": torch.zeros(3)})
    with pytest.raises(BackboneError, match="not the same architecture"):
        map_in_order(source, {"x.weight": torch.zeros(2, 3)})


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file_loads(tmp_path: Path, suffix: str) -> None:
    source = timm.create_model("test_vit", pretrained=False, num_classes=0)
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    model = create_backbone(ModelConfig(name="test_vit", weights=str(path), img_size=None), seed=0)
    for name, tensor in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert model.get_classifier().out_features == 2


def test_missing_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match="no such file"):
        create_backbone(ModelConfig(name="test_vit", weights=str(tmp_path / "missing.pth")))


def test_unreachable_hub_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # a closed loopback port
    start = time.monotonic()
    with pytest.raises(BackboneError, match="model.weights=PATH"):
        create_backbone(ModelConfig(name="vit_large_patch14_clip_224.openai", img_size=None))
    assert time.monotonic() - start < 15


def test_unknown_model_name() -> None:
    with pytest.raises(BackboneError, match="unknown timm model"):
        create_backbone(ModelConfig(name="no_such_net", pretrained=False))


def test_random_backbone_reproducible() -> None:
    cfg = ModelConfig(name="test_vit", pretrained=False, img_size=32)
    a, b = create_backbone(cfg, seed=5), create_backbone(cfg, seed=5)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32))
    assert torch.equal(a.eval()(x), b.eval()(x))
