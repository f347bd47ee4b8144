"""Federated training of DT agents: FedAvg, FedProx and FedSkip.

One server-side implementation (``strategy``) and one client-side local training (``client``,
the toolkit's Trainer on the client's data) serve two runtimes: the embedded in-process
simulation (``runner``, what ``train-agent`` runs when ``federated.strategy`` is set) and Flower
(``flower``: a ServerApp and a ClientApp for a real SuperLink and SuperNodes).
"""

from orl.agents.federated.config import FederatedConfig
from orl.agents.federated.strategy import (
    Assignment,
    FedAvg,
    FedProx,
    FedSkip,
    RoundReport,
    Strategy,
    Update,
    make_strategy,
)

__all__ = ["Assignment", "FedAvg", "FedProx", "FedSkip", "FederatedConfig", "RoundReport",
           "Strategy", "Update", "make_strategy"]
