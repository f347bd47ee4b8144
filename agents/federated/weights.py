"""The weights clients and server exchange: an agent's trainable parameters by name.

Buffers (per-task state statistics, prompts) are fixed when the run is set up and identical on
every client, so they are never sent.
"""

from __future__ import annotations

import torch
from torch import nn

Weights = dict[str, torch.Tensor]


def get_weights(agent: nn.Module) -> Weights:
    """A CPU copy of the trainable parameters of ``agent``."""
    return {name: p.detach().to("cpu", copy=True) for name, p in agent.named_parameters()}


def set_weights(agent: nn.Module, weights: Weights) -> None:
    """Copy ``weights`` into the parameters of ``agent`` (names and shapes must match)."""
    with torch.no_grad():
        for name, p in agent.named_parameters():
            p.copy_(weights[name])


def payload_bytes(weights: Weights) -> int:
    """Bytes of tensor data in ``weights`` (what one transfer of them costs, without framing)."""
    return sum(t.numel() * t.element_size() for t in weights.values())


def check_update(reference: Weights, update: Weights) -> str | None:
    """Why ``update`` may not be aggregated with weights like ``reference``, or None if it may.

    Rejected: missing or unexpected names, other shapes or dtypes, NaN/inf values.
    """
    missing = sorted(reference.keys() - update.keys())
    unexpected = sorted(update.keys() - reference.keys())
    if missing or unexpected:
        return f"parameter names differ (missing {missing[:3]}, unexpected {unexpected[:3]})"
    for name, ref in reference.items():
        value = update[name]
        if not isinstance(value, torch.Tensor) or value.shape != ref.shape or value.dtype != ref.dtype:
            got = (tuple(value.shape), value.dtype) if isinstance(value, torch.Tensor) else type(value)
            return f"{name}: expected {tuple(ref.shape)} {ref.dtype}, got {got}"
        if not torch.isfinite(value).all():
            return f"{name} holds NaN/inf values"
    return None


def weighted_average(terms: list[tuple[Weights, int]]) -> Weights:
    """``sum_i (n_i / sum_j n_j) w_i`` over ``(w_i, n_i)`` terms, summed in the given order
    (float arithmetic depends on it: callers order terms by client for reproducibility)."""
    total = sum(n for _, n in terms)
    if not terms or total <= 0:
        raise ValueError("weighted_average needs at least one term with a positive count")
    names = terms[0][0].keys()
    out = {name: torch.zeros_like(terms[0][0][name]) for name in names}
    for weights, n in terms:
        share = n / total
        for name in names:
            out[name] += share * weights[name]
    return out
