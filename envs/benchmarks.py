"""Named lists of Meta-World tasks: multi-task (MT10/30/50) and continual (OCW) benchmarks.

- ``MT10``: Meta-World's MT10 in its own order.
- ``MT30``: the first 30 tasks of the sorted MT50 list. Meta-World defines no MT30; taking a
  prefix of the sorted list makes it deterministic and nested (MT30 is a subset of MT50).
- ``MT50``: all 50 tasks, sorted.
- ``OCW10``: the Continual World CW10 sequence; ``OCW20`` is OCW10 played twice.
- ``OCW10-shuffle{1,2,3}``: the shuffled OCW10 orders of the released CompoFormer code
  (order-robustness studies).

Lookup is case-insensitive; ``resolve_tasks`` also accepts single tasks and comma-separated mixes.
"""

from __future__ import annotations

import difflib

from orl.envs.metaworld import MT50_TASKS, check_task

MT10: tuple[str, ...] = (
    "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3",
    "drawer-close-v3", "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3",
    "window-close-v3",
)
MT30: tuple[str, ...] = MT50_TASKS[:30]
MT50: tuple[str, ...] = MT50_TASKS

OCW10: tuple[str, ...] = (
    "hammer-v3", "push-wall-v3", "faucet-close-v3", "push-back-v3", "stick-pull-v3",
    "handle-press-side-v3", "push-v3", "shelf-place-v3", "window-close-v3", "peg-unplug-side-v3",
)
OCW20: tuple[str, ...] = OCW10 + OCW10

# The shuffled CW10 orders of the released CompoFormer code (``cw10_task_list_seed1..3`` in its
# config/MetaWorld/task.json), with the -v3 envs.
OCW10_SHUFFLES: tuple[tuple[str, ...], ...] = (
    (
        "push-v3", "window-close-v3", "peg-unplug-side-v3", "shelf-place-v3",
        "handle-press-side-v3", "push-back-v3", "hammer-v3", "stick-pull-v3", "push-wall-v3",
        "faucet-close-v3",
    ),
    (
        "handle-press-side-v3", "peg-unplug-side-v3", "push-back-v3", "stick-pull-v3", "push-v3",
        "shelf-place-v3", "faucet-close-v3", "window-close-v3", "push-wall-v3", "hammer-v3",
    ),
    (
        "push-wall-v3", "handle-press-side-v3", "push-v3", "hammer-v3", "peg-unplug-side-v3",
        "stick-pull-v3", "shelf-place-v3", "faucet-close-v3", "window-close-v3", "push-back-v3",
    ),
)

BENCHMARKS: dict[str, tuple[str, ...]] = {
    "MT10": MT10,
    "MT30": MT30,
    "MT50": MT50,
    "OCW10": OCW10,
    "OCW20": OCW20,
    **{f"OCW10-shuffle{k}": order for k, order in enumerate(OCW10_SHUFFLES, start=1)},
}
_BY_LOWER = {name.lower(): name for name in BENCHMARKS}


def get_benchmark(name: str) -> list[str]:
    """Tasks of benchmark ``name`` (case-insensitive), in order; unknown names raise ValueError."""
    key = _BY_LOWER.get(name.strip().lower())
    if key is None:
        close = difflib.get_close_matches(name.lower(), _BY_LOWER, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(_BY_LOWER[c] for c in close)}?" if close else ""
        raise ValueError(f"Unknown benchmark {name!r}.{hint} Known: {', '.join(BENCHMARKS)}.")
    return list(BENCHMARKS[key])


def _check_item(item: str) -> str:
    """``check_task(item)``, but an unknown name gets close matches among tasks and benchmarks."""
    try:
        return check_task(item)
    except ValueError:
        close = difflib.get_close_matches(item.lower(), _BY_LOWER, n=2, cutoff=0.6)
        close = [_BY_LOWER[c] for c in close]
        close += difflib.get_close_matches(item, MT50_TASKS, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"Unknown task or benchmark {item!r}.{hint} Benchmarks: {', '.join(BENCHMARKS)}; "
            "tasks: orl.envs.MT50_TASKS."
        ) from None


def resolve_tasks(spec: str | list[str]) -> list[str]:
    """Expand a benchmark name, a task, a comma-separated mix of both, or a list into tasks.

    Order is kept and repeats are allowed (``"OCW20"`` gives 20 tasks); task names may omit
    ``-v3``. A name that is neither a benchmark nor a task raises ValueError.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    tasks: list[str] = []
    for item in (s.strip() for s in items):
        if not item:
            continue
        if item.lower() in _BY_LOWER:
            tasks.extend(get_benchmark(item))
        else:
            tasks.append(_check_item(item))
    if not tasks:
        raise ValueError(f"No tasks in {spec!r}.")
    return tasks
