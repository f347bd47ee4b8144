"""Custom kernels. Importing this package needs neither Triton nor a GPU (Triton is imported lazily)."""

from orl.kernels.masked_linear import (
    masked_linear,
    masked_linear_reference,
    masked_linear_triton,
    pack_masks,
    triton_available,
    unpack_masks,
)

__all__ = [
    "masked_linear",
    "masked_linear_reference",
    "masked_linear_triton",
    "pack_masks",
    "triton_available",
    "unpack_masks",
]
