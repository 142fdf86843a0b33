"""Sliding-window inference of one network on one volume."""

from __future__ import annotations

import torch
from torch import nn

from toolkit.inference import predict_probabilities


def test_mirror_tta_of_a_pointwise_network_changes_nothing() -> None:
    torch.manual_seed(0)
    net = nn.Conv3d(1, 3, kernel_size=1).eval()
    x = torch.randn(1, 1, 20, 18, 17)
    kwargs = {"roi_size": (16, 16, 16), "overlap": 0.5, "sw_batch_size": 2}
    plain = predict_probabilities(net, x, mirror_tta=False, **kwargs)
    tta = predict_probabilities(net, x, mirror_tta=True, **kwargs)
    assert plain.shape == (1, 3, 20, 18, 17)
    torch.testing.assert_close(plain.sum(1), torch.ones(1, 20, 18, 17))
    torch.testing.assert_close(tta, plain, rtol=1e-5, atol=1e-6)
