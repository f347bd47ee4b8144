"""What the report's numpy IQM and probability of improvement save an ``orl study report``.

Times the bootstraps of a study report (rliable's stratified bootstrap, ``--reps`` samples) on
synthetic success rates of the OCW10 study's shape (11 conditions x 5 runs x 10 tasks, 4 pairs,
learning curves of 60 points), once with the report's statistics (``orl.study.report.iqm``,
``probability_of_improvement``) and once with rliable's (scipy's ``trim_mean`` and
``mannwhitneyu`` per sample and task, what the report called before), and checks that both give
the same intervals.

    python bench/study_report_stats.py [--reps 5000]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5000)
    parser.add_argument("--conditions", type=int, default=11)
    parser.add_argument("--pairs", type=int, default=4)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from rliable import metrics

    from orl.study import report

    rng = np.random.default_rng(0)
    finals = {f"c{i}": rng.integers(0, 51, (5, 10)) / 50 for i in range(args.conditions)}
    curves = {label: rng.integers(0, 21, (5, 10, 60)) / 20 for label in finals}
    pairs = [(f"c{i}", f"c{i + 1}") for i in range(args.pairs)]

    def rliable_aggregates(scores: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_mean(scores), metrics.aggregate_median(scores),
                         metrics.aggregate_iqm(scores), metrics.aggregate_optimality_gap(scores)])

    def rliable_iqm_per_point(scores: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(scores[..., i]) for i in range(scores.shape[-1])])

    implementations = {
        "rliable (scipy)": (rliable_aggregates, metrics.probability_of_improvement,
                            rliable_iqm_per_point),
        "orl (numpy)": (report.aggregates, report.probability_of_improvement,
                        report.iqm_per_point),
    }
    seconds, intervals = {}, {}
    for name, (aggregates, improvement, per_point) in implementations.items():
        start = time.perf_counter()
        out = [report.bootstrap(finals, aggregates, args.reps, 0)[1]]
        out += [report.bootstrap({"pair": (finals[x], finals[y])}, improvement, args.reps, 0)[1]
                for x, y in pairs]
        out += [report.bootstrap({label: values}, per_point, min(args.reps, 2000), 0)[1]
                for label, values in curves.items()]
        seconds[name], intervals[name] = time.perf_counter() - start, out
    for name, s in seconds.items():
        print(f"{name:16s} {s:8.1f} s")
    base, fast = seconds.values()
    print(f"speed-up {base / fast:.1f}x")
    gaps = [np.max(np.abs(np.asarray(a[k], dtype=float) - np.asarray(b[k], dtype=float)))
            for a, b in zip(*intervals.values()) for k in a]
    print(f"largest difference between the intervals: {max(gaps):.1e}")


if __name__ == "__main__":
    main()
