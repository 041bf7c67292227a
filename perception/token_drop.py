"""Differential token drop (TimeChat-Online), the part `perception.visual` and the small VLM's training share:
which merged tokens of a group differ enough from the last kept token of the same patch to be kept, and which
groups are keyframes (kept whole)."""

from __future__ import annotations

import torch

import onlooker_kernels as kernels


def keyframe_bucket(t: float, keyframe_seconds: float) -> int:
    """The span of stream a group at `t` falls in; a group opening a new span is a keyframe (-1: none)."""
    return int(t // keyframe_seconds) if keyframe_seconds > 0 else -1


def drop_mask(embeds: torch.Tensor, ref: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep mask of the tokens of `embeds` whose cosine similarity to the same patch of `ref` is below `threshold`,
    and the new reference: `ref` with those tokens taken from `embeds` (the last kept token of each patch). On the
    tensors' device, without waiting for it."""
    mask = kernels.token_drop(embeds, ref, threshold)
    return mask, torch.where(mask.unsqueeze(1), embeds, ref)


def drop_against(embeds: torch.Tensor, ref: torch.Tensor, threshold: float) -> torch.Tensor:
    """`drop_mask` as indices, with `ref` updated in place."""
    mask, new_ref = drop_mask(embeds, ref, threshold)
    ref.copy_(new_ref)
    return torch.nonzero(mask).squeeze(1)
