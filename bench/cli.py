"""The ``slimbench`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from slimbench import __version__, atomic
from slimbench.bench.orchestrate.demo import DEMO_BASELINE, DEMO_POLICY
from slimbench.errors import CellsFailed, SlimbenchError
from slimbench.log import setup_logging

LS_WHAT = ("models", "recipes", "tasks", "backends")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="slimbench",
        description="Benchmark and compress GPT-style causal LMs: latency, memory, quality.")
    p.add_argument("--version", action="version", version=f"slimbench {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more log output (-v info, -vv debug)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ls = sub.add_parser("ls", help="list the models, recipes, tasks and backends that exist")
    ls.add_argument("what", nargs="?", choices=LS_WHAT, help="list only this kind")

    def model_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("model", help="'reference', 'shape:gpt2[:key=value,...]', a local "
                                      "Hugging Face directory or a hub id")
        sp.add_argument("--allow-pickle", action="store_true",
                        help="load pickle weights (.bin) when no safetensors exist; only for "
                             "files you trust")
        sp.add_argument("--trust-remote-code", action="store_true",
                        help="run model code shipped with the checkpoint")
        sp.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
        sp.add_argument("--dtype", help="float32, float16 or bfloat16 (default: as stored)")

    ins = sub.add_parser("inspect", help="load a model and print what was loaded (JSON)")
    model_args(ins)

    ev = sub.add_parser("eval", help="score a model on tasks")
    model_args(ev)
    ev.add_argument("--task", action="append",
                    help="task name or task YAML file (repeatable; default: all built-in)")
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

    comp = sub.add_parser("compress", help="apply a recipe step (or a YAML recipe of steps) "
                                           "to a model, writing artifacts with manifests")
    comp.add_argument("model", nargs="?",
                      help="model spec (as for inspect) or an artifact directory; with "
                           "--recipe, defaults to the recipe's model")
    how = comp.add_mutually_exclusive_group(required=True)
    how.add_argument("--step", help="recipe step (see `slimbench ls recipes`)")
    how.add_argument("--recipe", type=Path, help="YAML recipe: steps applied in order")
    comp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="step parameter (repeatable; with --step)")
    comp.add_argument("--out", type=Path, required=True,
                      help="new artifact directory (with --recipe: a folder of them)")

    run = sub.add_parser("run", help="run a suite YAML: every cell isolated, results and "
                                     "report in the run directory")
    run.add_argument("suite", type=Path, help="suite YAML file")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                     help="suite overrides with dotted keys, e.g. threads=1 latency.repeats=3")
    run.add_argument("--out", type=Path, required=True, help="run directory (new, or --resume)")
    run.add_argument("--resume", action="store_true", help="skip cells already finished ok")
    run.add_argument("--cache", type=Path,
                     help="artifact cache (default: .artifacts beside the run directory)")

    rep = sub.add_parser("report", help="re-render a run's tables and HTML from its cell JSON")
    rep.add_argument("run_dir", type=Path)

    gate = sub.add_parser("gate", help="compare a candidate run with a baseline; exit 1 on a "
                                       "regression or a missing metric")
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

    demo = sub.add_parser("demo", help="run the demo suite (reference + gpt2 shapes, every "
                                       "compression), report, and gate it")
    demo.add_argument("overrides", nargs="*", metavar="key=value",
                      help="suite overrides, e.g. threads=1 task_limit=50 devices=[cpu]")
    demo.add_argument("--out", type=Path, help="run directory (default runs/demo-<timestamp>)")
    demo.add_argument("--resume", action="store_true", help="finish an interrupted demo run")
    demo.add_argument("--baseline", type=Path, default=DEMO_BASELINE,
                      help="results to gate against (default: the committed demo baseline)")
    demo.add_argument("--policy", type=Path, default=DEMO_POLICY,
                      help="gate policy (default: quality and size gated, latency reported)")
    return p


def _load_options(args):
    from slimbench.compress.loader import LoadOptions

    return LoadOptions(dtype=args.dtype, device=args.device, allow_pickle=args.allow_pickle,
                       trust_remote_code=args.trust_remote_code)


def cmd_ls(args) -> None:
    from slimbench.compress.reference import reference_card
    from slimbench.compress.shapes import SHAPES
    from slimbench.compress.steps import STEPS
    from slimbench.tasks.specs import TASKS

    card = reference_card()
    sections = {
        "models": [("reference", f"embedded GPT-2 ({card['parameters'] / 1e6:.1f} M params, "
                                 f"validation perplexity {card['validation_perplexity']:.1f}) "
                                 "trained on CPython stdlib")]
        + [(f"shape:{n}", "random weights, {n_layer} layers, d={n_embd}, {n_head} heads"
            .format(**s)) for n, s in SHAPES.items()],
        "recipes": [(n, STEPS.describe(n)) for n in STEPS.names()],
        "tasks": [(n, TASKS.describe(n)) for n in TASKS.names()],
        "backends": [("torch", "PyTorch eager on cpu or cuda (float32, float16, bfloat16)"),
                     ("onnxruntime", "ONNX Runtime for ONNX artifacts (CPU EP; CUDA EP on cuda)")],
    }
    for what in [args.what] if args.what else LS_WHAT:
        print(f"{what}:")
        rows = sections[what] or [("(none yet)", "")]
        for name, desc in rows:
            print(f"  {name:<20} {desc}".rstrip())


def cmd_inspect(args) -> None:
    from slimbench.compress.loader import load_artifact

    loaded = load_artifact(args.model, _load_options(args))
    print(json.dumps(loaded.info.to_dict(), indent=2))


def examples_path(out: Path) -> Path:
    """``runs/eval.json`` -> ``runs/eval.examples.jsonl``."""
    return out.with_name(out.stem + ".examples.jsonl")


def cmd_eval(args) -> None:
    from slimbench.bench.measure import environment
    from slimbench.bench.runtimes import make_runtime
    from slimbench.compress.loader import load_artifact
    from slimbench.tasks.bootstrap import RESAMPLES
    from slimbench.tasks.generation import run_task
    from slimbench.tasks.specs import TASKS, resolve_task

    # unknown names and bad task files fail before any model is loaded
    specs = [resolve_task(n) for n in (args.task or TASKS.names())]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise SlimbenchError(f"task names repeat: {', '.join(names)}")
    for flag, value in (("--limit", args.limit), ("--batch-size", args.batch_size)):
        if value is not None and value <= 0:
            raise SlimbenchError(f"{flag} must be positive, got {value}")
    resamples = RESAMPLES if args.resamples is None else args.resamples
    if resamples < 0:
        raise SlimbenchError(f"--resamples must be >= 0, got {resamples}")
    if args.out:
        for path in (args.out, examples_path(args.out)):
            if path.exists():
                raise SlimbenchError(f"{path} already exists; choose another --out (slimbench "
                                     "never overwrites results)")
    loaded = load_artifact(args.model, _load_options(args))
    if loaded.info.random_weights:
        raise SlimbenchError(f"{args.model} has random weights: its quality means nothing, "
                             "so slimbench does not score it")
    rt = make_runtime(loaded, environment.set_threads(args.threads))
    results, examples = {}, []
    for spec in specs:
        res = run_task(rt, loaded.tokenizer, spec, args.limit, show_progress=True,
                       batch_size=args.batch_size, resamples=resamples)
        examples += [{"task": spec.name} | e for e in res.pop("examples")]
        results[spec.name] = res
        ci = res["ci95"]
        ci_text = f"  95% CI [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        print(f"{spec.name:<18} {res['metric']} = {res['value']:.3f}{ci_text}  "
              f"(n={res['n']}, {res['seconds']:.1f} s)")
    if args.baseline:
        results["fidelity"] = _fidelity(args, rt, loaded, resamples)
    if args.out:
        ex_path = examples_path(args.out)
        # examples first: the results JSON names a file that exists when it appears
        atomic.write_text(ex_path, "".join(json.dumps(e, sort_keys=True) + "\n"
                                           for e in examples))
        atomic.write_json(args.out, {"model": loaded.info.to_dict(), "tasks": results,
                                     "examples_file": ex_path.name,
                                     "environment": environment.capture()})
        print(f"wrote {args.out} and {ex_path}")


def _fidelity(args, rt, loaded, resamples: int) -> dict:
    from slimbench.bench.runtimes import make_runtime
    from slimbench.compress.loader import load_artifact
    from slimbench.tasks.fidelity import FidelityConfig, fidelity
    from slimbench.tasks.sources import load_rows, render
    from slimbench.tasks.specs import TASKS

    base_loaded = load_artifact(args.baseline, _load_options(args))
    if base_loaded.info.random_weights:
        raise SlimbenchError(f"baseline {args.baseline} has random weights")
    spec = TASKS.get("perplexity")
    texts = [render(spec.text, r) for r in load_rows(spec, args.limit)]
    cfg = FidelityConfig(spec.perplexity)
    res = fidelity(rt, make_runtime(base_loaded, args.threads), loaded.tokenizer, texts, cfg,
                   resamples=resamples, show_progress=True) | {"baseline": args.baseline}
    print(f"{'fidelity':<18} top-1 agreement {res['top1_agreement']['value']:.4f}, "
          f"KL {res['kl_nats']['value']:.3g} nats, greedy exact match "
          f"{res['greedy_exact_match']['value']:.3f} vs {args.baseline}")
    return res


def cmd_compress(args) -> None:
    from slimbench.compress.shapes import parse_value
    from slimbench.compress.steps import STEPS, make_config, run_step

    if args.recipe is not None:
        _compress_recipe(args)
        return
    if args.model is None:
        raise SlimbenchError("compress --step needs a model")
    params = {}
    for item in args.set:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise SlimbenchError(f"--set {item!r} must look like key=value")
        params[key.strip()] = parse_value(raw.strip())
    make_config(STEPS.get(args.step), params)  # bad names and values fail before any work
    manifest = run_step(args.step, params, args.model, args.out)
    summary = {k: manifest.get(k) for k in ("step", "recipe", "bytes_on_disk", "quantization",
                                             "parity")}
    print(json.dumps(summary, indent=2))
    print(f"wrote artifact {args.out}")


def _compress_recipe(args) -> None:
    from slimbench.compress.recipe import load_recipe, resolve, run_recipe

    if args.set:
        raise SlimbenchError("--set applies to --step; put recipe parameters in the YAML")
    recipe = load_recipe(args.recipe)
    model = args.model or recipe.model
    if model is None:
        raise SlimbenchError(f"{args.recipe} names no model; pass one on the command line")
    try:
        resolve(recipe, model)  # every step checked before any work
    except SlimbenchError as e:
        raise SlimbenchError(f"{args.recipe}: {e}") from None
    manifests = run_recipe(recipe, model, args.out)
    for m in manifests:
        print(f"{'/'.join(m['recipe']):<60} {m['parameters']:>12,} params "
              f"{m['bytes_on_disk']:>12,} bytes")
    print(f"wrote {len(manifests)} artifacts under {args.out}")


def cmd_run(args) -> None:
    from slimbench.bench.orchestrate.runner import run_suite
    from slimbench.bench.orchestrate.suite import load_suite

    suite = load_suite(args.suite, args.overrides)  # everything validated before any work
    results = run_suite(suite, args.out, resume=args.resume, cache=args.cache)
    _report(args.out, suite.baseline_variant)
    ok = sum(r["status"] == "ok" for r in results)
    print(f"{ok} of {len(results)} cells ok; results in {args.out}")
    failed = [r["cell"]["id"] for r in results if r["status"] == "failed"]
    if failed:  # exit 3: finished with a report, but not every measurement exists
        raise CellsFailed(f"{len(failed)} of {len(results)} cells failed ({', '.join(failed)}); "
                          "the reasons are in their cell files and the report")


def _report(run_dir: Path, baseline_variant: str | None) -> None:
    from slimbench.reports.output import write_report

    summary = write_report(run_dir, baseline_variant)
    print(f"wrote {run_dir / 'results.csv'} ({summary['rows']} rows from {summary['cells']} "
          f"cells), {run_dir / 'summary.csv'}, {summary['html']}")
    for what in ("failed", "skipped"):
        if summary[what]:
            print(f"  {what}: {', '.join(summary[what])}")


def cmd_report(args) -> None:
    suite = args.run_dir / "suite.json"
    if not suite.is_file():
        raise SlimbenchError(f"{args.run_dir} is not a run directory (no suite.json)")
    _report(args.run_dir, json.loads(suite.read_text()).get("baseline_variant"))


def cmd_gate(args) -> None:
    from datetime import datetime, timezone

    from slimbench.errors import UsageError
    from slimbench.reports.gate import compare, load_policy, markdown, suite_problem
    from slimbench.reports.table import load_results

    policy = load_policy(args.policy)
    loaded = [load_results(path) for path in args.baseline]
    candidate, cand_suite = load_results(args.candidate)
    # a figure from another task limit, recipe or thread count is not a regression or a gain
    for path, (_, suite) in zip(args.baseline, loaded, strict=True):
        problem = suite_problem(suite, cand_suite, path, args.candidate)
        if problem and not args.allow_different_suites:
            raise UsageError(f"{problem}; --allow-different-suites compares them anyway")
        if problem:
            print(f"slimbench: warning: {problem}", file=sys.stderr)
    (baseline, _), *repeats = loaded
    checks = compare(baseline, candidate, policy, [rows for rows, _ in repeats])
    text = markdown(checks)
    print(text, end="")
    if args.candidate.is_dir():
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
        path = args.candidate / f"gate-{stamp}.md"
        atomic.write_text(path, text)
        print(f"wrote {path}", file=sys.stderr)  # stdout stays Markdown (CI step summaries)
    if any(c["status"] == "fail" for c in checks):
        raise GateFailed("the candidate regressed or lacks baseline metrics")


def cmd_demo(args) -> None:
    from slimbench.bench.orchestrate.demo import default_run_dir, run_demo

    if args.resume and args.out is None:
        raise SlimbenchError("--resume needs --out: the run directory to finish")
    run_dir = args.out or default_run_dir()
    if not run_demo(run_dir, args.overrides, baseline=args.baseline, policy=args.policy,
                    resume=args.resume):
        raise GateFailed(f"the demo run differs from {args.baseline.name}; see "
                         f"{run_dir / 'gate.md'}")


COMMANDS = {"ls": cmd_ls, "inspect": cmd_inspect, "eval": cmd_eval, "compress": cmd_compress,
            "run": cmd_run, "report": cmd_report, "gate": cmd_gate, "demo": cmd_demo}


class GateFailed(SlimbenchError):
    exit_code = 1


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # overrides may come after options too (`run S --out D threads=1`), which argparse's
    # positional nargs="*" cannot take once an option has ended it
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    setup_logging(args.verbose)
    try:
        COMMANDS[args.command](args)
    except SlimbenchError as e:
        print(f"slimbench: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("slimbench: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
