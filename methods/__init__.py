"""Fine-tuning strategies, one module each; importing this package registers them all.

A module that needs an optional dependency imports it inside its builder, so a missing package breaks only
that method.
"""

from methods import effort, full_ft, linear_probe, lora, masm

__all__ = ["effort", "full_ft", "linear_probe", "lora", "masm"]
