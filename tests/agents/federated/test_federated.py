"""Federated strategies (FedAvg, FedProx, FedSkip), partitions, faults and the embedded runtime."""

import json
import logging

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from orl.agents.federated.client import ProximalTerm
from orl.agents.federated.partition import dirichlet_partition, task_partition
from orl.agents.federated.runner import FederatedRun, LocalClients, federated_setup
from orl.agents.federated.strategy import FedAvg, FedSkip, Update
from orl.agents.federated.weights import check_update, get_weights, weighted_average
from orl.cli import main as orl_main
from orl.cli import train_agent_main
from orl.config.experiment import ExperimentConfig
from orl.config.loader import load_config
from orl.datasets.store import TrajectoryStore


def filled(value, shape=(2, 3)):
    return {"w": torch.full(shape, float(value)), "b": torch.full((shape[0],), float(value))}


class FixedPermutations:
    """Stands in for the strategy's generator: hands out the given permutations in turn."""

    def __init__(self, *perms):
        self.perms = [np.array(p) for p in perms]

    def permutation(self, n):
        return self.perms.pop(0)


# ------------------------------------------------------------------ strategies
def test_fedskip_routes_every_slot_to_a_different_client_with_a_fresh_permutation():
    strategy = FedSkip(filled(0), num_clients=6, seed=3, skip_period=2)
    rounds = []
    for _ in range(4):
        assignments = strategy.configure()
        clients = [a.client for a in assignments]
        assert sorted(clients) == list(range(6))  # each slot to a different client, all used
        assert [a.slot for a in assignments] == list(range(6))
        rounds.append(clients)
        strategy.aggregate({a.slot: Update(filled(a.client), 1) for a in assignments})
    assert len({tuple(c) for c in rounds}) > 1  # redrawn every round
    fewer = FedSkip(filled(0), num_clients=6, seed=3, slots=2).configure()
    assert len({a.client for a in fewer}) == 2 and [a.slot for a in fewer] == [0, 1]


def test_fedskip_trains_slots_on_and_weights_them_by_the_data_they_saw():
    sizes = [1, 2, 3]  # trajectories of clients 0, 1, 2
    strategy = FedSkip(filled(0), num_clients=3, skip_period=2)
    strategy.rng = FixedPermutations([2, 0, 1], [1, 2, 0], [0, 1, 2])
    first = strategy.configure()
    assert [(a.slot, a.client) for a in first] == [(0, 2), (1, 0), (2, 1)]
    report = strategy.aggregate({a.slot: Update(filled(a.client + 1), sizes[a.client]) for a in first})
    assert not report.aggregated and torch.equal(strategy.global_weights["w"], torch.zeros(2, 3))
    second = strategy.configure()
    # each slot goes on from its own weights (what its last client made of it), not the global model
    assert [(a.client, a.weights["w"][0, 0].item()) for a in second] == [(1, 3.0), (2, 1.0), (0, 2.0)]
    report = strategy.aggregate({a.slot: Update(filled(a.client + 1), sizes[a.client]) for a in second})
    # slot 0 saw clients 2 then 1 (3 + 2 trajectories) and holds client 1's weights (2);
    # slot 1: clients 0, 2 (1 + 3) -> 3; slot 2: clients 1, 0 (2 + 1) -> 1
    assert report.aggregated and report.shares == {0: 5 / 12, 1: 4 / 12, 2: 3 / 12}
    assert torch.allclose(strategy.global_weights["w"], torch.full((2, 3), (5 * 2 + 4 * 3 + 3 * 1) / 12))
    assert all(a.weights is strategy.global_weights for a in strategy.configure())  # slots reset
    assert strategy.counts == [0, 0, 0]


def test_weighted_average_matches_the_obvious_formula():
    terms = [(filled(1.0), 1), (filled(4.0), 3)]
    assert torch.allclose(weighted_average(terms)["w"], torch.full((2, 3), (1 * 1 + 4 * 3) / 4))
    with pytest.raises(ValueError, match="positive count"):
        weighted_average([])


def test_failed_and_bad_updates_are_logged_and_left_out(caplog):
    strategy = FedAvg(filled(0), num_clients=4)
    strategy.configure()
    bad_shape = {"w": torch.zeros(3, 3), "b": torch.zeros(2)}
    results = {0: Update(filled(2), 5), 1: "failed: RuntimeError('boom')",
               2: Update(filled(float("nan")), 5), 3: Update(bad_shape, 5)}
    with caplog.at_level(logging.WARNING):
        report = strategy.aggregate(results)
    assert report.accepted == [0] and sorted(report.failures) == [1, 2, 3]
    assert "NaN/inf" in report.failures[2] and "expected (2, 3)" in report.failures[3]
    assert "boom" in caplog.text and "client 2 left out" in caplog.text
    assert report.shares == {0: 1.0}  # renormalised over the one good update
    assert torch.equal(strategy.global_weights["w"], torch.full((2, 3), 2.0))
    assert report.bytes_sent == 4 * (6 + 2) * 4 and report.bytes_received == (2 * (6 + 2) + 9 + 2) * 4


def test_fedskip_slot_of_a_dropped_client_keeps_its_weights_and_count():
    strategy = FedSkip(filled(0), num_clients=2, skip_period=2)
    strategy.rng = FixedPermutations([0, 1], [1, 0])
    strategy.configure()  # slot 0 -> client 0, slot 1 -> client 1
    strategy.aggregate({0: Update(filled(1), 1), 1: Update(filled(3), 3)})
    assignments = strategy.configure()  # slot 0 -> client 1 (drops out), slot 1 -> client 0
    report = strategy.aggregate({1: Update(filled(5), 1)})
    assert report.failures == {1: "no reply (failed or timed out)"}
    # slot 0: 1 trajectory (round 1), weights 1; slot 1: 3 + 1 trajectories, weights 5
    assert report.shares == {0: 1 / 5, 1: 4 / 5}
    assert torch.allclose(strategy.global_weights["w"], torch.full((2, 3), (1 * 1 + 4 * 5) / 5))
    assert assignments[0].client == 1


def test_check_update_names_the_problem():
    assert check_update(filled(0), filled(1)) is None
    assert "missing" in check_update(filled(0), {"w": torch.zeros(2, 3)})
    assert "float64" in check_update(filled(0), {k: v.double() for k, v in filled(0).items()})


def test_proximal_term_is_mu_half_squared_distance_to_the_start():
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor([1.0, 2.0]))

        def loss(self, batch):
            return self.w.sum() * 0, {}

    toy = Toy()
    prox = ProximalTerm(toy, mu=0.5)
    with torch.no_grad():
        toy.w += torch.tensor([1.0, -2.0])
    loss, metrics = prox.loss(None)
    assert loss.item() == pytest.approx(0.5 / 2 * (1 + 4)) and "proximal" in metrics


# ------------------------------------------------------------------ partitions
def tiny_store(tasks=3, episodes=4, length=5):
    n = tasks * episodes * length
    return TrajectoryStore(
        observations=np.zeros((n, 2)), actions=np.zeros((n, 1)), rewards=np.zeros(n),
        terminals=np.zeros(n, bool), timeouts=np.zeros(n, bool),
        episode_starts=np.arange(0, n + 1, length),
        episode_task=np.repeat(np.arange(tasks), episodes), task_names=[f"t{i}" for i in range(tasks)])


def test_task_partition_whole_tasks_per_client():
    store = tiny_store()
    parts = task_partition(store, 2)
    assert [sorted(set(store.episode_task[p])) for p in parts] == [[0, 2], [1]]
    parts = task_partition(store, 2, [["t1"], ["t0", "t2"]])
    assert [sorted(set(store.episode_task[p])) for p in parts] == [[1], [0, 2]]
    with pytest.raises(ValueError, match="t9"):
        task_partition(store, 1, [["t9"]])
    with pytest.raises(ValueError, match="dirichlet"):
        task_partition(store, 4)


def test_dirichlet_partition_splits_every_episode_once_and_skews_with_small_beta():
    store = tiny_store(tasks=4, episodes=50)
    parts = dirichlet_partition(store, 4, beta=0.1, rng=np.random.default_rng(0))
    assert sorted(np.concatenate(parts).tolist()) == list(range(store.num_episodes))
    assert all(len(p) for p in parts)
    skewed = [np.bincount(store.episode_task[p], minlength=4).max() / len(p) for p in parts]
    even = dirichlet_partition(store, 4, beta=1000.0, rng=np.random.default_rng(0))
    balanced = [np.bincount(store.episode_task[p], minlength=4).max() / len(p) for p in even]
    assert np.mean(skewed) > 0.6 > 0.35 > np.mean(balanced)
    with pytest.raises(ValueError, match="cannot be split"):
        dirichlet_partition(tiny_store(tasks=1, episodes=2), 3, 1.0, np.random.default_rng(0))


# ------------------------------------------------------------- embedded runtime
@pytest.fixture
def tasks(task_files):
    return task_files(["alpha", "beta", "gamma"])


def tiny_args(tmp_path, data, *extra):
    return [f"data.datasets=[{','.join(map(str, data))}]", "agent.name=mtdt",
            "model.embed_dim=16", "model.n_layer=1", "model.n_head=1",
            "sampler.context_len=4", "sampler.batch_size=8", "sampler.rtg_scale=1.0",
            "train.warmup_steps=1", "federated.clients=3", "federated.local_steps=4",
            "run.logger=csv", f"run.out_dir={tmp_path / 'runs'}", *extra]


def tiny_config(tmp_path, data, *extra):
    return load_config(ExperimentConfig, None, tiny_args(tmp_path, data, *extra))


def run_rounds(cfg, run_dir):
    setup = federated_setup(cfg)
    FederatedRun(setup, run_dir).fit(LocalClients(setup, run_dir))
    return setup.agent


def test_local_update_is_seeded_by_round_and_client_and_writes_nothing(tmp_path, tasks):
    from orl.agents.federated.client import local_train_config, local_update
    from orl.agents.federated.strategy import Assignment

    cfg = tiny_config(tmp_path, tasks, "federated.strategy=fedavg")
    setup = federated_setup(cfg)
    start = get_weights(setup.agent)
    train = local_train_config(cfg.train, 4)

    def update(client, round=0):
        return local_update(setup.agent, setup.clients[client], Assignment(round, 0, client, start),
                            train, cfg.run.seed, tmp_path / "local").weights

    first, again, other, later = update(0), update(0), update(1), update(0, round=1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    assert not all(torch.equal(first[k], later[k]) for k in first)
    assert not all(torch.equal(first[k], start[k]) for k in first)
    assert not (tmp_path / "local").exists()  # the local Trainer writes no checkpoints


def test_a_client_over_the_time_limit_is_reported_timed_out(tmp_path, tasks):
    cfg = tiny_config(tmp_path, tasks, "federated.strategy=fedavg", "federated.client_timeout_s=1e-9")
    setup = federated_setup(cfg)
    strategy = FedAvg(get_weights(setup.agent), len(setup.clients))
    results = LocalClients(setup, tmp_path)(strategy.configure())
    assert all(r.startswith("timed out") for r in results.values()) and len(results) == 3
    with pytest.raises(RuntimeError, match="every client failed"):
        FederatedRun(setup, tmp_path / "run").fit(LocalClients(setup, tmp_path))


def test_fedskip_with_period_one_is_fedavg_bit_for_bit(tmp_path, tasks):
    fedavg = run_rounds(tiny_config(tmp_path, tasks, "federated.strategy=fedavg",
                                    "federated.rounds=2"), tmp_path / "a")
    fedskip = run_rounds(tiny_config(tmp_path, tasks, "federated.strategy=fedskip",
                                     "federated.rounds=2", "federated.skip_period=1"), tmp_path / "s")
    other = run_rounds(tiny_config(tmp_path, tasks, "federated.strategy=fedskip",
                                   "federated.rounds=2", "federated.skip_period=2"), tmp_path / "s2")
    for (name, a), b in zip(fedavg.state_dict().items(), fedskip.state_dict().values()):
        assert torch.equal(a, b), name
    assert not all(torch.equal(a, c) for a, c in zip(fedavg.parameters(), other.parameters()))


def test_train_agent_runs_resumes_and_evaluates_a_federated_run(tmp_path, tasks, capsys):
    common = ["federated.strategy=fedskip", "federated.skip_period=2"]
    assert train_agent_main(tiny_args(tmp_path, tasks, *common, "federated.rounds=4",
                                      "run.name=full")) == 0
    assert train_agent_main(tiny_args(tmp_path, tasks, *common, "federated.rounds=2",
                                      "run.name=part")) == 0
    part = tmp_path / "runs" / "part"
    assert train_agent_main(["--resume", str(part), "federated.rounds=4"]) == 0
    full = tmp_path / "runs" / "full"
    for run in (full, part):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["fed/round"] for r in rows] == [1, 2, 3, 4]
        assert [r["fed/aggregated"] for r in rows] == [0.0, 1.0, 0.0, 1.0]
    weights = [load_file(run / "checkpoints" / "final" / "model.safetensors") for run in (full, part)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # resumed exactly
    state = json.loads((full / "checkpoints" / "final" / "state.json").read_text())
    assert state["step"] == 4 and state["federated"]["counts"] == [0, 0, 0]


def test_single_task_dirichlet_run_logs_global_success_and_loads_for_eval(tmp_path, tasks, caplog,
                                                                           monkeypatch):
    from orl.agents.federated import runner

    real = runner.local_update

    def flaky(agent, data, assignment, *args):
        if assignment.client == 1 and assignment.round == 0:
            raise RuntimeError("client 1 lost power")
        return real(agent, data, assignment, *args)

    monkeypatch.setattr(runner, "local_update", flaky)
    args = tiny_args(tmp_path, tasks[:1], "agent.name=dt", "data.eval_tasks=[Pendulum-v1]",
                     "federated.strategy=fedprox", "federated.partition=dirichlet",
                     "federated.clients=2", "federated.rounds=2", "eval.episodes=2",
                     "eval.num_envs=2", "eval.max_steps=5", "run.name=dir")
    with caplog.at_level(logging.WARNING):
        assert train_agent_main(args) == 0
    assert "client 1 lost power" in caplog.text
    run = tmp_path / "runs" / "dir"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["fed/clients_failed"] == 1 and rows[1]["fed/clients_failed"] == 0
    assert all("eval/return/Pendulum-v1" in r for r in rows[:2])  # every round (eval_every=1)
    assert (run / "eval_final.json").is_file()
    out = tmp_path / "eval.json"
    assert orl_main(["eval", str(run), "--tasks", "Pendulum-v1", "--episodes", "1", "--num-envs", "1",
                     "--json", str(out)]) == 0
    assert "return_mean" in json.loads(out.read_text())


@pytest.mark.parametrize("extra, message", [
    (["federated.strategy=fedskip", "federated.rounds=5", "federated.skip_period=2"], "multiple"),
    (["federated.strategy=fedavg", "train.warmup_steps=10"], "warmup_steps"),
    (["federated.strategy=fedavg", "agent.name=harmodt"], "supports agent.name"),
    (["federated.strategy=fedsgd"], "federated.strategy must be one of"),
])
def test_bad_federated_config_is_reported(tmp_path, tasks, capsys, extra, message):
    assert train_agent_main(tiny_args(tmp_path, tasks, *extra, "run.name=bad")) == 2
    assert message in capsys.readouterr().err


def test_resume_finishes_a_federated_run_killed_while_copying_its_final_checkpoint(
        tmp_path, tasks, monkeypatch, capsys):
    import orl.train.checkpoint

    copy = orl.train.checkpoint.copy_checkpoint

    def killed(source, target):
        target.with_name(f"{target.name}.tmp-0123abcd").mkdir()  # what kill -9 leaves
        raise KeyboardInterrupt

    args = tiny_args(tmp_path, tasks[:1], "agent.name=dt", "data.eval_tasks=[Pendulum-v1]",
                     "federated.strategy=fedavg", "federated.partition=dirichlet",
                     "federated.clients=2", "federated.rounds=1", "eval.episodes=1",
                     "eval.num_envs=1", "eval.max_steps=5", "run.name=cut")
    monkeypatch.setattr(orl.train.checkpoint, "copy_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        train_agent_main(args)
    monkeypatch.setattr(orl.train.checkpoint, "copy_checkpoint", copy)
    run = tmp_path / "runs" / "cut"
    assert train_agent_main(["--resume", str(run)]) == 0
    assert (run / "checkpoints" / "final").is_dir() and (run / "eval_final.json").is_file()
    assert not list((run / "checkpoints").glob("*.tmp-*"))
    capsys.readouterr()
    assert train_agent_main(["--resume", str(run)]) == 0
    assert "is complete" in capsys.readouterr().out
