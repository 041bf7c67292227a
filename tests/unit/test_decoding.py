"""The answer's loop guard: no repeated n-gram of tokens, and an answer cut by the length cap ends at a sentence."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from reasoning.answerer import AnswerJob, sentence_cut

EOS = 2
WORDS = {10: " to", 11: " ask", 12: " the", 13: " audience", 14: "."}


class LoopingModel:
    """Greedy decoding of this model loops: the best next token cycles 10 11 12 13 10 ..., the runner-up is the
    end of the answer (a model that would stop if it could not loop)."""

    eos_token_ids = {EOS}

    def _logits(self, last: int) -> torch.Tensor:
        logits = torch.zeros(32)
        logits[10 + (last - 9) % 4 if last >= 10 else 10] = 5.0
        logits[EOS] = 1.0
        return logits

    def prefill(self, chunk, cache, pos):
        return self._logits(0)

    def decode(self, token, cache, pos):
        return self._logits(token)

    def detokenize(self, ids):
        return "".join(WORDS.get(i, "?") for i in ids)


def job(no_repeat_ngram: int, max_new_tokens: int = 40) -> AnswerJob:
    view = SimpleNamespace(cache=None, next_pos=0)
    return AnswerJob(LoopingModel(), view, SimpleNamespace(pos_span=3), max_new_tokens,  # type: ignore[arg-type]
                     no_repeat_ngram=no_repeat_ngram)


def test_the_guard_stops_a_loop_that_greedy_decoding_would_follow_to_the_cap():
    loose = job(0)
    loose.run()
    assert len(loose.token_ids) == 40                     # without the guard: the loop runs to the cap
    guarded = job(4)
    text = guarded.run()
    ids = guarded.token_ids
    grams = [tuple(ids[i:i + 4]) for i in range(len(ids) - 3)]
    assert len(grams) == len(set(grams)) and len(ids) < 40      # no 4-gram twice, ended by the model's runner-up
    assert text == "to ask the audience to ask the"
    assert not guarded._capped


def test_an_answer_cut_by_the_cap_ends_at_its_last_sentence():
    assert sentence_cut("The sign says RAYS. It said RAYS at 0:05 and then the") == "The sign says RAYS."
    assert sentence_cut("The sign says RAYS.") == "The sign says RAYS."
    assert sentence_cut("Yes. The sign has been showing the same word since the start of the") == \
        "Yes. The sign has been showing the same word since the start of the"   # the only sentence end is too early
    capped = job(0, max_new_tokens=9)                     # " to ask the audience. ..." never: no "." token here
    assert capped.run() == "to ask the audience to ask the audience to" and capped._capped
