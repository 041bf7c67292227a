"""`onlooker eval`'s suite: held out by construction, deterministic, scored by rules that can say no."""

from __future__ import annotations

import pytest

from bench import eval_public, eval_suite
from bench.common import BenchError
from perception.synthetic import word_split

ROOT_PUBLIC = "tests/data/public"


def test_the_suite_is_held_out_and_a_fixed_function_of_its_seeds():
    for seed in eval_suite.SUITES["full"]:
        sc = eval_suite.scene(seed)
        assert all(word_split(s.word) == "eval" for s in sc.signs)
        assert eval_suite.asks(sc, seed) == eval_suite.asks(eval_suite.scene(seed), seed)
    assert not set(eval_suite.EVAL_SEEDS) & set(eval_suite.DEV_SEEDS)
    assert not set(eval_suite.EVAL_SEEDS) & {3, *range(11, 16), *range(21, 25), *range(31, 36), *range(41, 48),
                                             *range(61, 66)}                       # the tests' and benchmarks' seeds
    phrasings = " ".join(eval_suite.PHRASINGS.values()).lower()
    assert "sign" not in phrasings                       # the demo's and the tests' noun, never the eval's


def test_every_question_type_is_asked_and_its_answer_is_what_the_scene_showed():
    asks = [(seed, a) for seed in eval_suite.SUITES["full"] for a in eval_suite.asks(eval_suite.scene(seed), seed)]
    assert {a.kind for _, a in asks} == {"now", "past_time", "past_content", "when", "before_after", "count"}
    for seed, a in asks:
        sc = eval_suite.scene(seed)
        if a.kind == "now":
            assert sc.sign_at(a.t).word == a.want
        if a.kind == "past_time":
            m, s = a.question.rsplit(" at ", 1)[1].rstrip("?").split(":")
            assert sc.sign_at(int(m) * 60 + int(s)).word == a.want and a.t - (int(m) * 60 + int(s)) >= 25


def test_the_scoring_rules_say_no_to_wrong_answers():
    when = eval_suite.Ask(59, "when", "At what time was X written on the board?", "10.5-22")
    assert eval_suite.correct(when, "At 0:11 the board showed X.") and not eval_suite.correct(when, "At 0:25.")
    yes = eval_suite.Ask(58, "past_content", "Was the word X ever written on the board?", "yes", subject="X")
    no = eval_suite.Ask(58, "past_content", "Was the word Y ever written on the board?", "no", subject="Y")
    assert eval_suite.correct(yes, "The word X was written at 0:11.") and eval_suite.correct(yes, "Yes.")
    assert not eval_suite.correct(yes, 'The word "X" was never written on the board.')
    assert eval_suite.correct(no, 'The word "Y" was never written on the board.')
    assert not eval_suite.correct(yes, "I'm sorry.") and not eval_suite.correct(no, "I'm sorry.")   # no answer
    count = eval_suite.Ask(60, "count", "How many", "7")
    assert eval_suite.correct(count, "Seven words.") and not eval_suite.correct(count, "The board has shown 10 words.")
    word = eval_suite.Ask(5, "now", "Which word", "ROUTE", ("DONE", "ROUTE"))
    assert eval_suite.correct(word, 'It says "route".') and not eval_suite.correct(word, "It says ROUTES.")
    assert not eval_suite.correct(word, 'At 0:11 "DONE", at 0:23 "ROUTE".')          # a list is no answer
    s = eval_suite.alert_score(((10.0, 20.0), (40.0, 45.0)), [11.0, 30.0])
    assert (s["events"], s["hits"], s["false"]) == (2, 1, 1)
    p, r, f, d = eval_suite.prf([s])
    assert (p, r, d) == (0.5, 0.5, 1.0) and f == pytest.approx(0.5)
    lo, hi = eval_suite.wilson(8, 10)
    assert 0.49 < lo < 0.5 and 0.94 < hi < 0.95


def test_public_benchmark_files_are_read_in_their_published_formats():
    sb = eval_public.load(f"streamingbench:{ROOT_PUBLIC}/streamingbench.json")
    assert [(c.video, c.t, c.answer, c.options[1]) for c in sb] == [
        ("bottle-detection.mp4", 12.0, "B", "A bottle."), ("bottle-detection.mp4", 30.0, "C", "Blue.")]
    ovo = eval_public.load(f"ovo:{ROOT_PUBLIC}/ovo.json")
    assert [(c.t, c.answer, c.task) for c in ovo] == [(25.0, "A", "backward EPM"), (10.0, "C", "realtime OCR")]
    assert "B. A phone" in ovo[0].prompt()
    assert eval_public.chosen_letter("(B) A bottle.", 4) == "B" and eval_public.chosen_letter("None.", 4) is None
    for bad in ("nope:x.json", f"ovo:{ROOT_PUBLIC}/missing.json", f"ovo:{ROOT_PUBLIC}/streamingbench.json"):
        with pytest.raises(BenchError):
            eval_public.load(bad)


def test_the_spoken_questions_are_held_out_distinct_and_scored_against_the_board():
    from bench import eval_speech, speech

    said = eval_speech.utterances(95.0)
    assert len(said) == 36 and len({text for _, text, _ in said}) == 36          # 30+ distinct sentences
    assert {voice for voice, _, _ in said} == set(eval_speech.VOICES)
    assert all(word_split(w) == "eval" for w in eval_speech.SPOKEN_WORDS)
    assert not {text for _, text, _ in said} & set(speech.QUESTIONS)             # not bench speech's sentences
    board = dict((w, t) for t, w in eval_speech.board())
    for _, text, ask in said:
        if ask.kind == "past_content":
            w = next(x.upper() for x in text.rstrip("?").split() if x.upper() in eval_speech.SPOKEN_WORDS)
            assert (w in board) == (ask.want == "yes")
    assert eval_speech.wer("Onlooker, was banana ever written?", "On looker was banana ever written") == (2, 5)
    assert eval_speech.wer("a b c", "a b c") == (0, 3)


def test_a_spoken_word_answer_that_lists_other_board_words_is_wrong():
    from bench import eval_speech
    said = eval_speech.utterances(eval_speech.asked_at())
    _, text, ask = next(u for u in said if u[2].kind == "now")
    other = next(w for _, w in eval_speech.board() if w != ask.want)
    row = {"said": text, "answered": True, "answer": f'The board says "{ask.want}".'}
    assert eval_speech.rescore_speech([dict(row)])[0]["right"]
    listed = dict(row, answer=f"The board showed {other} and {ask.want}.")
    assert not eval_speech.rescore_speech([listed])[0]["right"]
    with pytest.raises(ValueError):
        eval_speech.rescore_speech([dict(row, said="Onlooker, something never asked?")])
