"""Configs: typed dataclasses loaded from YAML plus ``key=value`` overrides."""

from orl.config.loader import ConfigError, describe, from_dict, load_config, parse_overrides, to_dict

__all__ = ["ConfigError", "describe", "from_dict", "load_config", "parse_overrides", "to_dict"]
