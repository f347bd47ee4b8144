"""Continual World's forward transfer against single-task reference runs that share the
sequence's model, the multi-task bound, and one implementation of the metrics for
``orl report`` and the results store."""

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from orl.agents.continual import (
    continual_metrics,
    continual_record,
    load_results,
    own_stage_curve,
    record_metrics,
    reference_curves,
)
from orl.agents.continual.config import ContinualConfig
from orl.agents.continual.metrics import task_transfer
from orl.agents.continual.runner import ContinualRun
from orl.api import load_trained_agent
from orl.cli import main as orl_main
from orl.cli import train_agent_main
from orl.config import from_dict
from orl.config.experiment import ExperimentConfig
from orl.eval.result import TaskResult

PLUS, MINUS = "ToySignPlus-v0", "ToySignMinus-v0"


def experiment(config, **continual):
    """The experiment config of YAML ``config`` with ``continual`` keys changed."""
    data = yaml.safe_load(config.read_text())
    data["continual"] |= continual
    return from_dict(ExperimentConfig, data)


def model_weights(run, stage_dir):
    """The DT's weights saved after a stage (without the per-stage state statistics)."""
    saved = load_file(run / "stages" / stage_dir / "end.done" / "model.safetensors")
    return {k: v for k, v in saved.items() if k.startswith("model.")}


def test_reference_run_builds_the_model_of_the_whole_sequence(toys, tmp_path):
    config = toys.tiny_config(tmp_path, [PLUS, MINUS, PLUS])
    whole = ContinualRun(experiment(config), tmp_path / "whole")
    ref = ContinualRun(experiment(config, reference="s1"), tmp_path / "ref")
    assert [s.name for s in ref.stages] == ["s1"] and ref.agent.heads == [1]
    assert len(ref.agent.model.heads) == len(whole.agent.model.heads) == 3
    expected, got = whole.agent.model.state_dict(), ref.agent.model.state_dict()
    assert expected.keys() == got.keys()
    assert [k for k in expected if not torch.equal(expected[k], got[k])] == []  # same init
    assert torch.equal(ref.agent.state_mean[0], whole.agent.state_mean[1])
    batch = ref.sampler(0).sample()  # task 0 of the reference run is played with head 1
    inputs = (batch.states, batch.actions, batch.returns_to_go, batch.timesteps, batch.mask)
    assert torch.equal(ref.agent.batch_actions(batch), whole.agent.actions(inputs, 1))


def test_bad_references_are_reported(toys, tmp_path, capsys):
    config = toys.tiny_config(tmp_path, [PLUS, MINUS])
    assert train_agent_main(["--config", str(config), "continual.reference=s2"]) == 2
    assert "continual.reference='s2' is not a stage of the sequence; give one of ['s0', 's1']" in (
        capsys.readouterr().err)
    with pytest.raises(ValueError, match="set continual.method=finetune, not 'packnet'"):
        ContinualConfig(reference="s0", method="packnet")


def test_cw_forward_transfer_against_reference_runs(toys, tmp_path, capsys):
    config = toys.tiny_config(tmp_path, [PLUS, MINUS])
    runs = tmp_path / "runs"
    assert train_agent_main(["--config", str(config)]) == 0
    for stage in ("s0", "s1"):
        assert train_agent_main(["--config", str(config), f"continual.reference={stage}",
                                 f"run.name=ref-{stage}"]) == 0
    # the first task's reference trains exactly what the sequence's first stage trained
    whole, first = model_weights(runs / "seq", "00-s0"), model_weights(runs / "ref-s0", "00-s0")
    assert whole.keys() == first.keys()
    assert [k for k in whole if not torch.equal(whole[k], first[k])] == []
    refs = [runs / "ref-s0", runs / "ref-s1"]
    assert load_trained_agent(refs[1]).heads == [1]  # rebuilt with the sequence's heads
    curves = reference_curves(refs)
    assert list(curves) == [PLUS, MINUS]
    assert all(c["steps"] == [0, 5, 10] for c in curves.values())
    assert orl_main(["report", str(runs / "seq"), "--reference", *map(str, refs)]) == 0
    results = load_results(runs / "seq")
    expected = (task_transfer(own_stage_curve(results, 0), curves[PLUS])
                + task_transfer(own_stage_curve(results, 1), curves[MINUS])) / 2
    report = json.loads((runs / "seq" / "report.json").read_text())
    assert report["cw_forward_transfer"] == pytest.approx(expected)
    # a reference evaluated at other points is an error that says so
    assert train_agent_main(["--config", str(config), "continual.reference=s1",
                             "train.eval_every=2", "run.name=dense"]) == 0
    capsys.readouterr()
    assert orl_main(["report", str(runs / "seq"), "--reference", str(refs[0]),
                     str(runs / "dense")]) == 2
    assert ("task s1: evaluated at steps [0, 5, 10] of its stage but its reference at "
            "[0, 2, 4, 6, 8, 10]") in capsys.readouterr().err


def test_report_and_store_metrics_come_from_one_implementation(toys, tmp_path):
    config = toys.tiny_config(tmp_path, [PLUS, MINUS, PLUS], "ewc")
    assert train_agent_main(["--config", str(config)]) == 0
    run = tmp_path / "runs" / "seq"
    report = json.loads((run / "report.json").read_text())
    metrics = continual_metrics(load_results(run))
    assert set(metrics) <= set(report) and {k: report[k] for k in metrics} == metrics
    record = json.loads(json.dumps(continual_record(load_results(run))))  # as a store keeps it
    assert record_metrics(record) == metrics
    references = {PLUS: record["curves"][0], MINUS: record["curves"][1]}
    assert record_metrics(record, references) == continual_metrics(load_results(run), references)


def test_final_matched_is_the_success_on_the_episodes_of_the_rows(toys, tmp_path, monkeypatch):
    """Episode i of a task is played with seed run.seed + i whatever their number, so the first
    eval.episodes of the evaluation after the sequence are those every row of R played."""
    config = toys.tiny_config(tmp_path, [PLUS, MINUS])
    run = ContinualRun(experiment(config, final_episodes=6), tmp_path / "run")
    outcomes = {0: [1, 1, 0, 0, 0, 0], 1: [0, 1, 1, 1, 1, 1]}

    def played(group, episodes):
        return [TaskResult(task=f"s{i}", env_id=[PLUS, MINUS][i], returns=np.zeros(episodes),
                           lengths=np.ones(episodes, dtype=np.int64),
                           successes=np.array(outcomes[i][:episodes], dtype=float)) for i in group]

    monkeypatch.setattr(run, "evaluate_tasks", played)
    after = run.evaluate_after_sequence(6)  # eval.episodes: 2
    assert after["final"] == pytest.approx([2 / 6, 5 / 6])
    assert after["final_matched"] == pytest.approx([1.0, 0.5])
    assert run.evaluate_after_sequence(1)["final_matched"] is None  # fewer than a row's


def test_isolation_forgets_nothing_on_the_rows_episodes(toys, tmp_path):
    """PackNet keeps an earlier task's policy bit for bit: after the sequence it succeeds on the
    rows' episodes exactly as at the end of its stage, and F is 0."""
    config = toys.tiny_config(tmp_path, [PLUS, MINUS, PLUS], "packnet", final_episodes=4)
    assert train_agent_main(["--config", str(config)]) == 0
    results = load_results(tmp_path / "runs" / "seq")
    diagonal = [results["matrix"][i][i] for i in range(2)]
    assert results["final_matched"][:2] == diagonal and len(results["final"]) == 3
    assert continual_metrics(results)["forgetting"] == 0.0


def test_multi_task_bound_trains_as_many_steps_on_all_tasks(toys, tmp_path):
    config = toys.tiny_config(tmp_path, [PLUS, MINUS])
    states = {}
    for method in ("finetune", "mtl"):
        assert train_agent_main(["--config", str(config), f"continual.method={method}",
                                 f"run.name={method}"]) == 0
        run = tmp_path / "runs" / method
        states[method] = json.loads((run / "continual.json").read_text())
        final_steps = [json.loads((run / "stages" / f"0{i}-s{i}" / "train" / "checkpoints" / "final"
                                   / "state.json").read_text())["step"] for i in range(2)]
        assert final_steps == [10, 10]  # tasks x steps per task
    mtl, finetune = states["mtl"], states["finetune"]
    assert mtl["steps_done"] == finetune["steps_done"] == 2 * 10
    assert [(e["stage"], e["step"]) for e in mtl["evaluations"]] == [
        (e["stage"], e["step"]) for e in finetune["evaluations"]]
    assert np.shape(mtl["rows"]) == np.shape(finetune["rows"]) == (2, 2)
    assert mtl["rows"][-1] == [1.0, 1.0]  # both tasks learnt, each by its own head
    # every stage samples both tasks' data
    probe = ContinualRun(experiment(config, method="mtl"), tmp_path / "probe")
    for stage in range(2):
        sampler = probe.sampler(stage)
        tasks = torch.cat([sampler.sample().task for _ in range(4)])
        assert set(tasks.tolist()) == {0, 1}
