"""A tiny task sequence end to end through train-agent, resume, and orl report."""

import json

import pytest
import torch
import yaml

from orl.agents.continual.config import ContinualConfig
from orl.agents.continual.report import continual_metrics, continual_record, load_results, own_stage_curve
from orl.agents.continual.runner import ContinualRun
from orl.api import load_trained_agent
from orl.cli import main as orl_main
from orl.cli import train_agent_main
from orl.eval import evaluate

PLUS, MINUS = "ToySignPlus-v0", "ToySignMinus-v0"


def test_three_task_sequence_then_report(toys, tmp_path, capsys):
    config = toys.tiny_config(tmp_path, [PLUS, MINUS, PLUS], "finetune")
    assert train_agent_main(["--config", str(config)]) == 0
    run = tmp_path / "runs" / "seq"
    state = json.loads((run / "continual.json").read_text())
    assert state["stage"] == 3 and len(state["rows"]) == 3 and len(state["before"]) == 3
    # evaluated at steps 5 and 10 of every stage: 6 points of the curves
    assert [(e["stage"], e["step"]) for e in state["evaluations"]] == [
        (s, k) for s in range(3) for k in (5, 10)]
    assert (run / "stages" / "02-s2" / "train" / "checkpoints" / "final").is_dir()
    capsys.readouterr()
    assert orl_main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "3/3 stages done" in out and "FWT" in out and "parameters added per task" in out
    report = json.loads((run / "report.json").read_text())
    assert report["stages_done"] == 3
    # finetune: a task after the first adds its action head (8 + 1 parameters)
    assert [state["notes"][str(i)]["added_parameters"] for i in (1, 2)] == [9, 9]
    assert report["added_parameters"] == 9.0 and "composed_tasks" not in report
    matrix = report["matrix"]
    assert report["performance"] == pytest.approx(sum(matrix[2]) / 3)
    for name in ("success_matrix.png", "success_curves.png"):
        assert (run / name).read_bytes()[:4] == b"\x89PNG"
    # the sign task is learnt by its own head: success after the stage
    assert matrix[0][0] == 1.0 and matrix[1][1] == 1.0
    # each task's curve during its own stage: its start (b[0], then R[i-1][i]), its evaluations
    results = load_results(run)
    starts = [state["before"][0], matrix[0][1], matrix[1][2]]
    for i, start in enumerate(starts):
        own = [e["success"][i] for e in state["evaluations"] if e["stage"] == i]
        assert own_stage_curve(results, i) == {"steps": [0, 5, 10], "success": [start, *own]}
    agent = load_trained_agent(run)  # the agent after the last stage
    result = evaluate(agent.policy(stages=[1], task_names=[MINUS]), [MINUS], episodes=2,
                      num_envs=2, seed=0, progress=False)
    assert result.tasks[0].success_rate == matrix[2][1]


def test_interrupted_run_resumes_to_the_same_result(toys, tmp_path, monkeypatch, capsys):
    config = toys.tiny_config(tmp_path, [PLUS, MINUS], "ewc")
    assert train_agent_main(["--config", str(config), "run.name=whole"]) == 0
    whole = json.loads((tmp_path / "runs" / "whole" / "continual.json").read_text())

    calls = []
    original = ContinualRun.phase_done

    def crash_after_first_stage(self, stage, phase, steps=0):
        original(self, stage, phase, steps)
        calls.append(phase)
        if stage == 1 and phase == "train":
            raise KeyboardInterrupt

    monkeypatch.setattr(ContinualRun, "phase_done", crash_after_first_stage)
    with pytest.raises(KeyboardInterrupt):
        train_agent_main(["--config", str(config), "run.name=cut"])
    run = tmp_path / "runs" / "cut"
    assert orl_main(["report", str(run)]) == 0  # an interrupted run reports what it has
    assert "1/2 stages done" in capsys.readouterr().out
    monkeypatch.setattr(ContinualRun, "phase_done", original)
    assert train_agent_main(["--resume", str(run)]) == 0
    resumed = json.loads((run / "continual.json").read_text())
    assert resumed["rows"] == whole["rows"] and resumed["before"] == whole["before"]


def test_compose_when_an_earlier_policy_solves_the_task(toys, tmp_path):
    config = toys.tiny_config(tmp_path, [PLUS, PLUS, MINUS], "compoformer_grow")
    assert train_agent_main(["--config", str(config)]) == 0
    run = tmp_path / "runs" / "seq"
    notes = json.loads((run / "continual.json").read_text())["notes"]
    assert notes["1"]["decision"] == "compose" and notes["1"]["reused"] == 0
    assert notes["1"]["reuse_success"] == 1.0
    assert not (run / "stages" / "01-s1" / "train").exists()  # no training at all
    assert notes["2"]["decision"] == "grow"  # the plus policy fails the minus task
    # the composed task adds nothing; the grown one its adapter and MLP head (one earlier
    # policy to weigh: its query/key maps do not count)
    assert notes["1"]["added_parameters"] == 0
    assert notes["2"]["added_parameters"] == 2 * (8 + 24) + 16 * 8 + 8 + 2 * 8 + 8 + 1
    assert (run / "stages" / "02-s2" / "train").is_dir()
    rows = json.loads((run / "continual.json").read_text())["rows"]
    assert rows[2] == [1.0, 1.0, 1.0]
    # the composed task's curve (Continual World's forward transfer) starts where stage 0 left
    # it, then holds its end-of-stage success at the steps the trained stages were evaluated at
    results = load_results(run)
    assert own_stage_curve(results, 1) == {"steps": [0, 5, 10], "success": [rows[0][1], 1.0, 1.0]}
    assert own_stage_curve(results, 2)["steps"] == [0, 5, 10]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"continual": {"enabled": True, "tasks": ["hammer-v3", "hamer-v3"], "stages": []}},
         "hamer-v3"),
        ({"continual": {"stages": "duplicate"}}, "duplicate stage names ['s0']"),
        ({"continual": {"stages": "missing"}}, "stage 1 (s1): dataset file"),
        ({"continual": {"compose_threshold": 1.5}}, "compose_threshold must be in [0, 1]"),
        ({"continual": {"method": "ewk"}}, "continual.method must be one of"),
        ({"continual": {"enabled": False}},
         "continual.stages given but continual.enabled is false, so the run would ignore them"),
    ],
)
def test_bad_input_is_reported_before_training(toys, tmp_path, capsys, change, message):
    config = toys.tiny_config(tmp_path, [PLUS, MINUS], "finetune")
    cfg = yaml.safe_load(config.read_text())
    stages = cfg["continual"]["stages"]
    if change["continual"].get("stages") == "duplicate":
        stages[1]["name"] = "s0"
        change = {}
    elif change["continual"].get("stages") == "missing":
        stages[1]["dataset"] = str(tmp_path / "nope.hdf5")
        change = {}
    for key, value in change.get("continual", {}).items():
        cfg["continual"][key] = value
    config.write_text(yaml.safe_dump(cfg))
    assert train_agent_main(["--config", str(config)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs" / "seq" / "stages").exists()


def final_weights(run):
    from safetensors.torch import load_file

    from orl.agents.continual.runner import last_snapshot

    return load_file(last_snapshot(run) / "model.safetensors")


@pytest.mark.parametrize("method, kill_after", [("compoformer_grow", (0, "end")),
                                               ("compoformer_grow", (1, "decide")),
                                               ("compoformer_prune", (1, "decide"))])
def test_run_resumed_after_a_stage_is_bit_identical(toys, tmp_path, monkeypatch, method, kill_after):
    """Killed at a boundary after stage 0 and resumed in a fresh start, a run with dropout (which
    draws from the global RNG) ends with the weights of the run that was never stopped (Prune:
    also with the frozen module's features computed afresh by the resumed process)."""
    config = toys.tiny_config(tmp_path, [PLUS, MINUS], method)
    args = ["--config", str(config), "model.dropout=0.2", "train.eval_every=0"]
    assert train_agent_main([*args, "run.name=whole"]) == 0
    original = ContinualRun.phase_done

    def killed(self, stage, phase, steps=0):
        original(self, stage, phase, steps)
        if (stage, phase) == kill_after:
            raise KeyboardInterrupt

    monkeypatch.setattr(ContinualRun, "phase_done", killed)
    with pytest.raises(KeyboardInterrupt):
        train_agent_main([*args, "run.name=cut"])
    monkeypatch.setattr(ContinualRun, "phase_done", original)
    assert train_agent_main(["--resume", str(tmp_path / "runs" / "cut")]) == 0
    whole, cut = final_weights(tmp_path / "runs" / "whole"), final_weights(tmp_path / "runs" / "cut")
    assert whole.keys() == cut.keys()
    assert [k for k in whole if not torch.equal(whole[k], cut[k])] == []


def test_max_timestep_shorter_than_the_episodes_is_reported_before_training(toys, tmp_path, capsys):
    config = toys.tiny_config(tmp_path, [PLUS, MINUS], "finetune")
    assert train_agent_main(["--config", str(config), "model.max_timestep=5"]) == 2
    err = capsys.readouterr().err
    assert "model.max_timestep=5 is shorter than" in err and "set model.max_timestep=8" in err
    assert not (tmp_path / "runs" / "seq" / "stages").exists()


def test_report_of_a_missing_run_dir(tmp_path, capsys):
    assert orl_main(["report", str(tmp_path / "nope")]) == 2
    assert f"Run directory {str(tmp_path / 'nope')!r} does not exist." in capsys.readouterr().err


def test_curves_of_the_current_task_only(toys, tmp_path):
    """continual.curve_tasks=current: before a stage's end only its own task is evaluated; the
    end of every stage still evaluates every task (the success matrix)."""
    config = toys.tiny_config(tmp_path, [PLUS, MINUS], "finetune", curve_tasks="current")
    assert train_agent_main(["--config", str(config)]) == 0
    state = json.loads((tmp_path / "runs" / "seq" / "continual.json").read_text())
    for e in state["evaluations"]:
        evaluated = [i for i, v in enumerate(e["success"]) if v == v]  # not NaN
        assert evaluated == ([0, 1] if e["step"] == 10 else [e["stage"]])
    assert all(v == v for row in state["rows"] for v in row)
    results = load_results(tmp_path / "runs" / "seq")
    assert own_stage_curve(results, 1)["steps"] == [0, 5, 10]
    with pytest.raises(ValueError, match="curve_tasks must be all or current"):
        ContinualConfig(curve_tasks="some")


def test_matrix_rows_of_the_seen_tasks_and_the_next(toys, tmp_path, capsys):
    """continual.matrix_tasks=seen: the row after stage i evaluates stages 0 .. i+1 only; P, F
    and FWT come out of that matrix as they do from a full one."""
    config = toys.tiny_config(tmp_path, [PLUS, MINUS, PLUS], "finetune", matrix_tasks="seen")
    assert train_agent_main(["--config", str(config)]) == 0
    run = tmp_path / "runs" / "seq"
    state = json.loads((run / "continual.json").read_text())
    evaluated = [[j for j, v in enumerate(row) if v == v] for row in state["rows"]]
    assert evaluated == [[0, 1], [0, 1, 2], [0, 1, 2]]
    capsys.readouterr()
    assert orl_main(["report", str(run)]) == 0
    report = json.loads((run / "report.json").read_text())
    m, b = report["matrix"], report["before"]
    assert report["stages_done"] == 3
    assert report["performance"] == pytest.approx(sum(m[2]) / 3)
    assert report["forgetting"] == pytest.approx(sum(m[i][i] - m[2][i] for i in range(3)) / 3)
    assert report["forward_transfer"] == pytest.approx((m[0][1] - b[1] + m[1][2] - b[2]) / 2)
    with pytest.raises(ValueError, match="matrix_tasks must be all or seen"):
        ContinualConfig(matrix_tasks="some")


def test_evaluation_after_the_sequence_replaces_the_last_row(toys, tmp_path, capsys):
    """continual.final_episodes: the end of the last stage evaluates only its own task (its
    curve's last point), the evaluation after the sequence is the last row; with as many
    episodes as a stage's the report, the record and the plots equal a run without it, whose
    last stage evaluated the whole row."""
    envs, seen = [PLUS, MINUS, PLUS], {"matrix_tasks": "seen", "curve_tasks": "current"}
    runs = {}
    for name, final in (("row", 0), ("final", 2)):
        config = toys.tiny_config(tmp_path, envs, "finetune", final_episodes=final, **seen)
        assert train_agent_main(["--config", str(config), f"run.name={name}"]) == 0
        runs[name] = tmp_path / "runs" / name
    state = json.loads((runs["final"] / "continual.json").read_text())
    evaluated = [[j for j, v in enumerate(row) if v == v] for row in state["rows"]]
    assert evaluated == [[0, 1], [0, 1, 2], [2]] and len(state["final"]) == 3
    last = [e for e in state["evaluations"] if e["stage"] == 2]
    assert all([j for j, v in enumerate(e["success"]) if v == v] == [2] for e in last)
    reports = {}
    for name, run in runs.items():
        capsys.readouterr()
        assert orl_main(["report", str(run)]) == 0
        assert "3/3 stages done" in capsys.readouterr().out
        reports[name] = json.loads((run / "report.json").read_text())
        assert len(continual_record(load_results(run))["curves"]) == 3
    assert reports["final"] == reports["row"]
    assert reports["final"]["matrix"][2] == state["final"]
    assert (continual_metrics(load_results(runs["final"]))
            == continual_metrics(load_results(runs["row"])))
