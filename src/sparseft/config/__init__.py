"""Configuration: dataclass configs with JSON round trip, target selection, YAML recipes."""

from sparseft.config.base import BaseConfig, config_from_dict, load_config, save_config
from sparseft.config.targets import TargetSpec, select_modules

__all__ = ["BaseConfig", "config_from_dict", "load_config", "save_config", "TargetSpec", "select_modules"]
