"""The Flower runtime on loopback: a real SuperLink and two SuperNodes (insecure, free ports)
started from this interpreter's scripts folder with a PATH that lacks it otherwise, driven by
`flwr run`; FedAvg gives the embedded simulation's weights, and FedSkip survives a SuperNode
killed and restarted mid-run (its new node id takes the client over). ``FlowerClients``' map of
clients to nodes is also tested on a fake grid."""

import json
import os
import re
import signal
import socket
import subprocess
import sysconfig
import time
from pathlib import Path

import pytest
import torch
import yaml
from flwr.app import Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from safetensors.torch import load_file

from orl.agents.federated.flower import FlowerClients
from orl.agents.federated.runner import FederatedRun, LocalClients, federated_setup
from orl.agents.federated.strategy import Assignment, Update
from orl.config.experiment import ExperimentConfig
from orl.config.loader import load_config

APP = Path(__file__).resolve().parents[3] / "agents" / "federated" / "flower_app"
SCRIPTS = Path(sysconfig.get_path("scripts"))  # flower-superlink, flower-superexec, flwr, ...


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def flower_env(home: Path) -> dict:
    """The processes' environment: this interpreter's scripts folder first on a minimal PATH.
    The SuperLink and SuperNodes start ``flower-superexec`` by name, so without it there they
    would not find it (or find another installation's)."""
    return {**os.environ, "PATH": f"{SCRIPTS}{os.pathsep}{os.defpath}", "FLWR_HOME": str(home),
            "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


class Federation:
    """A SuperLink and SuperNodes on loopback, each in its own session; ``stop`` ends them all."""

    def __init__(self, tmp_path: Path) -> None:
        self.logs, self.procs = tmp_path, []
        self.link, *self.ports = free_ports(5)
        home = tmp_path / "flwr"
        home.mkdir()
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n[superlink.local]\naddress = "127.0.0.1:{self.link}"\n'
            "insecure = true\n")
        self.env = flower_env(home)

    def start(self, name, *args):
        log = open(self.logs / f"{name}.log", "w")
        proc = subprocess.Popen([str(SCRIPTS / args[0]), *args[1:]], stdout=log,
                                stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.procs.append((proc, log))
        return proc

    def start_superlink(self):
        self.start("superlink", "flower-superlink", "--insecure", "--host", "127.0.0.1",
                   "--port", str(self.link))

    def start_supernode(self, client: int, name: str):
        return self.start(name, "flower-supernode", "--insecure", "--superlink",
                          f"127.0.0.1:{self.link}", "--host", "127.0.0.1", "--port",
                          str(self.ports.pop()), "--node-config", f"partition-id={client}")

    def run(self, config_path: Path, run_dir: Path):
        return self.start("flwr-run", "flwr", "run", str(APP), "local", "--stream", "--run-config",
                          f"orl-config='{config_path}' run-dir='{run_dir}'")

    def stop(self):
        for proc, _ in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc, log in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()


def write_config(tmp_path, paths, federated):
    config = {
        "agent": {"name": "mtdt"}, "data": {"datasets": [str(p) for p in paths]},
        "model": {"embed_dim": 16, "n_layer": 1, "n_head": 1},
        "sampler": {"context_len": 4, "batch_size": 8, "rtg_scale": 1.0},
        "train": {"warmup_steps": 1},
        "federated": {"clients": 2, "local_steps": 3, **federated},
        "run": {"logger": "csv"},
    }
    path = tmp_path / "fed.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def metric_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def wait_for(condition, run, log: Path, seconds: float) -> None:
    """Until ``condition()``; fails if the `flwr run` process failed or time is up."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert run.poll() in (None, 0), log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)


def left_out(log: Path) -> set[tuple[int, int]]:
    """(round, client) of every update the server's log says it left out (round 1-based)."""
    return {(int(r), int(c)) for r, c in re.findall(r"round (\d+): client (\d+) left out",
                                                     log.read_text())}


def embedded_weights(cfg, run_dir: Path, failed=frozenset()) -> dict:
    """The global weights of the embedded simulation of ``cfg`` whose clients fail where
    ``failed`` says ((round, client), round 1-based)."""
    setup = federated_setup(cfg)
    local = LocalClients(setup, run_dir)

    def execute(assignments):
        results = local(assignments)
        return {a.slot: "failed" if (a.round + 1, a.client) in failed else results[a.slot]
                for a in assignments}

    FederatedRun(setup, run_dir).fit(execute)
    return setup.agent.state_dict()


def assert_same_weights(saved: dict, expected: dict) -> None:
    assert saved.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(saved[name], value), name


@pytest.mark.timeout(300)
def test_flower_superlink_and_two_supernodes_run_two_fedavg_rounds(tmp_path, task_files):
    paths = task_files(["alpha", "beta"], episodes=4, length=12)
    config_path = write_config(tmp_path, paths, {"strategy": "fedavg", "rounds": 2})
    run_dir = tmp_path / "flower_run"
    final = run_dir / "checkpoints" / "final" / "model.safetensors"
    flower = Federation(tmp_path)
    try:
        flower.start_superlink()
        for client in (0, 1):
            flower.start_supernode(client, f"supernode{client}")
        run = flower.run(config_path, run_dir)
        wait_for(final.is_file, run, tmp_path / "flwr-run.log", 240)
    finally:
        flower.stop()

    cfg = load_config(ExperimentConfig, config_path)
    embedded = embedded_weights(cfg, tmp_path / "embedded")
    assert_same_weights(load_file(final), embedded)
    initial = federated_setup(cfg).agent.state_dict()
    assert not all(torch.equal(initial[k], v) for k, v in embedded.items())  # it trained
    rows = metric_rows(run_dir)
    assert len(rows) == 2 and rows[1]["fed/clients_ok"] == 2


@pytest.mark.timeout(300)
def test_fedskip_over_the_superlink_survives_a_supernode_killed_and_restarted(tmp_path, task_files):
    paths = task_files(["alpha", "beta"], episodes=4, length=12)
    config_path = write_config(tmp_path, paths, {
        "strategy": "fedskip", "rounds": 3, "skip_period": 3, "client_timeout_s": 20.0})
    run_dir = tmp_path / "flower_run"
    final = run_dir / "checkpoints" / "final" / "model.safetensors"
    flower = Federation(tmp_path)
    try:
        flower.start_superlink()
        node0 = flower.start_supernode(0, "supernode0")
        flower.start_supernode(1, "supernode1")
        run = flower.run(config_path, run_dir)
        log = tmp_path / "flwr-run.log"
        wait_for(lambda: len(metric_rows(run_dir)) >= 1, run, log, 180)
        os.killpg(node0.pid, signal.SIGKILL)  # round 2 is under way: its train message is lost
        node0.wait()
        flower.start_supernode(0, "supernode0-restarted")  # a new node id, the same partition
        wait_for(final.is_file, run, log, 180)
    finally:
        flower.stop()

    rows = metric_rows(run_dir)
    assert [r["fed/round"] for r in rows] == [1, 2, 3]
    failed = left_out(log)
    assert (2, 0) in failed and rows[-1]["fed/clients_ok"] == 2  # lost client 0, then had it back
    assert "client 0: now on node" in log.read_text()
    cfg = load_config(ExperimentConfig, config_path)
    assert_same_weights(load_file(final), embedded_weights(cfg, tmp_path / "embedded", failed))


class FakeGrid:
    """Nodes by id with the partition each holds; ``dead`` nodes are listed but never answer.
    Train replies send the weights back."""

    def __init__(self, nodes: dict[int, int]) -> None:
        self.nodes, self.dead, self.trained = dict(nodes), set(), []

    def get_node_ids(self):
        return list(self.nodes)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node in self.dead:
                continue
            if msg.metadata.message_type == MessageType.QUERY:
                content = {"client": MetricRecord({"partition-id": self.nodes[node]})}
            else:
                self.trained.append(node)
                content = {"arrays": msg.content["arrays"],
                           "metrics": MetricRecord({"num-examples": 4, "loss": 0.5})}
            replies.append(Message(RecordDict(content), reply_to=msg))
        return replies


@pytest.fixture
def task_identity(monkeypatch):
    """Messages can be made outside a Flower process (they read the run and node ids)."""
    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def round_of(r):
    weights = {"w": torch.full((2,), float(r))}
    return [Assignment(r, slot=0, client=1, weights=weights),
            Assignment(r, slot=1, client=0, weights=weights)]


def test_a_restarted_supernode_takes_its_client_over_under_its_new_id(task_identity):
    grid = FakeGrid({10: 0, 11: 1})
    clients = FlowerClients(grid, num_clients=2, wait_s=1)
    assert clients.node_of == {0: 10, 1: 11}
    assert all(isinstance(u, Update) for u in clients(round_of(0)).values())

    grid.dead.add(10)  # killed: listed until the SuperLink misses its heartbeats, never answers
    results = clients(round_of(1))
    assert isinstance(results[0], Update) and 1 not in results  # client 0 (slot 1): no reply
    grid.nodes[12] = 0  # restarted: a new node id, the same partition
    results = clients(round_of(2))
    assert clients.node_of == {0: 12, 1: 11} and all(isinstance(u, Update) for u in results.values())
    assert grid.trained[-2:] == [11, 12]

    del grid.nodes[11]  # client 1's node left for good
    results = clients(round_of(3))
    assert results[0] == "no SuperNode holds partition-id 1" and isinstance(results[1], Update)
