"""Integrations with the Hugging Face stack (needs peft; transformers' Trainer for the callback).

    import sparseft.integrations      # registers sparse fine-tuning as the peft method "sparseft"

  peft_config.py   SparseFTConfig (a peft config: budget, mask method, peft targets)
  peft_layer.py    SparseFTLayer (sparseft's O(k) SparseDelta engine in peft's layer API)
  peft_method.py   SparseFTModel (peft tuner) + registration + select_sparseft_masks_
  trainer.py       SparseFTCallback: data-driven masks and drop/regrow inside transformers.Trainer / TRL
  convert.py       diff folder <-> peft adapter folder, both directions

`import sparseft` does not import this package (nor peft); `sparseft.SparseFTConfig` does, lazily.
"""

from sparseft.integrations.peft_config import SparseFTConfig
from sparseft.integrations.peft_layer import SparseFTLayer
from sparseft.integrations.peft_method import (SparseFTModel, select_sparseft_masks_,
                                               sparseft_layers)
from sparseft.integrations.trainer import SparseFTCallback

__all__ = ["SparseFTConfig", "SparseFTLayer", "SparseFTModel", "SparseFTCallback", "select_sparseft_masks_",
           "sparseft_layers"]
