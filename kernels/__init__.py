"""Triton/CUDA kernels for the streaming hot paths, one dispatch function per op, each with a torch
reference beside it.

Empty so far on purpose: the ops (token drop, retrieval scoring, gather + RoPE shift, KV int8) land
with the GPU work, after `onlooker bench ingest` has been profiled. The torch reference of the RoPE
shift already lives in `reasoning.backends.base.rope_shift`."""
