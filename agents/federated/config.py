"""The ``federated:`` section of an experiment config."""

from __future__ import annotations

from dataclasses import dataclass, field

STRATEGIES = ("none", "fedavg", "fedprox", "fedskip")
PARTITIONS = ("tasks", "dirichlet")


@dataclass
class FederatedConfig:
    """Federated training of the configured agent over simulated (or Flower) clients.

    ``strategy: none`` (the default) is ordinary centralised training. Each round every selected
    client trains ``local_steps`` Trainer steps from the weights it was sent (a fresh optimizer
    per round, so ``train.warmup_steps`` must be below ``local_steps``); ``train.steps`` is not
    used. ``fedskip`` keeps ``slots`` models (0: one per client) that a fresh random permutation
    scatters over the clients every round and aggregates every ``skip_period`` rounds.
    """

    strategy: str = "none"
    rounds: int = 20
    local_steps: int = 50  # Trainer steps per client per round
    clients: int = 10
    partition: str = "tasks"  # "tasks": whole tasks per client; "dirichlet": Dirichlet(beta) split
    client_tasks: list[list[str]] = field(default_factory=list)  # tasks: explicit tasks per
    #   client; empty: task i goes to client i % clients
    dirichlet_beta: float = 0.5  # dirichlet: smaller = more skewed task mix per client
    mu: float = 0.01  # fedprox: weight of the proximal term mu/2 ||w - w_global||^2
    skip_period: int = 3  # fedskip: s, rounds between aggregations (1 = FedAvg)
    slots: int = 0  # fedskip: K models (0 = one per client; at most clients)
    eval_every: int = 1  # evaluate the global model every this many rounds (0 = only at the end)
    client_timeout_s: float = 0.0  # > 0: an update slower than this is dropped (0 = no limit)

    def __post_init__(self) -> None:
        rules = [
            ("strategy", self.strategy in STRATEGIES, f"one of {', '.join(STRATEGIES)}"),
            ("rounds", self.rounds > 0, "> 0"),
            ("local_steps", self.local_steps > 0, "> 0"),
            ("clients", self.clients > 0, "> 0"),
            ("partition", self.partition in PARTITIONS, f"one of {', '.join(PARTITIONS)}"),
            ("dirichlet_beta", self.dirichlet_beta > 0, "> 0"),
            ("mu", self.mu >= 0, ">= 0"),
            ("skip_period", self.skip_period > 0, "> 0"),
            ("slots", 0 <= self.slots <= self.clients, f"in [0, clients={self.clients}]"),
            ("eval_every", self.eval_every >= 0, ">= 0 (0 = only at the end)"),
            ("client_timeout_s", self.client_timeout_s >= 0, ">= 0 (0 = no limit)"),
        ]
        for name, ok, expected in rules:
            if not ok:
                raise ValueError(f"federated.{name} must be {expected}, got {getattr(self, name)!r}")
        if self.client_tasks and len(self.client_tasks) != self.clients:
            raise ValueError(f"federated.client_tasks lists {len(self.client_tasks)} clients but "
                             f"federated.clients is {self.clients}: give one task list per client")
        if self.strategy == "fedskip" and self.rounds % self.skip_period:
            raise ValueError(f"federated.rounds ({self.rounds}) must be a multiple of "
                             f"federated.skip_period ({self.skip_period}) so training ends on an "
                             "aggregation")

    @property
    def active(self) -> bool:
        return self.strategy != "none"
