"""`SparseFTConfig`: sparse fine-tuning as a peft method (the config half; see peft_method.py).

    from peft import get_peft_model
    from sparseft.integrations import SparseFTConfig
    model = get_peft_model(base, SparseFTConfig(density=0.01, mask="magnitude", target_modules="all-linear"))

The fields mirror sparseft's own mask configs (`sparseft.masks.config.MaskConfig`): a budget
(`density`, `count` or `match_lora_rank`), an `allocation` ("global" or "per_tensor"), a mask
method (`mask`: random, magnitude, fisher, lottery, regrow) and its extra fields in
`mask_options` (e.g. {"n_batches": 8} for fisher). Targets use peft's own vocabulary
(`target_modules`, `exclude_modules`, `modules_to_save`), so the config behaves like every peft
config (`adapter_config.json`, TRL's `peft_config=`).

Fields filled when the adapter is created (and saved in `adapter_config.json`, so a loaded
adapter knows its base): `base_fingerprint` / `fingerprint_tensors` / `base_dtype` (the same
sha256 fingerprint a sparse diff's manifest holds), `shapes` (full shape of every targeted
weight, for converting an adapter folder to a diff without the base model) and `labels` (the
classification head's labels, so `sparseft.load(adapter)` can rebuild the head).

peft only registers methods whose name is a member of its `PeftType` enum; a third-party method
has no other way in, so `ensure_peft_type()` adds the member `SPARSEFT` (idempotent, the only
change made to peft's tables apart from `register_peft_method` itself).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Optional, Union

try:
    from peft import PeftConfig
    from peft.utils import PeftType
except ImportError as exc:  # pragma: no cover - exercised only without peft
    raise ImportError("sparseft's peft integration needs peft: pip install 'peft>=0.21'") from exc

PEFT_TYPE = "SPARSEFT"
# sparseft's mask default heads: never sparsified (peft's modules_to_save trains them densely)
DEFAULT_EXCLUDE = ["classifier", "score", "qa_outputs", "lm_head"]


def ensure_peft_type(name: str = PEFT_TYPE) -> PeftType:
    """Add `name` to peft's PeftType enum if absent (register_peft_method requires a member)."""
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    return member


@dataclass
class SparseFTConfig(PeftConfig):
    """Sparse fine-tuning (W = W0 + delta on k chosen entries) as a peft adapter.

    Args:
        density: fraction of the targeted weights' entries to tune, in (0, 1] (default 0.01
            when no budget is given).
        count: exact number of entries to tune.
        match_lora_rank: tune as many entries as LoRA of this rank would have parameters.
        mask: registered mask method: random, magnitude (data-free: chosen in get_peft_model),
            fisher, lottery (data-driven: chosen at the start of training by `SparseFTCallback`)
            or regrow, spiel_ag, spiel_ma (drop/regrow during training, also through the callback).
        mask_options: extra fields of the mask method, e.g. {"n_batches": 8} (fisher),
            {"steps": 50, "lr": 1e-4} (lottery), {"every": 100, "drop_fraction": 0.1} (regrow).
        allocation: "global" (one top-k over all targets) or "per_tensor".
        target_modules: peft targets (names, regex string or "all-linear", the default).
        exclude_modules: modules never targeted (default: task heads and lm_head).
        modules_to_save: modules trained and saved densely (peft adds the classifier head
            itself for task_type SEQ_CLS / TOKEN_CLS).

    Example:
        >>> from peft import get_peft_model                                           # doctest: +SKIP
        >>> model = get_peft_model(base, SparseFTConfig(density=0.01, mask="magnitude"))  # doctest: +SKIP
        >>> model.print_trainable_parameters()                                        # doctest: +SKIP
    """

    density: Optional[float] = field(default=None, metadata={"help": "fraction of targeted entries to tune"})
    count: Optional[int] = field(default=None, metadata={"help": "exact number of entries to tune"})
    match_lora_rank: Optional[int] = field(default=None, metadata={"help": "tune as many entries as LoRA rank r"})
    mask: str = field(default="magnitude",
                      metadata={"help": "random | magnitude | fisher | lottery | regrow | spiel_ag | spiel_ma | snr"})
    mask_options: dict = field(default_factory=dict, metadata={"help": "extra fields of the mask method"})
    allocation: str = field(default="global", metadata={"help": "global | per_tensor"})
    target_modules: Optional[Union[list[str], str]] = field(default=None, metadata={"help": "peft targets"})
    exclude_modules: Optional[Union[list[str], str]] = field(default=None, metadata={"help": "never targeted"})
    modules_to_save: Optional[list[str]] = field(default=None, metadata={"help": "trained densely"})
    base_fingerprint: Optional[str] = field(default=None, metadata={"help": "filled: sha256 of the base"})
    fingerprint_tensors: Optional[list[str]] = field(default=None, metadata={"help": "filled: hashed tensors"})
    base_dtype: Optional[str] = field(default=None, metadata={"help": "filled: dtype of the hashed base"})
    shapes: Optional[dict] = field(default=None, metadata={"help": "filled: shape of each targeted weight"})
    labels: Optional[list[str]] = field(default=None, metadata={"help": "filled: head labels (SEQ_CLS/TOKEN_CLS)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = ensure_peft_type()
        if self.target_modules is None:
            self.target_modules = "all-linear"
        elif isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if self.exclude_modules is None:
            self.exclude_modules = list(DEFAULT_EXCLUDE)
        named = {self.target_modules} if isinstance(self.target_modules, str) else set(self.target_modules)
        if named & {"embed_tokens", "lm_head"} and not self.inference_mode:
            warnings.warn("SparseFTConfig targets an embedding: peft's save_pretrained then also writes the whole "
                          "embedding matrix unless called with save_embedding_layers=False", stacklevel=3)
        self.mask_config()  # validate budget, allocation, mask name and options where they enter

    def mask_config(self):
        """The sparseft MaskConfig these fields describe (targets are peft's, not the mask's)."""
        from sparseft.masks.select import mask_config

        fields = {"density": self.density, "count": self.count, "match_lora_rank": self.match_lora_rank,
                  "allocation": self.allocation}
        try:
            return mask_config(self.mask, **{k: v for k, v in fields.items() if v is not None}, **self.mask_options)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"SparseFTConfig: {exc}") from None
