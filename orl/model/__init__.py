"""The Decision Transformer model and the ``OrlLinear`` layer its blocks are made of."""

from orl.model.dt import DecisionTransformer, DTConfig, ModelConfig, attention_mask
from orl.model.layers import OrlLinear, Route
from orl.model.transformer import Transformer

__all__ = ["DTConfig", "DecisionTransformer", "ModelConfig", "OrlLinear", "Route", "Transformer",
           "attention_mask"]
