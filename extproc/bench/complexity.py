"""Complexity scorer: quality on the graded test set and on routing data, and µs per 2 KB prompt.

python -m extproc.bench.complexity [--json docs/bench/complexity.json] [--routing dev.jsonl]

- graded test set (written apart from the train set, never used for fitting or choosing anything):
  Spearman between `complexity` and the rubric level, overall and per language; median score per
  level; the same for two baselines (prompt length, and `strong_gain`, the previous shipped score).
  Test rows whose request also appears in the train set (a few greetings) are left out; the figure
  with them is reported too;
- routing data: 5-fold CV APGR of `strong_gain` (the whole head refitted per fold; and its
  lexical part alone) and APGR of `complexity` alone (never trained on routing data), with the
  strong-model shares for 50 % / 80 % of the gap;
- speed: both heads together on 2 KB prompts (English from the routing data, and Chinese from the
  graded train set), one core, in-process: median and p99 over repeats; a frozen yardstick
  (`extproc.bench.previous_gain`: the strong_gain head as it ran before the speed work, lexical
  only) and today's lexical head alone are timed interleaved with it, prompt by prompt, so the
  ratios hold on a machine that other work is loading; then both heads and both without the gain
  trees, interleaved as a pair (what the trees cost).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from extproc import complexity
from extproc.bench.machine import write_report
from extproc.bench.previous_gain import PreviousStrongGain
from extproc.complexity.cli import evaluate
from extproc.complexity.evaluate import apgr, graded_report, read_labelled
from extproc.complexity.features import Prompt
from extproc.complexity.lexical import LexicalModel
from extproc.complexity.scorer import MODEL_PATH
from extproc.complexity.train import (
    DEFAULT_ROUTING,
    GRADED_TEST,
    GRADED_TRAIN,
    cross_validate,
    gain_cross_validate,
    labelled_rows,
    read_rows,
    unseen_rows,
)

PROMPT_BYTES = 2048


def two_kb_prompts(texts: list[str], count: int) -> list[str]:
    """Prompts of exactly 2 KB of UTF-8 (whole characters), each stitched from several texts."""
    out: list[str] = []
    i = 0
    while len(out) < count:
        text = texts[i % len(texts)]
        step = 1
        while len(text.encode()) < PROMPT_BYTES:
            text += "\n" + texts[(i + step * 7) % len(texts)]
            step += 1
        out.append(text.encode()[:PROMPT_BYTES].decode("utf-8", "ignore"))
        i += 1
    return out


def summary(samples: list[float], runs: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    return {
        "p50_us": statistics.median(ordered),
        "p99_us": ordered[int(len(ordered) * 0.99)],
        "p50_us_per_repeat": runs,
    }


def timing(
    scorers: dict[str, Callable[[str], object]], prompts: list[str], repeats: int
) -> dict[str, dict[str, Any]]:
    """µs per call of each scorer, interleaved prompt by prompt so all see the same machine load;
    the order turns from prompt to prompt, so that none always runs with the caches as the one
    before it left them (scorers that share the model's tables warm them for each other)."""
    samples: dict[str, list[float]] = {name: [] for name in scorers}
    runs: dict[str, list[float]] = {name: [] for name in scorers}
    named = list(scorers.items())
    for _ in range(repeats):
        run: dict[str, list[float]] = {name: [] for name in scorers}
        for i, text in enumerate(prompts):
            turn = i % len(named)
            for name, score in named[turn:] + named[:turn]:
                started = time.perf_counter_ns()
                score(text)
                run[name].append((time.perf_counter_ns() - started) / 1000)
        for name, values in run.items():
            runs[name].append(statistics.median(values))
            samples[name] += values
    return {
        name: {"prompts": len(prompts), "repeats": repeats, **summary(samples[name], runs[name])}
        for name in scorers
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m extproc.bench.complexity", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--json", default="docs/bench/complexity.json")
    parser.add_argument("--routing", default=str(DEFAULT_ROUTING))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    model = complexity.model()
    results: dict[str, Any] = {}

    train = read_rows(GRADED_TRAIN)
    every_test_row = read_rows(GRADED_TEST)
    test = unseen_rows(every_test_row, train)
    graded = evaluate(model, test)["graded"]
    prompts = [Prompt.from_row(r) for r in test]
    levels = [r["level"] for r in test]
    langs = [r.get("lang", "") for r in test]
    results["graded_test"] = {
        "rows_left_out_as_also_in_train": len(every_test_row) - len(test),
        "complexity": graded,
        "complexity_all_rows": evaluate(model, every_test_row)["graded"],
        "baseline_prompt_length": graded_report([len(p.full_text) for p in prompts], levels, langs),
        "baseline_strong_gain": graded_report([model.scores(p).strong_gain for p in prompts], levels, langs),
    }
    print(
        f"graded test ({graded['rows']} rows not also in train): Spearman {graded['spearman']:.3f} "
        f"(all {len(every_test_row)} rows: {results['graded_test']['complexity_all_rows']['spearman']:.3f})"
    )
    for lang, values in graded["spearman_by_language"].items():
        print(f"  {lang}: {values['rows']} rows, Spearman {values['spearman']:.3f}")
    medians = ", ".join(f"{k}: {v:.3f}" for k, v in graded["median_by_level"].items())
    print(f"  medians by level {medians} (monotone: {graded['medians_monotone']})")
    for name in ("baseline_prompt_length", "baseline_strong_gain"):
        print(f"  {name}: Spearman {results['graded_test'][name]['spearman']:.3f}")

    routing_path = Path(args.routing)
    routing: list[dict[str, Any]] = []
    if routing_path.exists():
        routing = labelled_rows(read_labelled(routing_path))
        cv, _ = gain_cross_validate(routing, k=5)
        lexical, _ = cross_validate(routing, k=5)
        weak = [r["weak_correct"] for r in routing]
        strong = [r["strong_correct"] for r in routing]
        alone = apgr([model.score(r["prompt"]) for r in routing], weak, strong)
        results["routing"] = {
            "rows": len(routing),
            "strong_gain_cv5": cv,
            "strong_gain_lexical_part_alone_cv5": lexical,
            "complexity_alone": alone,
        }
        for name, values in (
            ("strong_gain (5-fold CV)", cv),
            ("its lexical part alone (5-fold CV)", lexical),
            ("complexity alone", alone),
        ):
            print(
                f"routing {name}: APGR {values['apgr']:.3f}; strong share for 50 % of the gap "
                f"{values['strong_share_for_50pct_gap']:.2f}, 80 % {values['strong_share_for_80pct_gap']:.2f}"
            )

    chinese = [Prompt.from_row(r).final for r in train if r.get("lang") == "zh"]
    english = [r["prompt"] for r in routing] or [
        Prompt.from_row(r).final for r in train if r.get("lang") == "en"
    ]
    model.scores(Prompt.from_text("warm up"))
    both = lambda text: model.scores(Prompt.from_text(text))  # noqa: E731
    # the same model without the gain trees (its own C tables): what the trees cost
    without_trees = complexity.ComplexityModel(model.difficulty, model.gain)
    both_without_trees = lambda text: without_trees.scores(Prompt.from_text(text))  # noqa: E731
    results["speed"] = {"prompt_bytes": PROMPT_BYTES}
    for name, texts in (("english", english), ("chinese", chinese)):
        stitched = two_kb_prompts(texts, 1000)
        speed: dict[str, Any] = timing(
            {
                "both_heads": both,
                "lexical_gain_head_alone": model.gain.score,
                # its own copy of the arrays: it warms no cache for the others
                "gain_head_before_speed_work": PreviousStrongGain(LexicalModel.load(MODEL_PATH, "gain.")),
            },
            stitched,
            args.repeats,
        )
        yardstick = speed["gain_head_before_speed_work"]["p50_us"]
        speed["ratio_both_to_gain_head_before_speed_work"] = speed["both_heads"]["p50_us"] / yardstick
        # what the gain trees cost: the two alone, so that each runs after the other as often
        # (in the run above every scorer always follows the same one)
        pair = timing({"both_heads": both, "without_gain_trees": both_without_trees}, stitched, args.repeats)
        speed["gain_trees_cost"] = {
            **pair,
            "ratio": pair["both_heads"]["p50_us"] / pair["without_gain_trees"]["p50_us"],
        }
        speed["ratio_both_to_gain_alone"] = (
            speed["both_heads"]["p50_us"] / speed["lexical_gain_head_alone"]["p50_us"]
        )
        results["speed"][name] = speed
        print(
            f"2 KB {name} prompt, both heads: median {speed['both_heads']['p50_us']:.1f} µs, "
            f"p99 {speed['both_heads']['p99_us']:.1f} µs; the strong_gain head before the speed work "
            f"{yardstick:.1f} µs in the same run "
            f"({speed['ratio_both_to_gain_head_before_speed_work']:.2f}x), today's lexical head alone "
            f"{speed['lexical_gain_head_alone']['p50_us']:.1f} µs; against both heads without the gain "
            f"trees, alone in pairs: {pair['both_heads']['p50_us']:.1f} / "
            f"{pair['without_gain_trees']['p50_us']:.1f} µs ({speed['gain_trees_cost']['ratio']:.3f}x)"
        )
    results["speed"]["load_average_after"] = os.getloadavg()
    write_report(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
