"""memory.kv_cache's eviction of a window's front: all layers at once, as the layer-by-layer slicing did."""

from __future__ import annotations

import torch

import onlooker_kernels as kernels
from memory import kv_cache


def _cache(layers=3, heads=2, tokens=20, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    keys = [torch.randn(1, heads, tokens, dim, generator=g) for _ in range(layers)]
    values = [torch.randn(1, heads, tokens, dim, generator=g) for _ in range(layers)]
    return kv_cache.cache_from_layers(keys, values), keys, values


def test_take_front_removes_the_range_and_rotates_what_follows():
    cache, keys, values = _cache()
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8))

    def rotate(k, delta):
        return kernels.rope_shift(k, delta, inv_freq)
    got_k, got_v = kv_cache.take_front(cache, 4, 6, rotate, -9)
    assert got_k.shape == (3, 2, 6, 8) and got_k.is_contiguous()
    torch.testing.assert_close(got_k, torch.stack([k[0, :, 4:10] for k in keys]))
    torch.testing.assert_close(got_v, torch.stack([v[0, :, 4:10] for v in values]))
    assert kv_cache.layer_lengths(cache) == [14, 14, 14]
    for layer, k, v in zip(cache.layers, keys, values, strict=True):
        want = torch.cat([k[:, :, :4], kernels.rope_shift(k[:, :, 10:], -9, inv_freq)], dim=2)
        torch.testing.assert_close(layer.keys, want)
        torch.testing.assert_close(layer.values, torch.cat([v[:, :, :4], v[:, :, 10:]], dim=2))
    # each layer is its own: appending to one does not touch the others
    cache.update(torch.zeros(1, 2, 1, 8), torch.zeros(1, 2, 1, 8), 0)
    assert kv_cache.layer_lengths(cache) == [15, 14, 14]


def test_take_front_without_rotation_and_of_uneven_layers():
    cache, keys, values = _cache()
    kv_cache.take_front(cache, 0, 5, None, 0)
    for layer, k in zip(cache.layers, keys, strict=True):
        torch.testing.assert_close(layer.keys, k[:, :, 5:])
    cache.update(torch.ones(1, 2, 2, 8), torch.ones(1, 2, 2, 8), 1)        # layers of different lengths
    got_k, _ = kv_cache.take_front(cache, 1, 3, None, 0)
    assert got_k.shape == (3, 2, 3, 8)
    assert kv_cache.layer_lengths(cache) == [12, 14, 12]
    torch.testing.assert_close(cache.layers[1].keys[:, :, -2:], torch.ones(1, 2, 2, 8))
