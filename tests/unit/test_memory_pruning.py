"""Pruning at sealing: `prune_by = "novelty"` keeps the tokens unlike the rest of their segment."""

from __future__ import annotations

import pytest
import torch

from memory.config import MemoryConfig
from memory.segments import prune_by_value_norm


def test_novelty_keeps_the_tokens_unlike_their_segment_where_value_norm_does_not():
    plain = torch.full((2, 3, 10, 4), 3.0)                                   # a loud, uniform background
    plain[:, :, [4, 9]] = torch.tensor([1.0, -1.0, 1.0, -1.0])               # two quiet tokens unlike it
    assert prune_by_value_norm(plain, 0.2, "novelty").tolist() == [4, 9]
    assert prune_by_value_norm(plain, 0.2).tolist() != [4, 9]               # by norm they go first
    with pytest.raises(ValueError, match="prune_by"):
        MemoryConfig(prune_by="weird")
