"""Fine-tuning strategies, one module each; importing this package registers them all.

A module that needs an optional dependency imports it inside its builder, so a missing package breaks only
that method.
"""

from methods import adalora, bitfit, boft, effort, fmsd, full_ft, linear_probe, ln_tuning, lora, masm, oft, osf

__all__ = [
    "adalora",
    "bitfit",
    "boft",
    "effort",
    "fmsd",
    "full_ft",
    "linear_probe",
    "ln_tuning",
    "lora",
    "masm",
    "oft",
    "osf",
]
