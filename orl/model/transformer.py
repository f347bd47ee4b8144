"""A GPT-style causal transformer (nanoGPT-like) whose block linears are ``OrlLinear``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from orl.model.layers import OrlLinear, Route

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


class CausalSelfAttention(nn.Module):
    def __init__(self, embed_dim: int, n_head: int, dropout: float) -> None:
        super().__init__()
        if embed_dim % n_head:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by n_head ({n_head})")
        self.n_head = n_head
        self.head_dim = embed_dim // n_head
        self.qkv = OrlLinear(embed_dim, 3 * embed_dim)
        self.proj = OrlLinear(embed_dim, embed_dim)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, qkv: torch.Tensor, attn_mask: torch.Tensor | None,
                route: Route | None = None, last_only: bool = False) -> torch.Tensor:
        """Attention over tokens already projected by ``self.qkv`` (B, L, 3D).

        ``attn_mask``: (B, 1, L, L) bool, True where attention is allowed; None = causal.
        ``last_only``: the output of the last position alone, (B, 1, D)."""
        b, length, _ = qkv.shape
        q, k, v = qkv.view(b, length, 3, self.n_head, self.head_dim).unbind(2)
        if last_only:  # the last query sees every key: no causal mask needed
            q = q[:, -1:]
            attn_mask = None if attn_mask is None else attn_mask[:, :, -1:]
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=attn_mask is None and not last_only,
        )
        y = y.transpose(1, 2).reshape(b, q.shape[1], self.n_head * self.head_dim)
        return self.resid_dropout(self.proj(y, route))

    def head_columns(self, heads: torch.Tensor) -> torch.Tensor:
        """Input columns of ``proj`` (features of the concatenated heads) of ``heads``."""
        offsets = torch.arange(self.head_dim, device=heads.device)
        return (heads[:, None] * self.head_dim + offsets).flatten()

    @torch.no_grad()
    def keep_heads(self, keep: torch.Tensor, proj_weight: torch.Tensor | None = None,
                   proj_bias: torch.Tensor | None = None) -> None:
        """Physically keep only heads ``keep`` (sorted indices): their q/k/v rows of ``qkv`` and
        their columns of ``proj``; ``proj_weight``/``proj_bias`` replace those (reconstruction)."""
        _check_keep(keep, self.n_head, "heads")
        columns = self.head_columns(keep)
        width = self.n_head * self.head_dim
        self.qkv.keep_outputs(torch.cat([part * width + columns for part in range(3)]))
        self.proj.keep_inputs(columns, proj_weight, proj_bias)
        self.n_head = len(keep)


class MLP(nn.Module):
    def __init__(self, embed_dim: int, hidden_dim: int, activation: str, dropout: float) -> None:
        super().__init__()
        self.fc = OrlLinear(embed_dim, hidden_dim)
        self.act = ACTIVATIONS[activation]()
        self.proj = OrlLinear(hidden_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, route: Route | None = None) -> torch.Tensor:
        return self.dropout(self.proj(self.act(self.fc(x, route)), route))

    @property
    def hidden_dim(self) -> int:
        return self.fc.out_features

    @torch.no_grad()
    def keep_hidden(self, keep: torch.Tensor, proj_weight: torch.Tensor | None = None,
                    proj_bias: torch.Tensor | None = None) -> None:
        """Physically keep only hidden neurons ``keep`` (sorted indices): rows of ``fc``, columns
        of ``proj``; ``proj_weight``/``proj_bias`` replace those (reconstruction)."""
        _check_keep(keep, self.hidden_dim, "hidden neurons")
        self.fc.keep_outputs(keep)
        self.proj.keep_inputs(keep, proj_weight, proj_bias)


class Block(nn.Module):
    def __init__(self, embed_dim: int, n_head: int, mlp_ratio: int, activation: str,
                 dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(embed_dim)
        self.attn = CausalSelfAttention(embed_dim, n_head, dropout)
        self.ln_2 = nn.LayerNorm(embed_dim)
        self.mlp = MLP(embed_dim, mlp_ratio * embed_dim, activation, dropout)

    def project(self, x: torch.Tensor, route: Route | None = None) -> torch.Tensor:
        """The attention's query/key/value projection of every token of ``x`` (B, L, 3D): a
        function of each token alone."""
        return self.attn.qkv(self.ln_1(x), route)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None,
                route: Route | None = None, last_only: bool = False,
                qkv: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, D) -> (B, L, D), or (B, 1, D) for the last position with ``last_only``.
        ``qkv``: ``self.project(x, route)`` when already computed (cached inference)."""
        y = self.attn(self.project(x, route) if qkv is None else qkv, attn_mask, route, last_only)
        x = (x[:, -1:] if last_only else x) + y
        return x + self.mlp(self.ln_2(x), route)


class Transformer(nn.Module):
    """Embedded tokens in, hidden states out: dropout, blocks, final LayerNorm."""

    def __init__(self, embed_dim: int, n_layer: int, n_head: int, mlp_ratio: int = 4,
                 activation: str = "gelu", dropout: float = 0.1) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(embed_dim, n_head, mlp_ratio, activation, dropout) for _ in range(n_layer)
        )
        self.ln_f = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                route: Route | None = None, last_only: bool = False,
                first_qkv: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states of every position, or with ``last_only`` of the last one (B, 1, D):
        the final block then computes that position alone (inference of the next action).
        ``first_qkv``: the first block's ``project`` of ``x``, cached by inference (eval mode
        only: the projection skips the input dropout)."""
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, attn_mask, route, last_only and i == len(self.blocks) - 1,
                      first_qkv if i == 0 else None)
        return self.ln_f(x)

    def linears(self) -> list[tuple[str, OrlLinear]]:
        """Every ``OrlLinear`` of the blocks with its qualified name."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, OrlLinear)]

    def structure(self) -> dict[str, list[int]]:
        """Attention heads and MLP hidden sizes of every block (they differ once pruned)."""
        return {"heads": [b.attn.n_head for b in self.blocks],
                "hidden": [b.mlp.hidden_dim for b in self.blocks]}

    def resize(self, heads: list[int], hidden: list[int]) -> None:
        """Shrink the blocks to ``heads``/``hidden`` units per layer (the first ones are kept), so
        the weights of a pruned model saved with ``structure()`` can be loaded into it."""
        if len(heads) != len(self.blocks) or len(hidden) != len(self.blocks):
            raise ValueError(f"a pruned structure needs one entry per layer ({len(self.blocks)}), "
                             f"got heads={heads}, hidden={hidden}")
        for block, n_head, n_hidden in zip(self.blocks, heads, hidden):
            block.attn.keep_heads(torch.arange(n_head))
            block.mlp.keep_hidden(torch.arange(n_hidden))


def _check_keep(keep: torch.Tensor, total: int, what: str) -> None:
    """``keep`` must be sorted, distinct, in range and leave at least one unit."""
    if keep.dim() != 1 or not 1 <= len(keep) <= total:
        raise ValueError(f"keep 1 to {total} {what}, got {len(keep) if keep.dim() == 1 else keep.shape}")
    if keep.min() < 0 or keep.max() >= total or (keep[1:] <= keep[:-1]).any():
        raise ValueError(f"indices of kept {what} must be sorted, distinct and in [0, {total})")
