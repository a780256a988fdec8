"""The ``slimbench`` command line."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from slimbench import atomic
from slimbench.bench.cli_parser import LS_WHAT
from slimbench.bench.cli_parser import parser as _parser
from slimbench.errors import CellsFailed, GateFailed, SlimbenchError, os_error_line
from slimbench.log import setup_logging

if TYPE_CHECKING:
    from slimbench.schema import Check


def _load_options(args):
    from slimbench.compress.loader import LoadOptions

    return LoadOptions(dtype=args.dtype, device=args.device, allow_pickle=args.allow_pickle,
                       trust_remote_code=args.trust_remote_code)


def _ls_models() -> list[tuple[str, str]]:
    from slimbench.compress.reference import reference_card
    from slimbench.compress.shapes import SHAPES, describe

    card = reference_card()
    return [("reference", f"embedded GPT-2 ({card.parameters / 1e6:.1f} M params, "
                          f"validation perplexity {card.validation_perplexity:.1f}) "
                          "trained on CPython stdlib")] + [
        (f"shape:{n}", describe(n)) for n in SHAPES]


def _ls_metrics() -> list[tuple[str, str]]:
    from slimbench.tasks.scorers import CHOICE_METRICS, METRICS, PERPLEXITY_METRICS

    return [(n, f"[{kind}] {reg.describe(n)}") for kind, reg in (
        ("generate", METRICS), ("perplexity", PERPLEXITY_METRICS),
        ("multiple_choice", CHOICE_METRICS)) for n in reg.names()]


def _registry(module: str, name: str):
    import importlib

    return getattr(importlib.import_module(module), name)


# what `slimbench ls` lists: each kind read from its registry (plugins' entries included)
LS_SECTIONS = {
    "models": _ls_models,
    "steps": lambda: _registry("slimbench.compress.steps", "STEPS"),
    "tasks": lambda: _registry("slimbench.tasks.specs", "TASKS"),
    "backends": lambda: _registry("slimbench.bench.runtimes", "RUNTIMES"),
    "metrics": _ls_metrics,
    "families": lambda: _registry("slimbench.compress.arch", "ARCHS"),
}


def cmd_ls(args) -> None:
    for what in [args.what] if args.what else LS_WHAT:
        source = LS_SECTIONS[what]()
        rows = source if isinstance(source, list) else [(n, source.describe(n))
                                                        for n in source.names()]
        print(f"{what}:")
        for name, desc in rows or [("(none yet)", "")]:
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
    from slimbench.bench.measure.cell import require_tokenizer
    from slimbench.bench.runtimes import make_runtime
    from slimbench.compress.loader import load_artifact
    from slimbench.tasks.generation import run_entry

    specs, resamples = _eval_inputs(args)
    loaded = load_artifact(args.model, _load_options(args))
    if loaded.info.random_weights:
        raise SlimbenchError(f"{args.model} has random weights: its quality means nothing, "
                             "so slimbench does not score it")
    require_tokenizer(loaded)
    threads = environment.set_threads(args.threads)
    rt = make_runtime(loaded, threads)
    scores, examples = {}, []
    for spec in specs:
        for res in run_entry(rt, loaded.tokenizer, spec, args.limit, show_progress=True,
                             batch_size=args.batch_size, resamples=resamples):
            name = res.score.task  # an lm_eval entry gives one result per lm-eval task
            if name in scores:
                raise SlimbenchError(f"two tasks are named {name!r}; task names must differ")
            examples += res.records()
            scores[name] = score = res.score
            ci = score.ci95
            ci_text = f"  95% CI [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
            print(f"{name:<18} {score.metric} = {score.value:.3f}{ci_text}  "
                  f"(n={score.n}, {score.seconds:.1f} s)")
    fid = _fidelity(args, rt, loaded, resamples) if args.baseline else None
    if args.out:
        _write_eval(args.out, loaded, threads, scores, fid, examples)


def _eval_inputs(args) -> tuple[list, int]:
    """The task specs and bootstrap resamples of ``eval``, every argument checked before any
    model is loaded."""
    import dataclasses

    from slimbench.bench.measure.environment import MAX_THREADS
    from slimbench.files import check_output_dir
    from slimbench.tasks.bootstrap import RESAMPLES
    from slimbench.tasks.specs import TASKS, resolve_task

    specs = [resolve_task(n) for n in (args.task or TASKS.names())]
    lmeval = [s for s in specs if s.kind == "lm_eval"]
    if args.include_path is not None:
        if not lmeval:
            raise SlimbenchError("--include-path applies to lm-eval tasks (--task lm_eval:NAME)")
        specs = [dataclasses.replace(s, include_path=str(args.include_path))
                 if s.kind == "lm_eval" else s for s in specs]
    names = [n for s in specs for n in (s.tasks if s.kind == "lm_eval" else [s.name])]
    if len(set(names)) != len(names):
        raise SlimbenchError(f"task names repeat: {', '.join(names)}")
    for flag, value in (("--limit", args.limit), ("--batch-size", args.batch_size),
                        ("--threads", args.threads)):
        if value is not None and value <= 0:
            raise SlimbenchError(f"{flag} must be positive, got {value}")
    resamples = RESAMPLES if args.resamples is None else args.resamples
    if not 0 <= resamples <= 1_000_000:  # each resample is a pass over the examples
        raise SlimbenchError(f"--resamples must be in [0, 1000000], got {resamples}")
    if args.threads is not None and args.threads > MAX_THREADS:
        raise SlimbenchError(f"--threads must be at most {MAX_THREADS}, got {args.threads}")
    if args.baseline is not None:  # read only after every task has run: checked before them
        _check_baseline(args.baseline)
    if args.out:
        check_output_dir(args.out.parent, "--out")
        for path in (args.out, examples_path(args.out)):
            if path.exists():
                raise SlimbenchError(f"{path} already exists; choose another --out (slimbench "
                                     "never overwrites results)")
    return specs, resamples


def _check_baseline(spec: str) -> None:
    """``eval --baseline``: a model spec that can exist (a path that is there, the reference,
    a hub id) and whose outputs mean something (a shape's random weights do not)."""
    from slimbench.compress.loader import spec_source

    try:
        source = spec_source(spec)
    except SlimbenchError as e:
        raise SlimbenchError(f"--baseline: {e}") from None
    if source == "shape":
        raise SlimbenchError(f"baseline {spec} has random weights")


def _write_eval(out: Path, loaded, threads: int, scores: dict, fid, examples: list) -> None:
    """``out`` (an ``EvalResult``) and, first, its per-example file: the results JSON names a
    file that exists when it appears."""
    from slimbench.bench.measure import environment
    from slimbench.schema import EvalResult

    ex_path = examples_path(out)
    for score in scores.values():
        score.examples_file = ex_path.name
    result = EvalResult(model=loaded.info, tasks=scores,
                        environment=environment.capture().to_dict(), examples_file=ex_path.name,
                        threads=threads, fidelity=fid).to_dict()
    try:
        atomic.write_text(ex_path, "".join(json.dumps(e, sort_keys=True) + "\n"
                                           for e in examples))
        atomic.write_json(out, result)
    except OSError as e:  # a full disk must not cost the minutes that computed the scores
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
        raise SlimbenchError(f"{os_error_line(e)}; the results are printed above as "
                             "JSON") from None
    print(f"wrote {out} and {ex_path}")


def _fidelity(args, rt, loaded, resamples: int):
    from slimbench.bench.runtimes import make_runtime
    from slimbench.compress.loader import load_artifact
    from slimbench.tasks.fidelity import FidelityConfig, fidelity
    from slimbench.tasks.sources import load_examples, render
    from slimbench.tasks.specs import TASKS

    base_loaded = load_artifact(args.baseline, _load_options(args))
    if base_loaded.info.random_weights:
        raise SlimbenchError(f"baseline {args.baseline} has random weights")
    spec = TASKS.get("perplexity")
    texts = [render(spec.text, r) for r in load_examples(spec, args.limit)]
    cfg = FidelityConfig(spec.perplexity)
    res = fidelity(rt, make_runtime(base_loaded, args.threads), loaded.tokenizer, texts, cfg,
                   resamples=resamples, show_progress=True, baseline_spec=args.baseline)
    m = res.metrics
    print(f"{'fidelity':<18} top-1 agreement {m['top1_agreement'].value:.4f}, "
          f"KL {m['kl_nats'].value:.3g} nats, greedy exact match "
          f"{m['greedy_exact_match'].value:.3f} vs {args.baseline}")
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
    written = manifest.to_dict()
    summary = {k: written.get(k) for k in ("step", "recipe", "bytes_on_disk", "quantization",
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
        params = "?" if m.parameters is None else f"{m.parameters:,}"
        print(f"{'/'.join(m.recipe):<60} {params:>12} params {m.bytes_on_disk:>12,} bytes")
    print(f"wrote {len(manifests)} artifacts under {args.out}")


def cmd_run(args) -> None:
    from slimbench.bench.orchestrate.runner import run_suite
    from slimbench.bench.orchestrate.suite import load_suite

    suite = load_suite(args.suite, args.overrides)  # everything validated before any work
    executor = _executor(args)
    results = run_suite(suite, args.out, resume=args.resume,
                        cache=args.artifact_store or args.cache, executor=executor)
    _report(args.out, suite.baseline_variant)
    ok = sum(r.status == "ok" for r in results)
    print(f"{ok} of {len(results)} cells ok; results in {args.out}")
    rejected = _judge_acceptance(suite, args.out, args.verbose) if suite.acceptance else []
    failed = [r.cell.id for r in results if r.status == "failed"]
    if failed:  # exit 3: finished with a report, but not every measurement exists
        raise CellsFailed(f"{len(failed)} of {len(results)} cells failed ({', '.join(failed)}); "
                          "the reasons are in their cell files and the report")
    if rejected:
        raise GateFailed(f"acceptance criteria failed: {'; '.join(rejected)}; see "
                         f"{args.out / 'acceptance.md'}")


def _executor(args, search: bool = False):
    """``run``'s (``search``'s) executor (None: local), its flags checked before any
    work."""
    from slimbench.errors import UsageError

    if args.executor == "local":
        for flag, value in (("--address", args.address),
                            ("--artifact-store", args.artifact_store),
                            ("--connect-timeout", args.connect_timeout)):
            if value is not None:
                raise UsageError(f"{flag} applies to --executor ray")
        return None
    if args.artifact_store is not None and args.cache is not None:
        raise UsageError("--artifact-store is the Ray executor's --cache: give one of them")
    from slimbench.bench.orchestrate.ray_executor import RayExecutor
    from slimbench.bench.orchestrate.search_ray import RaySearchExecutor

    return (RaySearchExecutor if search else RayExecutor)(
        args.address, args.artifact_store, args.verbose, connect_timeout=args.connect_timeout)


def _judge_acceptance(suite, run_dir: Path, verbose: int) -> list[str]:
    """Judge the suite's acceptance criteria on the run (printing each failure and the
    verdict), add them to its report; the failed ones, named."""
    from slimbench.bench.orchestrate.acceptance import evaluate_acceptance
    from slimbench.reports.html import render_html

    checks = evaluate_acceptance(suite, run_dir, say=print, show_progress=verbose > 0)
    render_html(run_dir, Path(run_dir).name, suite.baseline_variant)  # with its section
    print(f"wrote {run_dir / 'acceptance.md'}, {run_dir / 'acceptance.json'}")
    return [f"{c.variant} {c.device} {c.metric} {c.criterion} {c.threshold:g}"
            for c in checks if c.status == "fail"]


def _report(run_dir: Path, baseline_variant: str | None) -> None:
    from slimbench.reports.output import write_report

    summary = write_report(run_dir, baseline_variant)
    print(f"wrote {run_dir / 'results.csv'} ({summary.rows} rows from {summary.cells} "
          f"cells), {run_dir / 'summary.csv'}, {summary.html}")
    for what, ids in (("failed", summary.failed), ("skipped", summary.skipped)):
        if ids:
            print(f"  {what}: {', '.join(ids)}")


def cmd_report(args) -> None:
    suite = args.run_dir / "suite.json"
    if not suite.is_file():
        raise SlimbenchError(f"{args.run_dir} is not a run directory (no suite.json)")
    _report(args.run_dir, json.loads(suite.read_text()).get("baseline_variant"))


def cmd_gate(args) -> None:
    from datetime import datetime, timezone

    from slimbench.errors import UsageError
    from slimbench.reports.evidence import load_evidence
    from slimbench.reports.gate import compare, load_policy, markdown, suite_problem
    from slimbench.reports.table import load_results

    policy = load_policy(args.policy)
    loaded = [load_results(path) for path in args.baseline]
    cand = load_results(args.candidate)
    candidate, cand_suite = cand.rows, cand.suite
    # a figure from another task limit, recipe or thread count is not a regression or a gain
    for path, results in zip(args.baseline, loaded, strict=True):
        problem = suite_problem(results.suite, cand_suite, path, args.candidate)
        if problem and not args.allow_different_suites:
            raise UsageError(f"{problem}; --allow-different-suites compares them anyway")
        if problem:
            print(f"slimbench: warning: {problem}", file=sys.stderr)
    baseline, *repeats = [results.rows for results in loaded]
    # per-example outputs (paired quality tests) and environments (latency comparability)
    evidence = (load_evidence(args.baseline[0]), load_evidence(args.candidate))
    checks = compare(baseline, candidate, policy, repeats, evidence)
    if args.remeasure:
        checks = _remeasure(args, checks, evidence, cand_suite, policy)
    text = markdown(checks)
    print(text, end="")
    if args.candidate.is_dir():
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
        path = args.candidate / f"gate-{stamp}.md"
        atomic.write_text(path, text)
        print(f"wrote {path}", file=sys.stderr)  # stdout stays Markdown (CI step summaries)
    if any(c.status == "fail" for c in checks):
        raise GateFailed("the candidate regressed or lacks baseline metrics")


def _remeasure(args, checks: list[Check], evidence, suite: dict | None,
               policy) -> list[Check]:
    from slimbench.bench.orchestrate.remeasure import Remeasure, remeasure
    from slimbench.errors import UsageError

    if not 0 < args.max_seconds <= 3600:
        raise UsageError(f"--max-seconds must be in (0, 3600], got {args.max_seconds:g}")
    suite = suite or {}
    runs = [p if p.is_dir() else p.parent for p in (args.baseline[0], args.candidate)]
    plan = Remeasure(runs[0], runs[1], suite.get("threads"), suite.get("latency") or {},
                     max_seconds=args.max_seconds)
    return remeasure(checks, evidence, plan, policy,
                     say=lambda text: print(text, file=sys.stderr))


def cmd_demo(args) -> None:
    from slimbench.bench.orchestrate.demo import DEMO_FULL_SUITE, default_run_dir, run_demo

    if args.resume and args.out is None:
        raise SlimbenchError("--resume needs --out: the run directory to finish")
    run_dir = args.out or default_run_dir()
    if not run_demo(run_dir, args.overrides, baseline=args.baseline, policy=args.policy,
                    resume=args.resume, suite_path=DEMO_FULL_SUITE if args.full else None):
        raise GateFailed(f"an acceptance criterion failed or the demo run differs from "
                         f"{args.baseline.name}; see {run_dir / 'acceptance.md'} and "
                         f"{run_dir / 'gate.md'}")


def cmd_search(args) -> None:
    from slimbench.bench.orchestrate.search import run_search, search_config

    cfg = search_config(args)  # the budget, the space and every flag checked before any work
    result = run_search(cfg, executor=_executor(args, search=True))
    print(f"{result.tried} candidates decided in {result.seconds / 60:.1f} min; "
          + (f"winner {result.winner}: {args.out / 'best-recipe.yaml'}" if result.winner
             else "no candidate meets the budget"))
    if not result.winner:
        near = ("closest: " + "; ".join(result.closest) if result.closest
                else "none was scored (see each candidate's reason)")
        raise GateFailed(f"no candidate meets the budget; {near} (see "
                         f"{args.out / 'search.json'})")


def cmd_compare(args) -> None:
    from slimbench.bench.measure.paired import (
        PRIMARY,
        PairedConfig,
        format_result,
        paired_compare,
    )
    from slimbench.errors import UsageError

    min_effect = args.min_effect
    if min_effect is None and args.policy is not None:
        from slimbench.reports.gate import load_policy

        metric = PRIMARY.get(args.scenario, "")
        kind, allowed = load_policy(args.policy).allowance("latency", metric)
        if kind != "relative":  # an absolute ms allowance has no ratio before measuring
            raise UsageError(f"{args.policy}: {metric} has a {kind} rule there; compare "
                             "judges a ratio and needs a relative one, or give --min-effect")
        min_effect = allowed
    config = PairedConfig(
        scenario=args.scenario, length=args.length, new_tokens=args.new_tokens,
        device=args.device, dtype=args.dtype, threads=args.threads,
        min_seconds=args.min_seconds, max_seconds=args.max_seconds, precision=args.precision,
        seed=args.seed, **({} if min_effect is None else {"min_effect": min_effect}))
    if args.json is not None:  # checked before minutes of measuring, never overwritten
        from slimbench.files import check_output_dir

        check_output_dir(args.json.parent, "--json")
        if args.json.exists():
            raise UsageError(f"{args.json} already exists; choose another --json")
    result = paired_compare(args.baseline, args.candidate, config,
                            slowdown=args.inject_slowdown, show_progress=True,
                            allow_pickle=args.allow_pickle,
                            trust_remote_code=args.trust_remote_code)
    print(format_result(result))
    for w in result.warnings:
        print(f"slimbench: warning: {w}", file=sys.stderr)
    if args.json is not None:
        atomic.write_json(args.json, result.to_dict())
        print(f"wrote {args.json}", file=sys.stderr)
    if result.verdict == "slower":
        raise GateFailed(result.verdict_line)


def cmd_validate(args) -> None:
    from slimbench.reports.validate import validate

    print(validate(args.path))


COMMANDS = {"ls": cmd_ls, "inspect": cmd_inspect, "eval": cmd_eval, "compress": cmd_compress,
            "run": cmd_run, "report": cmd_report, "gate": cmd_gate, "demo": cmd_demo,
            "validate": cmd_validate, "compare": cmd_compare, "search": cmd_search}


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
    except OSError as e:  # a read-only mount, a full disk: the user's to fix, in one line
        logging.getLogger("slimbench").debug("the I/O error's traceback", exc_info=True)  # -vv
        kept = ("; the cells finished so far are kept: --resume completes the run"
                if args.command in ("run", "demo") else "")
        print(f"slimbench: error: {os_error_line(e)}{kept}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("slimbench: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
