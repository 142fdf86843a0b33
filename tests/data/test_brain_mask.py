"""Brain extraction: recovers a phantom head's brain, leaves skull-stripped data (nearly) alone."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.config import DataConfig, load_config
from toolkit.data.brain_mask import (
    BRAIN_EXTRACTION_METHODS,
    extract_brain_mask,
    is_skull_stripped,
    mask_dice,
    otsu_threshold,
)
from toolkit.data.synthetic import synthesize_subject
from toolkit.errors import ConfigError

# Thresholds sit below values measured on these exact cases (3 mm, seed 3 head T1: Dice 0.870;
# seed 4 brain only: 0.918) with a margin; on 2 mm held-out heads the chosen method measured
# 0.89-0.95 mean per contrast (scripts/heads_transfer.py --masks).
HEAD_DICE_MIN = 0.80
STRIPPED_DICE_MIN = 0.85


def test_otsu_threshold_splits_two_classes() -> None:
    values = np.concatenate([np.full(100, 1.0), np.full(300, 5.0)])
    t = otsu_threshold(values)
    assert 1.0 <= t < 5.0


def test_extraction_recovers_the_brain_of_a_head() -> None:
    s = synthesize_subject(3, spacing_mm=3.0, fine_mm=3.0, head=True, contrast="T1")
    assert not is_skull_stripped(s.image)
    mask = extract_brain_mask(s.image, s.spacing_mm)
    assert mask_dice(mask, s.brain_mask) > HEAD_DICE_MIN
    # Without the step the "brain" would be the whole head: far below the threshold.
    assert mask_dice(s.image > otsu_threshold(s.image), s.brain_mask) < HEAD_DICE_MIN


def test_extraction_is_nearly_a_no_op_on_skull_stripped_data() -> None:
    s = synthesize_subject(4, spacing_mm=3.0, fine_mm=3.0)
    assert is_skull_stripped(s.image)
    assert mask_dice(extract_brain_mask(s.image, s.spacing_mm), s.brain_mask) > STRIPPED_DICE_MIN


def test_bad_method_and_constant_image_fail_clearly() -> None:
    with pytest.raises(ConfigError, match="data.brain_extraction: must be one of none, otsu"):
        extract_brain_mask(np.ones((4, 4, 4)), (1.0, 1.0, 1.0), "bet")
    with pytest.raises(ConfigError, match=r"data.brain_extraction: must be one of.*'bet'"):
        load_config("tiny", ["data.brain_extraction=bet"])
    assert load_config("tiny", ["data.brain_extraction=otsu"]).data.brain_extraction == "otsu"
    assert DataConfig().brain_extraction == "none"
    # Every method the module offers is accepted by the config (and nothing else, above).
    for method in BRAIN_EXTRACTION_METHODS:
        load_config("tiny", [f"data.brain_extraction={method}"])
