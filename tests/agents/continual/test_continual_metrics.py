"""P, F, FWT and Continual World's forward transfer against hand-computed values."""

import numpy as np
import pytest

from orl.agents.continual.metrics import cw_forward_transfer, summarize

R = np.array([
    [0.8, 0.1, 0.0],
    [0.5, 0.9, 0.2],
    [0.3, 0.6, 1.0],
])
B = np.array([0.0, 0.2, 0.1])


def test_metrics_of_a_finished_run():
    m = summarize(R, B)
    assert m.performance == pytest.approx((0.3 + 0.6 + 1.0) / 3)
    assert m.forgetting == pytest.approx(((0.8 - 0.3) + (0.9 - 0.6) + 0.0) / 3)
    assert m.forward_transfer == pytest.approx(((0.1 - 0.2) + (0.2 - 0.1)) / 2)
    assert (m.stages_done, m.num_tasks) == (3, 3)


def test_metrics_of_an_interrupted_run_use_the_finished_rows():
    partial = R.copy()
    partial[2] = np.nan
    m = summarize(partial, B)
    assert m.stages_done == 2
    assert m.performance == pytest.approx((0.5 + 0.9 + 0.2) / 3)
    assert m.forgetting == pytest.approx(((0.8 - 0.5) + 0.0) / 2)
    assert m.forward_transfer == pytest.approx(0.1 - 0.2)
    only_first = np.full_like(R, np.nan)
    only_first[0] = R[0]
    assert summarize(only_first, B).forward_transfer is None


def test_cw_forward_transfer():
    curves = [[0.0, 0.5, 1.0], [1.0, 1.0]]
    references = [[0.0, 0.0, 0.5], [1.0, 1.0]]  # AUC 1/6; the second is always successful
    expected = ((0.5 - 1 / 6) / (1 - 1 / 6) + (1.0 - 1.0)) / 2
    assert cw_forward_transfer(curves, references) == pytest.approx(expected)
    with pytest.raises(ValueError, match="reference curves"):
        cw_forward_transfer(curves, references[:1])


def test_bad_matrices():
    with pytest.raises(ValueError, match="3 x 3"):
        summarize(R[:2], B)
    with pytest.raises(ValueError, match="no finished stage"):
        summarize(np.full_like(R, np.nan), B)
