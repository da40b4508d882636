"""`snr` mask: |mean g| / (rms g + eps) over the selection batches, so an entry whose gradient keeps
its sign outranks one whose gradient is larger but flips; bad options are one-line errors."""

from __future__ import annotations

import pytest
import torch

from sparseft.masks.select import mask_config, select_masks


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 1, bias=False)
        with torch.no_grad():
            self.lin.weight.zero_()

    def forward(self, x, y):
        return ((self.lin(x).squeeze(-1) - y) ** 2).mean()


def _loss(model, batch):
    return model(batch["x"], batch["y"])


def test_consistent_small_gradients_outrank_large_flipping_ones():
    # d loss / d w_j at w = 0 is -2 * x_j * y: entry 0 small and always the same sign, entry 1 large
    # and flipping, entry 2 zero (y x_2 = 0)
    batches = [{"x": torch.tensor([[0.1, 5.0 * s, 0.0]]), "y": torch.tensor([1.0])} for s in (1, -1, 1, -1)]
    model = Toy()
    masks = select_masks(model, mask_config("snr", count=1, n_batches=4), batches=batches, loss_fn=_loss)
    assert masks["lin.weight"].tolist() == [[True, False, False]]
    fisher = select_masks(model, mask_config("fisher", count=1, n_batches=4), batches=batches, loss_fn=_loss)
    assert fisher["lin.weight"].tolist() == [[False, True, False]]    # fisher ranks by size instead

    from sparseft.masks.snr import snr_scores

    cfg = mask_config("snr", count=1, n_batches=4)
    scores = snr_scores(model, {"lin.weight": model.lin.weight}, cfg, batches=batches, loss_fn=_loss)["lin.weight"]
    assert scores[0, 0] == pytest.approx(1.0, rel=1e-5) and scores[0, 1] == pytest.approx(0.0, abs=1e-6)
    assert scores[0, 2] == 0.0 and model.lin.weight.requires_grad and model.training


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="n_batches must be >= 2"):
        mask_config("snr", n_batches=1)
    with pytest.raises(ValueError, match="eps must be > 0"):
        mask_config("snr", eps=0.0)
