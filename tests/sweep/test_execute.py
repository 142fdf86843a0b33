"""What one run does: parameter counts of its checkpoints."""

from __future__ import annotations

from pathlib import Path


def test_parameter_count_counts_shared_tensors_once(tmp_path: Path) -> None:
    import torch

    from toolkit.engine.checkpoint import save_checkpoint
    from toolkit.sweep import count_checkpoint_parameters

    conv = torch.zeros(4, 2, 3, 3, 3)
    state = {"conv": conv, "all_modules.0": conv, "bias": torch.zeros(4)}
    save_checkpoint(tmp_path / "ft.pt", {"model": state})
    assert count_checkpoint_parameters(tmp_path / "ft.pt") == 4 * 2 * 27 + 4
    save_checkpoint(
        tmp_path / "pt.pt", {"network_weights": state, "extra_weights": {"token": torch.zeros(8)}}
    )
    assert count_checkpoint_parameters(tmp_path / "pt.pt") == 4 * 2 * 27 + 4 + 8
