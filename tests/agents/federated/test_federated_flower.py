"""The Flower runtime on loopback: a real SuperLink and two SuperNodes (insecure, free ports),
two FedAvg rounds through `flwr run`, the same weights as the embedded simulation."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from orl.agents.federated.runner import FederatedRun, LocalClients, federated_setup
from orl.config.experiment import ExperimentConfig
from orl.config.loader import load_config

APP = Path(__file__).resolve().parents[3] / "agents" / "federated" / "flower_app"
BIN = Path(sys.executable).parent


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class Processes:
    """Started in their own sessions; ``stop`` ends every one and its children."""

    def __init__(self, logs: Path, env: dict):
        self.logs, self.env, self.procs = logs, env, []

    def start(self, name, *args):
        log = open(self.logs / f"{name}.log", "w")
        proc = subprocess.Popen([str(BIN / args[0]), *args[1:]], stdout=log, stderr=subprocess.STDOUT,
                                env=self.env, start_new_session=True)
        self.procs.append((proc, log))
        return proc

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


@pytest.mark.timeout(400)
def test_flower_superlink_and_two_supernodes_run_two_fedavg_rounds(tmp_path, task_files):
    paths = task_files(["alpha", "beta"], episodes=4, length=12)
    config = {
        "agent": {"name": "mtdt"}, "data": {"datasets": [str(p) for p in paths]},
        "model": {"embed_dim": 16, "n_layer": 1, "n_head": 1},
        "sampler": {"context_len": 4, "batch_size": 8, "rtg_scale": 1.0},
        "train": {"warmup_steps": 1},
        "federated": {"strategy": "fedavg", "clients": 2, "rounds": 2, "local_steps": 3},
        "run": {"logger": "csv"},
    }
    config_path = tmp_path / "fed.yaml"
    config_path.write_text(yaml.safe_dump(config))
    link, node0, node1 = free_ports(3)
    home = tmp_path / "flwr"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n[superlink.local]\naddress = "127.0.0.1:{link}"\n'
        "insecure = true\n")
    env = {**os.environ, "FLWR_HOME": str(home), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    run_dir = tmp_path / "flower_run"
    procs = Processes(tmp_path, env)
    try:
        procs.start("superlink", "flower-superlink", "--insecure", "--host", "127.0.0.1",
                    "--port", str(link))
        for client, port in enumerate((node0, node1)):
            procs.start(f"supernode{client}", "flower-supernode", "--insecure",
                        "--superlink", f"127.0.0.1:{link}", "--host", "127.0.0.1", "--port", str(port),
                        "--node-config", f"partition-id={client}")
        run = procs.start("flwr-run", "flwr", "run", str(APP), "local", "--stream", "--run-config",
                          f"orl-config='{config_path}' run-dir='{run_dir}'")
        final = run_dir / "checkpoints" / "final" / "model.safetensors"
        deadline = time.monotonic() + 360
        while not final.is_file() and time.monotonic() < deadline:
            assert run.poll() in (None, 0), (tmp_path / "flwr-run.log").read_text()
            time.sleep(1)
        assert final.is_file(), (tmp_path / "flwr-run.log").read_text()[-3000:]
    finally:
        procs.stop()

    flower = load_file(final)
    cfg = load_config(ExperimentConfig, config_path)
    setup = federated_setup(cfg)
    FederatedRun(setup, tmp_path / "embedded").fit(LocalClients(setup, tmp_path / "embedded"))
    embedded = setup.agent.state_dict()
    assert flower.keys() == embedded.keys()
    for name, value in embedded.items():
        assert torch.equal(flower[name], value), name
    initial = federated_setup(cfg).agent.state_dict()
    assert not all(torch.equal(initial[k], v) for k, v in embedded.items())  # it trained
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2 and '"fed/clients_ok": 2' in rows[1]
