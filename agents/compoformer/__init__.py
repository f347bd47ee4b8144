"""CompoFormer: continual learning by attention over earlier policies (Grow and Prune)."""

from orl.agents.compoformer.method import CompoFormer, stage_descriptions
from orl.agents.compoformer.text import TextEncoderMissing, embed_descriptions

__all__ = ["CompoFormer", "TextEncoderMissing", "embed_descriptions", "stage_descriptions"]
