"""What dropout costs a small DT's training step on CPU: SDPA with and without attention
dropout, and dropout masks of the sizes one step draws (the OCW10 small model: batch 32,
60 tokens, embed 64, 2 heads).

    OMP_NUM_THREADS=1 python bench/dropout_cpu.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F


def ms(fn, reps: int = 100) -> float:
    for _ in range(5):
        fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e3


def main() -> None:
    torch.set_num_threads(1)
    q, k, v = (torch.randn(32, 2, 60, 32, requires_grad=True) for _ in range(3))
    for p in (0.0, 0.1):
        def attn(p: float = p) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)

        def attn_backward(attn=attn) -> None:
            attn().sum().backward()

        print(f"SDPA dropout_p={p}: forward {ms(attn):.2f} ms, "
              f"forward+backward {ms(attn_backward):.2f} ms")
    for shape in ((32, 60, 64), (32, 60, 256)):
        x = torch.randn(*shape)

        def drop(x: torch.Tensor = x) -> torch.Tensor:
            return F.dropout(x, 0.1, True)

        print(f"dropout of {x.numel():,} elements: {ms(drop):.3f} ms")

if __name__ == "__main__":
    main()
