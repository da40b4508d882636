"""Low-rank factorization of trained Linear layers: W [out, in] ~ up [out, r] @ down [r, in].

    from sparseft.compress.factorize import factorize_, WhitenedSVDConfig
    factorize_(model, WhitenedSVDConfig(ratio=0.2), batches=calibration_batches)

Unlike a weight mask, a factorized layer is smaller *and* faster on any runtime: both factors
are small dense matrices (see docs/factorization.md).

  config.py     FactorizeConfig: rank selection (ratio with global allocation / energy / ranks), targets
  methods.py    SVDConfig (svd), ASVDConfig (asvd), WhitenedSVDConfig (whiten_svd), FisherSVDConfig
                (fisher_svd): each a config + the function giving every layer's weighting
  ranks.py      energy / uniform / global rank allocation, the no-gain rule
  calibrate.py  calibration statistics (X^T X, mean |x|) and row Fisher from task gradients
  layer.py      FactorizedLinear (two nn.Linear children), merge_factorized_
  api.py        factorize_ = plan_factorization + apply_plan_
  artifact.py   what a saved folder records (config.json) and how each loading path treats it
  stage.py      recipe stages `factorize` and `factorize_finetune`
"""

from sparseft.compress.factorize.api import apply_plan_, factorize_, plan_factorization
from sparseft.compress.factorize.config import FactorizeConfig
from sparseft.compress.factorize.layer import FactorizedLinear, factorized_summary, merge_factorized_
from sparseft.compress.factorize.methods import ASVDConfig, FisherSVDConfig, SVDConfig, WhitenedSVDConfig

__all__ = ["factorize_", "plan_factorization", "apply_plan_", "FactorizeConfig", "SVDConfig", "ASVDConfig",
           "WhitenedSVDConfig", "FisherSVDConfig", "FactorizedLinear", "merge_factorized_", "factorized_summary"]
