"""compress.calibration: the shared calibration rule of the prune and quantize stages."""

from __future__ import annotations

import pytest
import torch

from sparseft.compress.calibration import calibration_batches, check_calibration


def test_first_n_features_padded_in_batches():
    feats = [{"input_ids": list(range(1, 2 + i)), "attention_mask": [1] * (1 + i)} for i in range(5)]
    batches = calibration_batches(feats, pad_id=0, n=3, batch_size=2)
    assert [b["input_ids"].shape[0] for b in batches] == [2, 1]
    assert torch.equal(batches[0]["input_ids"], torch.tensor([[1, 0], [1, 2]]))
    with pytest.raises(ValueError, match="calibration needs training examples"):
        calibration_batches([], pad_id=0, n=3, batch_size=2)


@pytest.mark.parametrize("samples, batch", [(-1, 8), (4, 0)])
def test_bad_calibration_settings_are_refused(samples, batch):
    with pytest.raises(ValueError, match="calib_samples must be >= 0 and calib_batch_size >= 1"):
        check_calibration(samples, batch)
    check_calibration(0, 1)
