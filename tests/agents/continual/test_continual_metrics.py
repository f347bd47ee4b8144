"""P, F, FWT and Continual World's forward transfer against hand-computed values."""

import numpy as np
import pytest

from orl.agents.continual.metrics import cw_forward_transfer, record_metrics, sequence_matrix, summarize

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


def test_metrics_of_rows_of_the_seen_tasks_and_the_next():
    """continual.matrix_tasks=seen leaves R[i][j > i + 1] NaN: the metrics are those of R, and
    a run stopped after stage 0 has one finished row."""
    seen = R.copy()
    seen[0, 2] = np.nan
    assert summarize(seen, B) == summarize(R, B)
    first = np.full_like(R, np.nan)
    first[0, :2] = R[0, :2]
    m = summarize(first, B)
    assert m.stages_done == 1 and m.performance == pytest.approx((0.8 + 0.1) / 2)


def test_the_evaluation_after_the_sequence_is_the_last_row():
    """continual.final_episodes: P is the final success, F measured against it."""
    final = [0.4, 0.5, 0.9]
    record = {"stages": ["a", "b", "c"], "envs": ["x", "y", "z"], "before": B.tolist(),
              "matrix": R.tolist(), "final": final, "curves": []}
    metrics = record_metrics(record)
    assert metrics["performance"] == pytest.approx(0.6)
    # the last task's own-stage success is the final row's too: it forgets nothing
    assert metrics["forgetting"] == pytest.approx(((0.8 - 0.4) + (0.9 - 0.5) + 0.0) / 3)
    assert metrics["forward_transfer"] == summarize(R, B).forward_transfer  # off-diagonal rows kept
    assert record_metrics({**record, "final": None}) == record_metrics({**record, "final": None,
                                                                        "matrix": R.tolist()})
    # the last stage's own row holds only its curve point; the final row replaces it
    last_point = [*R[:2].tolist(), [None, None, 0.7]]
    assert sequence_matrix(last_point, final).tolist() == [*R[:2].tolist(), final]
    assert record_metrics({**record, "matrix": last_point}) == metrics
    unfinished = [R[0].tolist(), [None] * 3, [None] * 3]  # stages left: R as it is
    assert np.isnan(sequence_matrix(unfinished, final)[1:]).all()
    with pytest.raises(ValueError, match="final evaluation has 2 tasks, the success matrix 3"):
        sequence_matrix(R, final[:2])


def test_cw_forward_transfer_of_two_hand_computed_curves():
    """Trapezoid areas over the steps, divided by the stage's length."""
    curves = [{"steps": [0, 5, 10], "success": [0.2, 0.6, 1.0]},  # (2 + 4) / 10 = 0.6
              {"steps": [0, 4, 10], "success": [0.0, 0.5, 0.5]}]  # (1 + 3) / 10 = 0.4
    references = [{"steps": [0, 5, 10], "success": [0.0, 0.2, 0.6]},  # (0.5 + 2) / 10 = 0.25
                  {"steps": [0, 4, 10], "success": [0.0, 1.0, 1.0]}]  # (2 + 6) / 10 = 0.8
    first, second = (0.6 - 0.25) / (1 - 0.25), (0.4 - 0.8) / (1 - 0.8)
    assert first == pytest.approx(7 / 15) and second == pytest.approx(-2.0)
    assert cw_forward_transfer(curves, references) == pytest.approx((first + second) / 2)
    # a reference that always succeeds: FT_i = AUC_i - 1
    always = {"steps": [0, 4, 10], "success": [1.0, 1.0, 1.0]}
    assert cw_forward_transfer(curves[1:], [always]) == pytest.approx(0.4 - 1.0)
    with pytest.raises(ValueError, match="reference curves"):
        cw_forward_transfer(curves, references[:1])


def test_cw_forward_transfer_needs_the_same_evaluation_points():
    curve = {"steps": [0, 5, 10], "success": [0.0, 0.5, 1.0]}
    reference = {"steps": [0, 2, 4, 6, 8, 10], "success": [0.0] * 6}
    with pytest.raises(ValueError, match=r"task push-v3: evaluated at steps \[0, 5, 10\] of its "
                                         r"stage but its reference at \[0, 2, 4, 6, 8, 10\]"):
        cw_forward_transfer([curve], [reference], ["push-v3"])


def test_record_metrics_needs_a_reference_of_every_finished_stage():
    curve = {"steps": [0, 5, 10], "success": [0.0, 0.5, 1.0]}
    record = {"stages": ["a", "b", "c"], "envs": ["x", "y", "x"], "before": B.tolist(),
              "matrix": [*R[:2].tolist(), [None] * 3], "curves": [curve, curve]}
    metrics = record_metrics(record)
    assert metrics == summarize([*R[:2].tolist(), [np.nan] * 3], B).to_dict()
    assert metrics["cw_forward_transfer"] is None
    assert record_metrics(record, {"x": curve, "y": curve})["cw_forward_transfer"] == 0.0
    with pytest.raises(ValueError, match=r"no single-task reference curve for \['y'\]"):
        record_metrics(record, {"x": curve})


def test_record_metrics_count_the_parameters_added_and_the_tasks_composed():
    """Means over the finished stages after the first; the decisions of CompoFormer's."""
    record = {"stages": ["a", "b", "c"], "envs": ["x", "y", "z"], "before": B.tolist(),
              "matrix": R.tolist(), "curves": [],
              "notes": {"1": {"added_parameters": 100, "decision": "grow"},
                        "2": {"added_parameters": 0, "decision": "compose"}}}
    metrics = record_metrics(record)
    assert metrics["added_parameters"] == 50.0 and metrics["composed_tasks"] == 1
    record["matrix"] = [*R[:2].tolist(), [None] * 3]  # stage 2 unfinished: its note is left out
    assert record_metrics(record)["added_parameters"] == 100.0
    del record["notes"]  # a run of an older orl: no counts
    assert "added_parameters" not in record_metrics(record)


def test_bad_matrices():
    with pytest.raises(ValueError, match="3 x 3"):
        summarize(R[:2], B)
    with pytest.raises(ValueError, match="no finished stage"):
        summarize(np.full_like(R, np.nan), B)


def test_forgetting_compares_the_rows_episodes_after_the_sequence():
    """With ``final_matched`` (the final evaluation's success on the episodes every row played)
    F is measured on one set of episodes; P stays the final evaluation's."""
    final, matched = [0.4, 0.5, 0.9], [0.8, 0.7, 0.95]
    record = {"stages": ["a", "b", "c"], "envs": ["x", "y", "z"], "before": B.tolist(),
              "matrix": R.tolist(), "final": final, "final_matched": matched, "curves": []}
    metrics = record_metrics(record)
    assert metrics["performance"] == pytest.approx(0.6)
    # task a played the same episodes before and after: nothing forgotten; b lost 0.2; the last
    # task's own stage ends the sequence
    assert metrics["forgetting"] == pytest.approx(((0.8 - 0.8) + (0.9 - 0.7) + 0.0) / 3)
    assert record_metrics({**record, "final_matched": None})["forgetting"] == pytest.approx(
        ((0.8 - 0.4) + (0.9 - 0.5) + 0.0) / 3)  # runs without it: against the whole final row
    partial = R.copy()
    partial[2] = np.nan  # an unfinished run has no evaluation after the sequence to match
    assert summarize(partial, B, matched).forgetting == summarize(partial, B).forgetting
