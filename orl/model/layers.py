"""``OrlLinear``: the one linear layer of the transformer blocks.

Besides its dense weight it can carry, without copying weights:

* per-task binary masks over the weight (HarmoDT, PackNet), selected per sample, so one batch
  may mix tasks;
* several LoRA adapters (CompoFormer Grow, per-task LoRA), selected per sample;
* structured pruning (LIAR): input or output units physically removed.

With neither masks nor adapters it is exactly ``F.linear`` (the cost of ``nn.Linear``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

Index = int | torch.Tensor | None  # one index for the batch, a (B,) tensor per sample, or none


@dataclass
class Route:
    """Which mask and which adapter each sample of a batch uses (``None``: none)."""

    mask: Index = None
    adapter: Index = None


class OrlLinear(nn.Module):
    """``y = x (W * M[mask])^T + b + scale * x A[adapter]^T B[adapter]^T``.

    ``masks`` is a (num_masks, out, in) bool buffer, ``lora_a`` (num_adapters, rank, in) and
    ``lora_b`` (num_adapters, out, rank) are parameters (B starts at zero, so a new adapter
    leaves the output unchanged).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.register_buffer("masks", None)
        self._packed_masks: tuple[torch.Tensor, int, torch.Tensor] | None = None  # (masks, version, packed)
        self.lora_a: nn.Parameter | None = None
        self.lora_b: nn.Parameter | None = None
        self.lora_scale = 1.0
        nn.init.normal_(self.weight, std=0.02)

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    # ------------------------------------------------------------------ masks
    def set_masks(self, masks: torch.Tensor | None) -> None:
        """Attach (num_masks, out, in) binary masks (copied), or remove them with ``None``.

        Masks of the attached shape are copied into the attached buffer in place.
        """
        if masks is not None:
            if masks.dim() != 3 or masks.shape[1:] != self.weight.shape:
                raise ValueError(
                    f"masks must have shape (num_masks, {self.out_features}, {self.in_features}); "
                    f"got {tuple(masks.shape)}"
                )
            if self.masks is not None and self.masks.shape == masks.shape:
                self.masks.copy_(masks)  # in place: a recorded CUDA graph reads the live buffer
                return
            masks = masks.to(device=self.weight.device, dtype=torch.bool, copy=True)  # own buffer
        self.masks = masks
        self._packed_masks = None

    def packed_masks(self) -> torch.Tensor:
        """``masks`` bit-packed for :func:`orl.kernels.masked_linear`, cached on the layer.

        Re-packed when ``masks`` is replaced (``set_masks``, pruning, ``.to()``) or edited in place.
        """
        cached = self._packed_masks
        if cached is None or cached[0] is not self.masks or cached[1] != self.masks._version:
            from orl.kernels import pack_masks

            self._packed_masks = (self.masks, self.masks._version, pack_masks(self.masks))
        return self._packed_masks[2]

    def masked_weight(self, mask: int) -> torch.Tensor:
        """The dense weight times mask ``mask``."""
        return self.weight * self.masks[mask]

    # --------------------------------------------------------------- adapters
    def add_adapters(self, num: int, rank: int, alpha: float = 1.0) -> None:
        """Create ``num`` LoRA adapters of rank ``rank`` (``scale = alpha / rank``)."""
        if num <= 0 or rank <= 0:
            raise ValueError(f"adapters need num > 0 and rank > 0, got num={num}, rank={rank}")
        device = self.weight.device
        a = torch.empty(num, rank, self.in_features, device=device)
        for i in range(num):
            nn.init.kaiming_uniform_(a[i], a=math.sqrt(5))
        self.lora_a = nn.Parameter(a)
        self.lora_b = nn.Parameter(torch.zeros(num, self.out_features, rank, device=device))
        self.lora_scale = alpha / rank

    def merged_weight(self, adapter: int) -> torch.Tensor:
        """``W + scale * B A`` of one adapter (for export or checks)."""
        return self.weight + self.lora_scale * self.lora_b[adapter] @ self.lora_a[adapter]

    # ---------------------------------------------------------------- pruning
    @torch.no_grad()
    def keep_outputs(self, keep: torch.Tensor) -> None:
        """Physically keep only output units ``keep`` (rows of W, b, masks, LoRA B)."""
        keep = keep.to(self.weight.device)
        self.weight = nn.Parameter(self.weight[keep].clone())
        if self.bias is not None:
            self.bias = nn.Parameter(self.bias[keep].clone())
        if self.masks is not None:
            self.masks = self.masks[:, keep].clone()
        if self.lora_b is not None:
            self.lora_b = nn.Parameter(self.lora_b[:, keep].clone())

    @torch.no_grad()
    def keep_inputs(self, keep: torch.Tensor, weight: torch.Tensor | None = None,
                    bias: torch.Tensor | None = None) -> None:
        """Physically keep only input units ``keep`` (columns of W, masks, LoRA A).

        ``weight``/``bias`` replace the kept columns and the bias (e.g. a LIAR reconstruction).
        """
        keep = keep.to(self.weight.device)
        self.weight = nn.Parameter((self.weight[:, keep] if weight is None else weight).clone())
        if bias is not None:
            self.bias = nn.Parameter(bias.clone())
        if self.masks is not None:
            self.masks = self.masks[:, :, keep].clone()
        if self.lora_a is not None:
            self.lora_a = nn.Parameter(self.lora_a[:, :, keep].clone())

    # ---------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, route: Route | None = None) -> torch.Tensor:
        """``x``: (B, ..., in). Per-sample indices in ``route`` are (B,) tensors."""
        mask = route.mask if route is not None and self.masks is not None else None
        adapter = route.adapter if route is not None and self.lora_a is not None else None
        if mask is None:
            y = F.linear(x, self.weight, self.bias)
        elif isinstance(mask, int):
            y = F.linear(x, self.masked_weight(mask), self.bias)
        else:
            y = self._mixed_mask_linear(x, mask)
        if adapter is not None:
            y = y + self._lora(x, adapter)
        return y

    def _mixed_mask_linear(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Each sample through its own mask: one matmul per distinct mask in the batch.

        On CUDA the mixed batch goes through one fused kernel (``orl.kernels.masked_linear``) on
        the bit-packed masks instead; on CPU the per-mask loop below is the reference.
        """
        distinct = torch.unique(mask).tolist()
        if len(distinct) == 1:  # a single-task batch (HarmoDT's round robin): no gathers
            return F.linear(x, self.masked_weight(distinct[0]), self.bias)
        if x.is_cuda:
            from orl.kernels import masked_linear

            return masked_linear(x, self.weight, self.bias, self.packed_masks(), mask)
        y = x.new_empty(*x.shape[:-1], self.out_features)
        for m in distinct:
            rows = mask == m
            y[rows] = F.linear(x[rows], self.masked_weight(m), self.bias)
        return y

    def _lora(self, x: torch.Tensor, adapter: int | torch.Tensor) -> torch.Tensor:
        if isinstance(adapter, int):
            return self.lora_scale * F.linear(F.linear(x, self.lora_a[adapter]), self.lora_b[adapter])
        a, b = self.lora_a[adapter], self.lora_b[adapter]  # (B, r, in), (B, out, r)
        flat = x.reshape(x.shape[0], -1, self.in_features)
        out = torch.bmm(torch.bmm(flat, a.transpose(1, 2)), b.transpose(1, 2))
        return self.lora_scale * out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        extras = [f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}"]
        if self.masks is not None:
            extras.append(f"masks={self.masks.shape[0]}")
        if self.lora_a is not None:
            extras.append(f"adapters={self.lora_a.shape[0]}x{self.lora_a.shape[1]}")
        return ", ".join(extras)
