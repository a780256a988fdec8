"""The ``slimbench`` command line's arguments (``cli.py`` runs the commands)."""

from __future__ import annotations

import argparse
from pathlib import Path

from slimbench import __version__
from slimbench.bench.orchestrate.demo import DEMO_BASELINE, DEMO_POLICY

LS_WHAT = ("models", "steps", "tasks", "backends", "metrics", "families")


def parser() -> argparse.ArgumentParser:
    """The ``slimbench`` argument parser: one helper per command with several options."""
    p = argparse.ArgumentParser(
        prog="slimbench",
        description="Benchmark and compress GPT-style causal LMs: latency, memory, quality.")
    p.add_argument("--version", action="version", version=f"slimbench {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more log output (-v info, -vv debug)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ls = sub.add_parser("ls", help="list the models, recipe steps, tasks, backends, metrics and "
                                   "families that exist")
    ls.add_argument("what", nargs="?", choices=LS_WHAT, help="list only this kind")
    _model_args(sub.add_parser("inspect", help="load a model and print what was loaded (JSON)"))
    _eval_args(sub.add_parser("eval", help="score a model on tasks"))
    _compress_args(sub.add_parser("compress", help="apply a recipe step (or a YAML recipe of "
                                                   "steps) to a model, writing artifacts with "
                                                   "manifests"))
    _run_args(sub.add_parser("run", help="run a suite YAML: every cell isolated, results and "
                                         "report in the run directory"))
    rep = sub.add_parser("report", help="re-render a run's tables and HTML from its cell JSON")
    rep.add_argument("run_dir", type=Path)
    _gate_args(sub.add_parser("gate", help="compare a candidate run with a baseline; exit 1 on "
                                           "a regression or a missing metric"))
    _demo_args(sub.add_parser("demo", help="run the demo suite (reference + gpt2 shapes, every "
                                           "compression), report, and gate it"))
    val = sub.add_parser("validate", help="check result files against the results "
                                          "schema (slimbench/schema/results.schema.json); exit 2 "
                                          "on the first violation")
    val.add_argument("path", type=Path, help="a cell JSON, a results.json, an `eval --out` file, "
                                             "or a run directory (its cells and results.json)")
    _search_args(sub.add_parser(
        "search", help="find the fastest (or smallest) recipe whose quality stays inside a "
                       "budget, confirmed on held-out examples; exit 1 when none does"))
    _compare_args(sub.add_parser(
        "compare", help="paired A/B latency: measure two models in interleaved trials and "
                        "judge the ratio; exit 1 if the candidate is slower"))
    return p


def _model_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("model", help="'reference', 'shape:gpt2[:key=value,...]', a local "
                                  "Hugging Face directory or a hub id")
    sp.add_argument("--allow-pickle", action="store_true",
                    help="load pickle weights (.bin) when no safetensors exist; only for "
                         "files you trust")
    sp.add_argument("--trust-remote-code", action="store_true",
                    help="run model code shipped with the checkpoint")
    sp.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    sp.add_argument("--dtype", help="float32, float16 or bfloat16 (default: as stored)")


def _eval_args(ev: argparse.ArgumentParser) -> None:
    _model_args(ev)
    ev.add_argument("--task", action="append",
                    help="task name, task YAML file, or lm_eval:NAME[,NAME...] for "
                         "lm-evaluation-harness tasks (needs slimbench[lmeval]; repeatable; "
                         "default: all built-in)")
    ev.add_argument("--include-path", type=Path, metavar="DIR",
                    help="a folder of lm-eval task YAML files (for --task lm_eval:NAME)")
    ev.add_argument("--limit", type=int, help="examples per task (default: the task's own)")
    ev.add_argument("--batch-size", type=int,
                    help="batch size for generation and perplexity (default: the task's own)")
    ev.add_argument("--resamples", type=int, default=None,
                    help="bootstrap resamples for the 95%% intervals (default 1000; 0: none)")
    ev.add_argument("--baseline", help="also measure fidelity (top-1 agreement, KL, greedy "
                                       "exact match) against this model spec on the "
                                       "perplexity text")
    ev.add_argument("--threads", type=int, help="torch intra-op threads (default: all cores)")
    ev.add_argument("--out", type=Path, help="write the results JSON here, and per-example "
                                             "outputs to <out stem>.examples.jsonl beside it")


def _compress_args(comp: argparse.ArgumentParser) -> None:
    comp.add_argument("model", nargs="?",
                      help="model spec (as for inspect) or an artifact directory; with "
                           "--recipe, defaults to the recipe's model")
    how = comp.add_mutually_exclusive_group(required=True)
    how.add_argument("--step", help="recipe step (see `slimbench ls steps`)")
    how.add_argument("--recipe", type=Path, help="YAML recipe: steps applied in order")
    comp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="step parameter (repeatable; with --step)")
    comp.add_argument("--out", type=Path, required=True,
                      help="new artifact directory (with --recipe: a folder of them)")


def _run_args(run: argparse.ArgumentParser) -> None:
    run.add_argument("suite", type=Path, help="suite YAML file")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                     help="suite overrides with dotted keys, e.g. threads=1 latency.repeats=3")
    run.add_argument("--out", type=Path, required=True, help="run directory (new, or --resume)")
    run.add_argument("--resume", action="store_true", help="skip cells already finished ok")
    run.add_argument("--cache", type=Path,
                     help="artifact cache (default: .artifacts beside the run directory)")
    _executor_args(run, "the cells")


def _executor_args(sp: argparse.ArgumentParser, what: str) -> None:
    """``--executor`` and the Ray executor's flags (``run``, ``search``)."""
    sp.add_argument("--executor", choices=("local", "ray"), default="local",
                    help=f"where {what} run: local (one after another on this machine, "
                         "the default) or ray (Ray tasks on a cluster; needs the extra "
                         "slimbench[ray])")
    sp.add_argument("--address", metavar="ADDR",
                    help="with --executor ray: the cluster: auto, HOST:PORT or "
                         "ray://HOST[:PORT] (default: start one on this machine)")
    sp.add_argument("--connect-timeout", type=float, metavar="S",
                    help="with --executor ray and --address: give up (exit 2) when the "
                         "cluster does not answer within S seconds (default 30)")
    sp.add_argument("--artifact-store", type=Path, metavar="DIR",
                    help="with --executor ray: the artifact cache, on a filesystem every "
                         "node mounts at the same path (default: as --cache)")


def _gate_args(gate: argparse.ArgumentParser) -> None:
    gate.add_argument("--baseline", type=Path, required=True, action="append",
                      help="baseline run directory or results.json; give it several times "
                           "for repeated runs of one build (each metric is then held to the "
                           "worst of them: the machine's run-to-run noise)")
    gate.add_argument("--candidate", type=Path, required=True,
                      help="candidate run directory (the Markdown table is also written "
                           "there, as gate-<time>.md) or results.json")
    gate.add_argument("--policy", type=Path, help="gate policy YAML (default: built-in)")
    gate.add_argument("--allow-different-suites", action="store_true",
                      help="compare runs even if their suites measure different things (or "
                           "a results file does not say): warn instead of refusing")
    gate.add_argument("--remeasure", action="store_true",
                      help="decide latency on a paired, interleaved re-measurement of the "
                           "baseline run's and the candidate run's artifacts (where both are "
                           "at hand, e.g. in the artifact cache), not on the two runs' own "
                           "figures: one A/B per variant, device and scenario")
    gate.add_argument("--max-seconds", type=float, default=30.0,
                      help="with --remeasure: the longest each A/B may measure (default 30; "
                           "at least 10 s each)")


def _demo_args(demo: argparse.ArgumentParser) -> None:
    demo.add_argument("overrides", nargs="*", metavar="key=value",
                      help="suite overrides, e.g. threads=1 task_limit=50 devices=[cpu]")
    demo.add_argument("--out", type=Path, help="run directory (default runs/demo-<timestamp>)")
    demo.add_argument("--resume", action="store_true", help="finish an interrupted demo run")
    demo.add_argument("--full", action="store_true",
                      help="every variant (bench/suites/demo-full.yaml): ORT fp32 and static "
                           "int8, a half-depth student and gpt2 torch int8 too")
    demo.add_argument("--baseline", type=Path, default=DEMO_BASELINE,
                      help="results to gate against (default: the committed demo baseline)")
    demo.add_argument("--policy", type=Path, default=DEMO_POLICY,
                      help="gate policy (default: quality and size gated, latency reported)")


def _compare_args(cmp: argparse.ArgumentParser) -> None:
    from slimbench.bench.measure.paired import SCENARIOS, PairedConfig

    d = PairedConfig()
    cmp.description = (
        "Measure BASELINE and CANDIDATE together: each in its own process, alternating short "
        "trials in random order, so that a shared machine's drift cancels in the per-pair "
        "ratios candidate/baseline. Exit 0: no change or faster; 1: slower; 2: bad input.")
    cmp.add_argument("baseline", help="model spec (as for inspect) or an artifact directory")
    cmp.add_argument("candidate", help="model spec or artifact directory")
    cmp.add_argument("--scenario", choices=SCENARIOS, default=d.scenario,
                     help=f"what to time (default {d.scenario})")
    cmp.add_argument("--length", type=int, default=d.length,
                     help=f"prompt (prefill, generate) or context (decode) tokens "
                          f"(default {d.length})")
    cmp.add_argument("--new-tokens", type=int, default=d.new_tokens,
                     help=f"decode steps / generated tokens per unit (default {d.new_tokens})")
    cmp.add_argument("--threads", type=int, help="intra-op threads (default: all cores)")
    cmp.add_argument("--device", default=d.device, help="cpu, cuda or cuda:N")
    cmp.add_argument("--dtype", help="float32, float16 or bfloat16 (default: as stored)")
    cmp.add_argument("--min-seconds", type=float, default=d.min_seconds,
                     help=f"measure pairs at least this long (default {d.min_seconds:g})")
    cmp.add_argument("--max-seconds", type=float, default=d.max_seconds,
                     help=f"and at most this long (default {d.max_seconds:g})")
    cmp.add_argument("--precision", type=float, default=d.precision,
                     help="stop after --min-seconds once the 95%% interval of the ratio is "
                          f"within this relative distance (default {d.precision:g})")
    cmp.add_argument("--min-effect", type=float,
                     help="smallest relative change called slower / faster (default: the "
                          f"policy's latency allowance with --policy, else {d.min_effect:g})")
    cmp.add_argument("--policy", type=Path,
                     help="gate policy YAML: its latency allowance for the scenario's metric "
                          "is the min effect")
    cmp.add_argument("--seed", type=int, default=d.seed, help="seed of the trial order")
    cmp.add_argument("--json", type=Path, metavar="OUT", help="write the result as JSON")
    cmp.add_argument("--allow-pickle", action="store_true",
                     help="load pickle weights (.bin) when no safetensors exist; only for "
                          "files you trust")
    cmp.add_argument("--trust-remote-code", action="store_true",
                     help="run model code shipped with the checkpoint")
    cmp.add_argument("--inject-slowdown", type=float, default=0.0, metavar="F",
                     help="test only: the candidate busy-waits F x each timed step's own time "
                          "(a known slowdown of F, to check that compare finds it)")


def _search_args(sp: argparse.ArgumentParser) -> None:
    sp.description = (
        "Try the recipes of a space on MODEL, cheapest evidence first: build, bytes, "
        "sequential paired quality screens on the tune split, paired A/B timing of the "
        "survivors, then confirm the best on the test split. Writes OUT/search.json, "
        "frontier.html and, with a winner, best-recipe.yaml and best-suite.yaml. Exit 0: a "
        "winner; 1: none meets the budget; 2: bad input.")
    sp.add_argument("model", help="'reference', a local Hugging Face directory or a hub id")
    sp.add_argument("--budget", type=Path, required=True,
                    help="YAML of criteria as a suite's acceptance gives them, e.g. "
                         "perplexity.perplexity: {non_inferior: 0.02}")
    sp.add_argument("--space", type=Path,
                    help="YAML of candidate recipes (default: the built-in space of --device)")
    sp.add_argument("--out", type=Path, required=True, help="the search's folder")
    sp.add_argument("--objective", default="decode",
                    choices=("decode", "prefill", "generate", "size", "memory"),
                    help="what the winner is best at (default decode)")
    sp.add_argument("--device", default="cpu", help="cpu or cuda")
    sp.add_argument("--threads", type=int, help="intra-op threads (default: all cores)")
    sp.add_argument("--max-minutes", type=float, help="time budget: screening stops at 60%% "
                                                      "of it, timing at 85%%")
    sp.add_argument("--alpha", type=float, default=0.05,
                    help="the confirmation tests' level (default 0.05)")
    sp.add_argument("--ab-seconds", type=float, default=10.0,
                    help="longest paired A/B of a survivor against the baseline (default 10)")
    sp.add_argument("--tune-limit", type=int, help="tune examples per task at most")
    sp.add_argument("--test-limit", type=int, help="test examples per task at most")
    sp.add_argument("--cache", type=Path, help="artifact cache (default: OUT/../.artifacts)")
    sp.add_argument("--resume", action="store_true",
                    help="go on with the search in OUT, redoing nothing already decided")
    _executor_args(sp, "the candidates' screens and A/Bs")
