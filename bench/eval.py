"""`onlooker eval`: answer quality and alerts on held-out scenes, beside baselines given the same help.

Through the real pipeline, with baselines that get the same perception and the same restated text, all in one
run.

    onlooker eval [--model lite|tiny-vl|PATH] [--suite quick|full] [--seeds 1001,1002] [--configs ...] [--out FILE]
                  [--check]

Every scene of the suite (bench.eval_suite: held-out words, seeds and phrasings) is rendered frame by frame and
run as `onlooker run --source synthetic:vl-eval-SEED --fast` once per configuration:

    onlooker   the defaults: sink + retrieved segments' KV + window, what memory recalled restated as text
    text       the same retrieval and the same restated text, no retrieved KV placed (the honest lite baseline)
    window     sink + window only (StreamingVLM-style), the newest observation restated as in every config
    full       every observation's KV kept on the device (no window, no retrieval)
    interval   for alerts: the question "Does the board show W right now?" asked every POLL_S seconds

The window is WINDOW[model] tokens, so the moments that past questions ask about have left it. Standing
instructions are also scored for a keyword / count rule on the perception records of the onlooker run alone.
`--check` exits 1 when a figure of the onlooker config is under its bar in CHECKS (the CI's quick suite).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time

from bench import eval_suite as suite
from bench.common import BenchError, print_table, write_rows

CONFIGS: dict[str, dict[str, dict]] = {
    "onlooker": {}, "text": {"memory": {"place_kv": False}}, "window": {"memory": {"retrieval": False}},
    "full": {"memory": {"retrieval": False, "window_tokens": 1_000_000}}, "interval": {},
    "onlooker-no-guard": {"reasoning": {"no_repeat_ngram": 0}}}     # the loop guard ablated (on request)
SUITE_CONFIGS = {"quick": ["onlooker", "text", "window"], "full": ["onlooker", "text", "window", "full", "interval"]}
WINDOW = {"lite": 96, "tiny-vl": 256}         # tokens; a VLM path model given by PATH gets 1024 (its default)
POLL_S = 5.0
KINDS = ["now", "past_time", "past_content", "when", "before_after", "count"]
# the quick suite's bars for the onlooker config (lite), set below what it scored at af48261 (now 6/6, past_time
# 4/4, when 2/2, watch F1 1.00): a broken retrieval, time reference or watcher fails them
CHECKS = {"now": 0.8, "past_time": 0.75, "when": 0.5, "watch_word_f1": 0.8}


def toml(tables: dict[str, dict]) -> str:
    def value(v: object) -> str:
        return str(v).lower() if isinstance(v, bool) else str(v)
    return "".join(f"[{t}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in kv.items()) for t, kv in tables.items())


def run_scene(model: str, seed: int, config: str, data_dir: str) -> list[dict]:
    """One scene through `onlooker run` in this process; its JSON records."""
    from assistant.cli import main as onlooker

    sc = suite.scene(seed)
    tables = {k: dict(v) for k, v in CONFIGS[config].items()}
    if model in WINDOW and "window_tokens" not in tables.get("memory", {}):
        tables.setdefault("memory", {})["window_tokens"] = WINDOW[model]
    path = os.path.join(data_dir, f"{config}.toml")
    with open(path, "w") as f:
        f.write(toml(tables))
    if config == "interval":
        watch = [w for w in suite.watches(sc) if w.kind == "word"]
        if not watch:
            return []
        poll = suite.PHRASINGS["poll_word"].format(w=watch[0].word)
        args = [f"--ask={t:g}:{poll}" for t in range(2, int(suite.DURATION), int(POLL_S))]
    else:
        args = [f"--ask={a.t:g}:{a.question}" for a in suite.asks(sc, seed)]
        args += [f"--watch={w.condition}" for w in suite.watches(sc)]
    os.environ["ONLOOKER_DATA_DIR"] = data_dir
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = onlooker(["run", "--source", f"synthetic:vl-eval-{seed}", "--model", model, "--headless", "--fast",
                       "--no-audio", "--config", path, *args])
    if rc != 0:
        raise RuntimeError(f"onlooker run exited {rc} on scene {seed} ({config})")
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.startswith("{")]


def score(seed: int, config: str, records: list[dict]) -> dict:
    sc = suite.scene(seed)
    row: dict = {"seed": seed, "config": config, "answers": [], "alerts": {}}
    if config == "interval":
        row["polls"] = [{"t": r["t"], "got": r["text"]} for r in records if r.get("type") == "answer"]
        return rescore(row)
    asked = suite.asks(sc, seed)
    for r in records:
        match = [a for a in asked if r.get("type") == "answer" and a.question == r["question"]]
        if match:
            a = min(match, key=lambda a: abs(a.t - r["t"]))      # the same question asked at several times
            row["answers"].append({"kind": a.kind, "t": r["t"], "want": a.want, "got": r["text"],
                                   "ttft_ms": r["ttft_ms"]})
    for w in suite.watches(sc):
        alerts = [r["t"] for r in records if r.get("type") == "alert" and r["condition"] == w.condition]
        row["alerts"][w.kind] = suite.alert_score(w.events, alerts)
        if config == "onlooker":                     # the perception-only rule, on the same observations
            row["alerts"][f"rule_{w.kind}"] = suite.alert_score(w.events, rule_alerts(w, records))
    row["summary"] = next((r for r in records if r.get("type") == "summary"), {})
    return rescore(row)                                  # "right" for each answer


def rescore(row: dict) -> dict:
    """Score a row's answers (and an interval row's polls) by the suite's rules; the answers themselves stay."""
    sc = suite.scene(row["seed"])
    if row["config"] == "interval":
        watch = [w for w in suite.watches(sc) if w.kind == "word"]
        if not watch:
            return row
        said_yes = [p["t"] for p in row.get("polls", []) if suite.yes_no(p["got"], watch[0].word) == "yes"]
        fired = [t for i, t in enumerate(said_yes) if i == 0 or t - said_yes[i - 1] > POLL_S + 0.1]
        row["alerts"]["word"] = suite.alert_score(watch[0].events, fired)
        return row
    asked = suite.asks(sc, row["seed"])
    for a in row["answers"]:
        ask = min((x for x in asked if x.kind == a["kind"]), key=lambda x: abs(x.t - a["t"]))
        a["right"] = suite.correct(ask, a["got"])
    return row


def rule_alerts(w: suite.Watch, records: list[dict]) -> list[float]:
    """The keyword / count rule: fire when an observation first shows the word (people > 0), re-arm when not."""
    word = w.word.lower() if w.kind == "word" else None
    out, on = [], False
    for r in (r for r in records if r.get("type") == "observation"):
        now = (word in (r.get("text") or "").lower()) if word else r.get("people", 0) > 0
        if now and not on:
            out.append(r["t"])
        on = now
    return out


def table(rows: list[dict], configs: list[str]) -> tuple[list[str], list[list[str]]]:
    qa = [c for c in configs if c != "interval"]
    configs = qa + [c for c in configs if c == "interval"]           # the columns' order
    pad = [""] * (len(configs) - len(qa))

    def answers(c: str, kind: str | None = None) -> list[dict]:
        return [a for r in rows if r["config"] == c for a in r["answers"] if kind in (None, a["kind"])]

    def right(c: str, kind: str | None = None, bold: bool = False) -> str:
        got = [a["right"] for a in answers(c, kind)]
        lo, hi = suite.wilson(sum(got), len(got))
        k = f"**{sum(got)}/{len(got)}**" if bold else f"{sum(got)}/{len(got)}"
        return f"{k} [{lo:.0%}-{hi:.0%}]" if got else "-"

    def share(c: str) -> float | None:
        got = [a["right"] for a in answers(c)]
        return sum(got) / len(got) if got else None

    cells = [[kind, *(right(c, kind) for c in qa), *pad] for kind in KINDS]
    cells.append(["all questions", *(right(c, bold=True) for c in qa), *pad])
    mine = share("onlooker")
    cells.append(["onlooker's margin (all questions, points)",
                  *(f"{100 * (mine - other):+.0f}" if mine is not None and (other := share(c)) is not None
                    and c != "onlooker" else "" for c in qa), *pad])
    cells.append(["answers repeating a 4-word run (loops)",
                  *(f"{sum(looped(a['got']) for a in answers(c))}/{len(answers(c))}" if answers(c) else "-"
                    for c in qa), *pad])
    ttft = {c: [a["ttft_ms"] for a in answers(c, "now") if a["ttft_ms"] is not None] for c in qa}
    cells.append(["TTFT ms (median of 'now' questions, asked alone)",
                  *(f"{statistics.median(ttft[c]):.0f}" if ttft[c] else "-" for c in qa), *pad])
    for kind, label in (("word", "watch: the board shows a word"), ("person", "watch: a person walks in")):
        cells.append([f"{label}: P / R / F1 / delay",
                      *(alert_cell([r["alerts"][kind] for r in rows if r["config"] == c and kind in r["alerts"]])
                        for c in configs)])
        got = [r["alerts"][f"rule_{kind}"] for r in rows if f"rule_{kind}" in r["alerts"]]
        cells.append([f"  perception rule alone ({kind})", alert_cell(got), *["" for _ in configs[1:]]])
    return ["", *configs], cells


def looped(text: str, n: int = 4) -> bool:
    """The answer says some run of `n` words twice (a repetition loop)."""
    words = text.lower().split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(grams) != len(set(grams))


def alert_cell(got: list[dict]) -> str:
    if not got:
        return "-"
    p, r, f, d = suite.prf(got)
    return f"{p:.2f} / {r:.2f} / {f:.2f} / {d:.1f} s" if d is not None else f"{p:.2f} / {r:.2f} / {f:.2f} / -"


def checks(rows: list[dict]) -> list[str]:
    """The bars of CHECKS the onlooker config missed."""
    mine = [r for r in rows if r["config"] == "onlooker"]
    failed = []
    for kind, bar in CHECKS.items():
        if kind == "watch_word_f1":
            value = suite.prf([r["alerts"]["word"] for r in mine if "word" in r["alerts"]])[2]
        else:
            got = [a["right"] for r in mine for a in r["answers"] if a["kind"] == kind]
            value = sum(got) / len(got) if got else 0.0
        if value < bar:
            failed.append(f"{kind} {value:.2f} < {bar}")
    return failed


def public_main(args: argparse.Namespace) -> int:
    from bench.eval_public import run_public

    if not args.videos:
        raise BenchError("--public needs --videos DIR (the benchmark's videos, downloaded by you)")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as data_dir:
        rows = run_public(args.public, args.videos, args.model, data_dir)
    header = (f"onlooker eval --public {args.public} --model {args.model}: {len(rows)} questions; "
              f"{platform.machine()}, {os.cpu_count()} cores, {time.perf_counter() - start:.0f} s")
    write_rows(args.out, header, rows)
    cells = []
    for task in sorted({r["task"] for r in rows}) + ["all"]:
        got = [r["right"] for r in rows if task in ("all", r["task"])]
        lo, hi = suite.wilson(sum(got), len(got))
        cells.append([task, f"{sum(got)}/{len(got)} [{lo:.0%}-{hi:.0%}]"])
    print_table(header, ["task", "right [95% interval]"], cells)
    return 0


def reprint(path: str) -> int:
    try:
        rows = [json.loads(line) for line in open(path)]
    except (OSError, ValueError) as e:
        raise BenchError(f"cannot read the rows of {path}: {e}") from None
    if rows and "said" in rows[0]:                       # an `onlooker eval --speech` run
        from bench.eval_speech import SPEECH_COLUMNS, rescore_speech, speech_table
        try:
            rows = rescore_speech(rows)
        except (KeyError, ValueError) as e:
            raise BenchError(f"{path}: {e}") from None
        print_table(rows[0]["header"] + f" (answers from {path}, scored now)", SPEECH_COLUMNS, speech_table(rows))
        return 0
    if not rows or "config" not in rows[0]:
        raise BenchError(f"{path}: not the rows of an `onlooker eval` run of the suite")
    configs = list(dict.fromkeys(r["config"] for r in rows))
    rows = [rescore(r) for r in rows]                    # today's scoring rules on the run's answers
    print_table(rows[0]["header"] + f" (answers from {path}, scored now)", *table(rows, configs))
    return 0


def speech_main(args: argparse.Namespace) -> int:
    from bench.eval_speech import SPEECH_COLUMNS, run_speech

    if args.model != "lite":
        raise BenchError("--speech runs on the lite model only (the answers come from its memory of a board)")
    start = time.perf_counter()
    rows, cells = run_speech()
    header = (f"onlooker eval --speech: {len(rows)} spoken questions ({len({r['said'] for r in rows})} distinct), "
              f"3 voices, every third with noise; Whisper base int8, SmolLM2-135M, piper TTS; {platform.machine()}, "
              f"{os.cpu_count()} cores, {time.perf_counter() - start:.0f} s")
    write_rows(args.out, header, rows)
    print_table(header, SPEECH_COLUMNS, cells)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="onlooker eval", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lite", help="lite, tiny-vl, or a model folder (default: lite)")
    p.add_argument("--suite", default="quick", choices=sorted(suite.SUITES), help="quick: 2 scenes; full: 10")
    p.add_argument("--seeds", help="scene seeds instead of the suite's (comma-separated, from EVAL_SEEDS)")
    p.add_argument("--configs", help=f"a subset of {', '.join(CONFIGS)} (default: quick "
                   f"{','.join(SUITE_CONFIGS['quick'])}; full all)")
    p.add_argument("--out", help="write one JSON line per scene and configuration here")
    p.add_argument("--check", action="store_true", help="exit 1 when the onlooker config misses a bar of CHECKS")
    p.add_argument("--public", metavar="NAME:FILE", help="a public benchmark's questions instead of the suite: "
                   "streamingbench:FILE or ovo:FILE (bench/eval_public.py), with --videos")
    p.add_argument("--videos", help="the folder the public benchmark's video paths are under")
    p.add_argument("--speech", action="store_true", help="spoken questions instead (bench/eval_speech.py; lite)")
    p.add_argument("--table-from", metavar="FILE", help="the table of an earlier run's --out rows, its answers "
                   "scored by today's rules; no run")
    args = p.parse_args(argv)
    if args.table_from:
        return reprint(args.table_from)
    if args.public:
        return public_main(args)
    if args.speech:
        return speech_main(args)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()] if args.configs is not None \
        else SUITE_CONFIGS[args.suite]
    if not configs or any(c not in CONFIGS for c in configs):
        raise BenchError(f"--configs: choose from {', '.join(CONFIGS)}, got {args.configs!r}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else suite.SUITES[args.suite]
    except ValueError:
        raise BenchError(f"--seeds: expected integers separated by commas, got {args.seeds!r}") from None
    if any(s not in suite.EVAL_SEEDS for s in seeds):
        raise BenchError(f"--seeds: the eval scenes are {suite.EVAL_SEEDS[0]}-{suite.EVAL_SEEDS[-1]}")
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as data_dir:
        for seed in seeds:
            for c in configs:
                t0 = time.perf_counter()
                rows.append(score(seed, c, run_scene(args.model, seed, c, data_dir)))
                right = sum(a["right"] for a in rows[-1]["answers"])
                print(f"eval: scene {seed}, {c}: {right}/{len(rows[-1]['answers'])} right, "
                      f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    header = (f"onlooker eval --model {args.model} --suite {args.suite}: {len(seeds)} held-out scenes (seeds "
              f"{','.join(map(str, seeds))}), window {WINDOW.get(args.model, 1024)} tokens; {platform.machine()}, "
              f"{os.cpu_count()} cores, {time.perf_counter() - start:.0f} s")
    write_rows(args.out, header, rows)
    columns, cells = table(rows, configs)
    print_table(header, columns, cells)
    if args.check and "onlooker" in configs:
        failed = checks(rows)
        if failed:
            print(f"eval: under the bars: {'; '.join(failed)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
