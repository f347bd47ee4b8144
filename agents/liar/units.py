"""The structured units LIAR prunes: attention heads and FFN (MLP hidden) neurons.

A ``Site`` is one group of units of one block. Both kinds feed an output projection (``proj``):
a head is ``head_dim`` consecutive input columns of the attention ``proj``, a neuron one input
column of the MLP ``proj``; that projection is the one LIAR reconstructs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from orl.model.layers import OrlLinear
from orl.model.transformer import MLP, CausalSelfAttention, Transformer

KINDS = ("heads", "neurons")


@dataclass
class Site:
    """The heads of one attention layer, or the hidden neurons of one MLP."""

    layer: int
    kind: str
    module: CausalSelfAttention | MLP  # heads: the attention layer, neurons: the MLP

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.{'attn' if self.kind == 'heads' else 'mlp'}"

    @property
    def proj(self) -> OrlLinear:
        """The projection that reads the units (whose inputs are pruned and reconstructed)."""
        return self.module.proj

    @property
    def source(self) -> OrlLinear:
        """The projection that writes the units (whose outputs are pruned)."""
        return self.module.qkv if self.kind == "heads" else self.module.fc

    @property
    def num_units(self) -> int:
        return self.module.n_head if self.kind == "heads" else self.module.hidden_dim

    @property
    def width(self) -> int:
        """Input columns of ``proj`` per unit."""
        return self.module.head_dim if self.kind == "heads" else 1

    def columns(self, units: torch.Tensor) -> torch.Tensor:
        """Input columns of ``proj`` that belong to ``units``."""
        return self.module.head_columns(units) if self.kind == "heads" else units

    def per_unit(self, column_values: torch.Tensor) -> torch.Tensor:
        """(..., columns) -> (..., units): sum over each unit's columns."""
        return column_values.unflatten(-1, (self.num_units, self.width)).sum(-1)

    def source_rows(self) -> torch.Tensor:
        """(units, n) the weights of ``source`` that write each unit (q, k and v of a head)."""
        weight = self.source.weight.detach()
        if self.kind == "neurons":
            return weight
        return (weight.view(3, self.num_units, self.width, -1).transpose(0, 1)
                .reshape(self.num_units, -1))

    def keep(self, units: torch.Tensor, proj_weight: torch.Tensor | None = None,
             proj_bias: torch.Tensor | None = None) -> None:
        """Physically remove every unit not in ``units``; optionally new ``proj`` weights."""
        if self.kind == "heads":
            self.module.keep_heads(units, proj_weight, proj_bias)
        else:
            self.module.keep_hidden(units, proj_weight, proj_bias)


def block_sites(transformer: Transformer) -> list[Site]:
    """Every site in forward order: heads then neurons of block 0, then block 1, ..."""
    sites = []
    for layer, block in enumerate(transformer.blocks):
        sites += [Site(layer, "heads", block.attn), Site(layer, "neurons", block.mlp)]
    return sites
