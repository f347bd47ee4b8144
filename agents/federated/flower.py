"""Flower runtime: a ServerApp running the orl federated strategies and a ClientApp wrapping
local DT training, for a real SuperLink and SuperNodes (one SuperNode per client).

The server side is ``FederatedRun`` (the same strategy, aggregation, routing, logging and
checkpoints as the embedded simulation) with ``FlowerClients`` as its runtime: each round it
sends every selected node a message carrying the weights of its own assignment (with FedSkip:
the slot routed to that node's client) and turns the replies back into updates. The ClientApp
calls the same ``local_update`` as the simulation, so with the same config both runtimes give
the same weights.

Run config (``flwr run ... --run-config``): ``orl-config`` (path of the experiment YAML,
readable by the ServerApp and every ClientApp), ``overrides`` (space-separated key=value) and
``run-dir`` (where the ServerApp keeps the run; an existing one is resumed). Node config
(``flower-supernode --node-config``): ``partition-id``, the client index this node plays.
Every machine needs orl and the datasets named by the config.
"""

from __future__ import annotations

import logging
import shlex
import tempfile
import time
from functools import cache
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from orl.agents.federated.client import local_train_config, local_update
from orl.agents.federated.runner import FederatedSetup, federated_setup, run_federated
from orl.agents.federated.strategy import Assignment, Update

log = logging.getLogger(__name__)

server_app = ServerApp()
client_app = ClientApp()


def experiment_config(run_config: dict[str, Any]) -> Any:
    """The orl ``ExperimentConfig`` named by a Flower run config."""
    from orl.config.experiment import ExperimentConfig
    from orl.config.loader import load_config

    path = str(run_config.get("orl-config", ""))
    if not path:
        raise ValueError("set the Flower run config 'orl-config' to the orl experiment YAML")
    cfg = load_config(ExperimentConfig, Path(path), shlex.split(str(run_config.get("overrides", ""))))
    if not cfg.federated.active:
        raise ValueError(f"{path}: set federated.strategy (fedavg, fedprox or fedskip)")
    return cfg


class FlowerClients:
    """``FederatedRun``'s runtime over a Flower ``Grid``: one train message per assignment,
    addressed to the node that holds the assignment's client.

    Before every round the client-to-node map is refreshed: a node that joined since (a
    restarted SuperNode comes back under a new node id) is asked which partition it holds and
    takes it over; a node the SuperLink no longer lists is dropped, and its client is reported
    failed until a node holds its partition again.
    """

    def __init__(self, grid: Grid, num_clients: int, timeout_s: float = 0.0,
                 wait_s: float = 120.0) -> None:
        self.grid = grid
        self.timeout = timeout_s or None
        self.wait_s = wait_s
        self.asked: set[int] = set()  # nodes that said which partition they hold
        self.node_of = self._discover(num_clients)

    def _discover(self, num_clients: int) -> dict[int, int]:
        """client index -> node id, asking every connected node which partition it holds."""
        deadline = time.monotonic() + self.wait_s
        while len(nodes := list(self.grid.get_node_ids())) < num_clients:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(nodes)} of the {num_clients} SuperNodes connected within "
                                   f"{self.wait_s:.0f} s: start one SuperNode per client")
            time.sleep(0.5)
        node_of: dict[int, int] = {}
        for reply in self._query(nodes):
            if reply.has_error():
                raise RuntimeError(f"node {reply.metadata.src_node_id} failed to describe itself: "
                                   f"{reply.error.reason}")
            client = int(reply.content["client"]["partition-id"])
            if client in node_of:
                raise ValueError(f"nodes {node_of[client]} and {reply.metadata.src_node_id} both "
                                 f"hold partition-id={client}: give every SuperNode its own")
            node_of[client] = reply.metadata.src_node_id
        missing = sorted(set(range(num_clients)) - node_of.keys())
        if missing:
            raise RuntimeError(f"no SuperNode holds partition-id {missing} (found {sorted(node_of)})")
        return node_of

    def _query(self, nodes: list[int]) -> list[Message]:
        """The replies of ``nodes`` to "which partition do you hold?" (within ``wait_s``)."""
        queries = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY)
                   for node in nodes]
        replies = list(self.grid.send_and_receive(queries, timeout=self.wait_s))
        self.asked |= {r.metadata.src_node_id for r in replies if not r.has_error()}
        return replies

    def _refresh(self) -> None:
        """Drop nodes that left; map the partitions of nodes that joined."""
        nodes = set(self.grid.get_node_ids())
        for client in [c for c, node in self.node_of.items() if node not in nodes]:
            log.warning("client %d: its node %d left", client, self.node_of.pop(client))
        joined = sorted(nodes - self.asked)
        for reply in self._query(joined) if joined else []:
            node = reply.metadata.src_node_id
            if reply.has_error():
                log.warning("node %d failed to describe itself: %s", node, reply.error.reason)
                continue
            client = int(reply.content["client"]["partition-id"])
            log.warning("client %d: now on node %d (was %s)", client, node, self.node_of.get(client))
            self.node_of[client] = node

    def __call__(self, assignments: list[Assignment]) -> dict[int, Update | str]:
        self._refresh()
        results: dict[int, Update | str] = {
            a.slot: f"no SuperNode holds partition-id {a.client}"
            for a in assignments if a.client not in self.node_of}
        sent = [a for a in assignments if a.client in self.node_of]
        slot_of = {self.node_of[a.client]: a.slot for a in sent}
        messages = [Message(RecordDict({
            "arrays": ArrayRecord(a.weights),
            "config": ConfigRecord({"round": a.round, "client": a.client,
                                    "proximal-mu": a.proximal_mu})}),
            dst_node_id=self.node_of[a.client], message_type=MessageType.TRAIN)
            for a in sent]
        for reply in self.grid.send_and_receive(messages, timeout=self.timeout):
            slot = slot_of.get(reply.metadata.src_node_id)
            if slot is None:
                continue
            if reply.has_error():
                results[slot] = f"failed on its node: {reply.error.reason}"
                continue
            metrics = reply.content["metrics"]
            results[slot] = Update(dict(reply.content["arrays"].to_torch_state_dict()),
                                   int(metrics["num-examples"]), {"loss": float(metrics["loss"])})
        return results


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """Run the configured federated training over the connected SuperNodes."""
    cfg = experiment_config(context.run_config)
    run_dir = Path(str(context.run_config.get("run-dir", "runs/flower")))
    resume = (run_dir / "config.yaml").is_file()
    run_federated(cfg, run_dir, resume, lambda setup: FlowerClients(
        grid, len(setup.clients), cfg.federated.client_timeout_s))


@cache
def _client_setup(config_path: str, overrides: str) -> FederatedSetup:
    """Data and agent of a ClientApp process (built once per process and run config)."""
    return federated_setup(experiment_config({"orl-config": config_path, "overrides": overrides}))


def _my_setup(context: Context) -> tuple[FederatedSetup, int]:
    setup = _client_setup(str(context.run_config.get("orl-config", "")),
                          str(context.run_config.get("overrides", "")))
    if "partition-id" not in context.node_config:
        raise ValueError("start the SuperNode with --node-config 'partition-id=<client index>'")
    client = int(context.node_config["partition-id"])
    if not 0 <= client < len(setup.clients):
        raise ValueError(f"partition-id={client} but the config has {len(setup.clients)} clients")
    return setup, client


@client_app.query()
def client_query(msg: Message, context: Context) -> Message:
    """Which client this node is, and how much data it holds."""
    setup, client = _my_setup(context)
    return Message(RecordDict({"client": MetricRecord({
        "partition-id": client, "num-examples": setup.clients[client].num_samples})}), reply_to=msg)


@client_app.train()
def client_train(msg: Message, context: Context) -> Message:
    """Train the received weights locally with the toolkit's Trainer; send them back."""
    setup, client = _my_setup(context)
    config = msg.content["config"]
    if int(config["client"]) != client:
        raise ValueError(f"this node is client {client}, the message is for client {config['client']}")
    assignment = Assignment(round=int(config["round"]), slot=-1, client=client,
                            weights=dict(msg.content["arrays"].to_torch_state_dict()),
                            proximal_mu=float(config["proximal-mu"]))
    train = local_train_config(setup.cfg.train, setup.cfg.federated.local_steps)
    update = local_update(setup.agent, setup.clients[client], assignment, train, setup.cfg.run.seed,
                          Path(tempfile.gettempdir()))
    return Message(RecordDict({
        "arrays": ArrayRecord(update.weights),
        "metrics": MetricRecord({"num-examples": update.num_samples, "loss": update.metrics["loss"]}),
    }), reply_to=msg)
