"""orl: an offline RL toolkit around one Decision Transformer core.

``orl.evaluate(policy, tasks, ...)`` and ``orl.load_agent(checkpoint)`` are the entry points for
evaluation; they are imported on first use so that ``import orl`` stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["evaluate", "load_agent"]


def __getattr__(name: str) -> Any:
    if name == "evaluate":
        from orl.eval.evaluate import evaluate

        return evaluate
    if name == "load_agent":
        from orl.api import load_agent

        return load_agent
    raise AttributeError(f"module 'orl' has no attribute {name!r}")
