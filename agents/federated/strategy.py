"""Server-side federated strategies: which weights go to which client, and how updates merge.

One implementation serves both runtimes (the in-process simulation and Flower): a round is
``assignments = strategy.configure()``, the runtime delivers each assignment to its client and
collects ``Update`` s (or failure reasons) by slot, then ``strategy.aggregate(results)``.

- ``FedAvg``: every client trains from the global model; the global model becomes the average of
  the updates weighted by the clients' data (trajectories).
- ``FedProx``: FedAvg whose clients add ``mu/2 ||w - w_global||^2`` to their loss.
- ``FedSkip``: K model slots; every round a fresh random permutation sends slot k to client
  ``pi[k]``, which trains it from the slot's own weights; slot k counts the trajectories it has
  seen; every ``skip_period`` rounds the global model becomes the slots' average weighted by
  those counts, and every slot restarts from it. With ``skip_period=1`` (and one slot per
  client) it equals FedAvg bit for bit: both sum the terms in client order.

Updates with other names/shapes/dtypes or non-finite values, and clients that fail or time out,
are left out of the round (logged); the remaining weights are renormalised.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from orl.agents.federated.weights import Weights, check_update, payload_bytes, weighted_average

log = logging.getLogger(__name__)


@dataclass
class Assignment:
    """Weights to train on one client in one round; ``slot`` keys the result."""

    round: int  # 0-based
    slot: int
    client: int
    weights: Weights
    proximal_mu: float = 0.0


@dataclass
class Update:
    """A client's answer: its trained weights and how much data it trained on."""

    weights: Weights
    num_samples: int  # trajectories of the client's data
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class RoundReport:
    """What happened in a round (the runtimes log it)."""

    round: int
    aggregated: bool  # the global model changed
    accepted: list[int]  # clients whose updates were used
    failures: dict[int, str]  # client -> why it was left out
    bytes_sent: int  # weights sent to clients
    bytes_received: int  # weights received from clients (rejected ones included)
    shares: dict[int, float] = field(default_factory=dict)  # aggregation weight by slot
    local_loss: float | None = None  # mean final training loss of the accepted updates

    def metrics(self) -> dict[str, float]:
        out = {"fed/round": self.round + 1, "fed/aggregated": float(self.aggregated),
               "fed/clients_ok": len(self.accepted), "fed/clients_failed": len(self.failures),
               "fed/bytes_sent": self.bytes_sent, "fed/bytes_received": self.bytes_received}
        if self.local_loss is not None:
            out["fed/local_loss"] = self.local_loss
        return out


class Strategy:
    """Base: global weights, the round counter, update checks, byte counting."""

    name = "base"

    def __init__(self, initial: Weights, num_clients: int, seed: int = 0) -> None:
        self.global_weights = initial
        self.num_clients = num_clients
        self.round = 0  # rounds completed
        self.rng = np.random.default_rng(seed)
        self._assigned: list[Assignment] = []

    def configure(self) -> list[Assignment]:
        """The assignments of the next round."""
        self._assigned = self._assign()
        return list(self._assigned)

    def aggregate(self, results: dict[int, Update | str]) -> RoundReport:
        """Finish the round with ``results`` by slot: an ``Update``, or why the client failed
        (a missing slot counts as failed)."""
        if not self._assigned:
            raise RuntimeError("aggregate() called before configure()")
        accepted: dict[int, Update] = {}
        failures: dict[int, str] = {}
        received = 0
        for a in self._assigned:
            result = results.get(a.slot, "no reply (failed or timed out)")
            if isinstance(result, Update):
                received += payload_bytes(result.weights)
                problem = check_update(a.weights, result.weights)
                if problem is None and result.num_samples <= 0:
                    problem = f"num_samples must be > 0, got {result.num_samples}"
                if problem is None:
                    accepted[a.slot] = result
                    continue
                result = f"update rejected: {problem}"
            failures[a.client] = result
            log.warning("round %d: client %d left out: %s", self.round + 1, a.client, result)
        clients = {a.slot: a.client for a in self._assigned}
        shares = self._merge(accepted, clients)
        losses = [u.metrics["loss"] for u in accepted.values() if "loss" in u.metrics]
        report = RoundReport(
            round=self.round, aggregated=bool(shares),
            accepted=sorted(clients[slot] for slot in accepted), failures=failures,
            bytes_sent=sum(payload_bytes(a.weights) for a in self._assigned),
            bytes_received=received, shares=shares,
            local_loss=float(np.mean(losses)) if losses else None,
        )
        self.round += 1
        self._assigned = []
        return report

    def _assign(self) -> list[Assignment]:
        raise NotImplementedError

    def _merge(self, accepted: dict[int, Update], clients: dict[int, int]) -> dict[int, float]:
        """Use the accepted updates; return the aggregation share of each slot (empty: no
        aggregation this round)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- state
    def state_dict(self) -> tuple[dict[str, Any], Weights]:
        """(JSON-serialisable state, tensors) to resume from."""
        return ({"name": self.name, "round": self.round, "rng": self.rng.bit_generator.state},
                {f"global.{k}": v for k, v in self.global_weights.items()})

    def load_state_dict(self, state: dict[str, Any], tensors: Weights) -> None:
        if state["name"] != self.name:
            raise ValueError(f"the checkpoint holds a {state['name']} state, this run uses {self.name}")
        self.round = int(state["round"])
        self.rng.bit_generator.state = state["rng"]
        self.global_weights = _prefixed(tensors, "global.")


class FedAvg(Strategy):
    name = "fedavg"

    def __init__(self, initial: Weights, num_clients: int, seed: int = 0,
                 proximal_mu: float = 0.0) -> None:
        super().__init__(initial, num_clients, seed)
        self.proximal_mu = proximal_mu

    def _assign(self) -> list[Assignment]:
        return [Assignment(self.round, c, c, self.global_weights, self.proximal_mu)
                for c in range(self.num_clients)]

    def _merge(self, accepted: dict[int, Update], clients: dict[int, int]) -> dict[int, float]:
        if not accepted:
            return {}
        order = sorted(accepted, key=clients.__getitem__)
        self.global_weights = weighted_average([(accepted[s].weights, accepted[s].num_samples)
                                                for s in order])
        total = sum(u.num_samples for u in accepted.values())
        return {s: accepted[s].num_samples / total for s in order}


class FedProx(FedAvg):
    name = "fedprox"


class FedSkip(Strategy):
    name = "fedskip"

    def __init__(self, initial: Weights, num_clients: int, seed: int = 0, skip_period: int = 3,
                 slots: int = 0) -> None:
        super().__init__(initial, num_clients, seed)
        if skip_period <= 0:
            raise ValueError(f"skip_period must be > 0, got {skip_period}")
        if not 0 <= slots <= num_clients:
            raise ValueError(f"slots must be in [0, {num_clients}] (0 = one per client), got {slots}")
        self.skip_period = skip_period
        self.num_slots = slots or num_clients
        self._reset_slots()

    def _reset_slots(self) -> None:
        self.slots = [self.global_weights] * self.num_slots  # replaced, never changed in place
        self.counts = [0] * self.num_slots  # trajectories each slot trained on this period
        self.last_client: list[int | None] = [None] * self.num_slots

    def _assign(self) -> list[Assignment]:
        clients = self.rng.permutation(self.num_clients)[: self.num_slots]
        return [Assignment(self.round, k, int(c), self.slots[k]) for k, c in enumerate(clients)]

    def _merge(self, accepted: dict[int, Update], clients: dict[int, int]) -> dict[int, float]:
        for slot, update in accepted.items():
            self.slots[slot] = update.weights
            self.counts[slot] += update.num_samples
            self.last_client[slot] = clients[slot]
        if (self.round + 1) % self.skip_period:
            return {}
        trained = sorted((k for k in range(self.num_slots) if self.counts[k]),
                         key=self.last_client.__getitem__)
        if not trained:  # no slot saw data in the whole period
            self._reset_slots()
            return {}
        self.global_weights = weighted_average([(self.slots[k], self.counts[k]) for k in trained])
        total = sum(self.counts)
        shares = {k: self.counts[k] / total for k in trained}
        self._reset_slots()
        return shares

    def state_dict(self) -> tuple[dict[str, Any], Weights]:
        state, tensors = super().state_dict()
        state |= {"counts": self.counts, "last_client": self.last_client}
        for k, slot in enumerate(self.slots):
            tensors |= {f"slot.{k}.{name}": t for name, t in slot.items()}
        return state, tensors

    def load_state_dict(self, state: dict[str, Any], tensors: Weights) -> None:
        super().load_state_dict(state, tensors)
        if len(state["counts"]) != self.num_slots:
            raise ValueError(f"the checkpoint has {len(state['counts'])} slots, this run "
                             f"{self.num_slots}: resume with the same federated.slots/clients")
        self.counts = list(state["counts"])
        self.last_client = list(state["last_client"])
        self.slots = [_prefixed(tensors, f"slot.{k}.") for k in range(self.num_slots)]


def _prefixed(tensors: Weights, prefix: str) -> Weights:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def make_strategy(cfg: Any, initial: Weights, num_clients: int, seed: int) -> Strategy:
    """The strategy of a ``FederatedConfig``."""
    if cfg.strategy == "fedavg":
        return FedAvg(initial, num_clients, seed)
    if cfg.strategy == "fedprox":
        return FedProx(initial, num_clients, seed, proximal_mu=cfg.mu)
    if cfg.strategy == "fedskip":
        return FedSkip(initial, num_clients, seed, skip_period=cfg.skip_period, slots=cfg.slots)
    raise ValueError(f"no federated strategy {cfg.strategy!r}")
