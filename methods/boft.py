"""BOFT through PEFT (butterfly orthogonal fine-tuning, Liu et al., ICLR 2024): OFT's rotation of each target
weight's input side, built as a product of ``butterfly`` block-diagonal orthogonal factors (blocks of ``block_size``,
exact Cayley), so that a few small blocks mix every input; plus a trainable scale per output.

PEFT multiplies more than one factor only with its CUDA extension (``fbd_cuda``, which it compiles at first use with
ninja and nvcc); where that fails, it trains a single factor and only warns. It fails without a GPU, and its kernel
does not compile against PyTorch 2.11 (CUDA 13) either. So one factor is the default: OFT's block-diagonal rotation
in BOFT's parametrisation (whole blocks, exact Cayley, a scale per output; PEFT's ``oft`` keeps the upper triangle,
a Cayley-Neumann series and no scale). A larger ``butterfly`` is refused in one line where PEFT would silently train
one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.adapter import Adapter
from bench.errors import ConfigError
from bench.options import MethodOptions
from bench.registry import register_method
from bench.targets import resolve_targets
from methods.peft_tuning import PeftAdapter


@dataclass
class BOFTOptions(MethodOptions):
    """PEFT ``BOFTConfig`` settings.

    Attributes:
        block_size: side of each orthogonal block (``boft_block_size``); it must divide every target's input size:
            16 divides those of ViTs and of EfficientNet-Lite0's projections (32 does not: 144). A layer trains
            ``butterfly * in * block_size`` numbers (PEFT keeps whole blocks, of which the skew-symmetric half acts)
            and one scale per output.
        butterfly: butterfly factors (``boft_n_butterfly_factor``); more than 1 needs PEFT's CUDA extension.
        targets: a preset or regex, as for MASM.
    """

    block_size: int = 16
    butterfly: int = 1
    targets: str = "auto"


@register_method("boft", BOFTOptions, "PEFT BOFT: butterfly-factored orthogonal rotation of each target weight, scaled")
def build(backbone: nn.Module, options: BOFTOptions) -> Adapter:
    from peft import BOFTConfig

    config = BOFTConfig(
        boft_block_size=options.block_size,
        boft_n_butterfly_factor=options.butterfly,
        target_modules=resolve_targets(backbone, options.targets),
    )
    with torch.device("cpu"):  # PEFT fills BOFT's permutations entry by entry: impossible on meta, slow on a GPU
        model = PeftAdapter(backbone, config)  # its factors then move to each base layer's device
    trained = {p.shape[0] for n, p in model.named_parameters() if "boft_R" in n}  # factors PEFT actually built
    if trained != {options.butterfly}:
        raise ConfigError(
            f"method boft: butterfly={options.butterfly} needs PEFT's fbd CUDA extension, which did not load here, "
            "and PEFT would train one factor instead (use butterfly=1)"
        )
    return model
