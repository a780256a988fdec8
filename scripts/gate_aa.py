r"""A/A and power check of the paired latency comparison (``slimbench compare``).

A/A: ``paired_compare(X, X)`` N times per configuration. Nothing changed, so every
``slower`` (or ``faster``) verdict is a false one: the count must be 0, and the intervals'
half-widths and the seconds each comparison took say what precision the machine allows.
Power: ``paired_compare(X, X, slowdown=0.10)`` N times on gpt2 torch decode (the candidate
busy-waits 10% of each decode step's time inside the timed region: a real 10% slowdown);
``slower`` should come out at least 19 times in 20.

    python scripts/gate_aa.py --out runs/aa/aa.json --runs 20
    python scripts/gate_aa.py --out runs/aa/aa.json --runs 20     # resumes where it stopped

Every comparison is appended to ``<out>.jsonl`` as it finishes, so an interrupted run
resumes with the next one; ``<out>`` gets the table's numbers and every record. Runs are
interleaved across configurations (run 0 of each, then run 1 of each, ...) so that the host's
state over the hour spreads over all of them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from slimbench import atomic
from slimbench.bench.measure.paired import PairedConfig, half_width, paired_compare
from slimbench.errors import SlimbenchError
from slimbench.log import setup_logging

EXPORT_INT8 = (("export_onnx", {}), ("ort_dynamic_int8", {}))
# name -> (model, recipe that builds the artifact compared with itself, scenario)
CONFIGS = {
    "gpt2-torch-decode": ("shape:gpt2", (), "decode"),
    "gpt2-ort-int8-decode": ("shape:gpt2", EXPORT_INT8, "decode"),
    "reference-prefill": ("reference", (), "prefill"),
}
POWER = "gpt2-torch-decode"


def artifact(name: str, cache_dir: Path) -> str:
    """The spec of configuration ``name``'s model, building its artifact once (cached by
    content, so a resumed run reuses it)."""
    model, recipe, _ = CONFIGS[name]
    if not recipe:
        return model
    from slimbench.compress.cache import ArtifactCache

    return ArtifactCache(cache_dir, say=lambda m: print(m, flush=True)).build(
        model, [(step, dict(params)) for step, params in recipe], name)


def record(kind: str, name: str, run: int, spec: str, settings: dict, result,
           wall: float, load: tuple) -> dict:
    """One comparison as a plain JSON line."""
    plain = result.to_dict()
    return {"kind": kind, "config": name, "run": run, "spec": spec, "settings": settings,
            "verdict": result.verdict, "why": result.why, "ratio": result.ratio,
            "ci95": list(result.ci95), "half_width": half_width(result.ratio, result.ci95),
            "pairs": result.pairs, "seconds": result.seconds,
            "setup_seconds": result.setup_seconds, "wall_seconds": wall,
            "load_average_1m": load, **{k: plain[k] for k in (
                "host", "warnings", "by_order", "calibration", "trials")}}


def summary(records: list[dict]) -> list[dict]:
    """Per (kind, config): verdict counts, interval half-widths and seconds."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["kind"], r["config"]), []).append(r)
    rows = []
    for (kind, name), rs in sorted(groups.items()):
        hw = [r["half_width"] for r in rs]
        secs = [r["seconds"] for r in rs]
        rows.append({
            "kind": kind, "config": name, "n": len(rs),
            **{v: sum(r["verdict"] == v for r in rs) for v in ("slower", "no change", "faster")},
            "half_width_max": max(hw), "half_width_median": statistics.median(hw),
            "seconds_max": max(secs), "seconds_median": statistics.median(secs),
            "wall_seconds_median": statistics.median(r["wall_seconds"] for r in rs),
            "pairs_median": statistics.median(r["pairs"] for r in rs),
            "ratio_median": statistics.median(r["ratio"] for r in rs),
            "ratio_min": min(r["ratio"] for r in rs), "ratio_max": max(r["ratio"] for r in rs)})
    return rows


def table(rows: list[dict]) -> str:
    head = (f"{'kind':<6} {'config':<22} {'n':>3} {'slower':>6} {'no chg':>6} {'faster':>6} "
            f"{'±CI max':>8} {'±CI med':>8} {'s max':>6} {'s med':>6} {'pairs':>6} "
            f"{'ratio med [min, max]':>24}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['kind']:<6} {r['config']:<22} {r['n']:>3} {r['slower']:>6} "
            f"{r['no change']:>6} {r['faster']:>6} {r['half_width_max']:>8.1%} "
            f"{r['half_width_median']:>8.1%} {r['seconds_max']:>6.0f} "
            f"{r['seconds_median']:>6.0f} {r['pairs_median']:>6.0f} "
            f"{r['ratio_median']:>8.3f} [{r['ratio_min']:.3f}, {r['ratio_max']:.3f}]")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True,
                    help="summary JSON; comparisons are appended to <out>.jsonl as they end")
    ap.add_argument("--runs", type=int, default=20, help="A/A comparisons per configuration")
    ap.add_argument("--power-runs", type=int, help="power comparisons (default: --runs)")
    ap.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS),
                    help="configurations to check (default: all)")
    ap.add_argument("--slowdown", type=float, default=0.10,
                    help="injected slowdown of the power check (default 0.10)")
    ap.add_argument("--threads", type=int, help="threads per worker (default: all cores)")
    ap.add_argument("--min-seconds", type=float, default=PairedConfig.min_seconds)
    ap.add_argument("--max-seconds", type=float, default=PairedConfig.max_seconds)
    ap.add_argument("--trial-seconds", type=float, default=PairedConfig.trial_seconds)
    ap.add_argument("--precision", type=float, default=PairedConfig.precision,
                    help="stop once the interval is within +-this (default %(default)s)")
    ap.add_argument("--cache", type=Path,
                    help="artifact cache (default: .artifacts beside --out)")
    args = ap.parse_args()
    setup_logging(0)
    power_runs = args.runs if args.power_runs is None else args.power_runs
    if args.runs < 0 or power_runs < 0:
        ap.error("--runs and --power-runs must be >= 0")
    settings = {"threads": args.threads, "min_seconds": args.min_seconds,
                "max_seconds": args.max_seconds, "trial_seconds": args.trial_seconds,
                "precision": args.precision}
    try:  # every value checked before any work
        configs = {name: PairedConfig(scenario=CONFIGS[name][2], threads=args.threads,
                                      min_seconds=args.min_seconds,
                                      max_seconds=args.max_seconds,
                                      trial_seconds=args.trial_seconds,
                                      precision=args.precision)
                   for name in CONFIGS}
    except SlimbenchError as e:
        ap.error(str(e))
    log_path = args.out.with_suffix(".jsonl")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    done = []
    if log_path.is_file():
        done = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
        if any(r["settings"] != settings for r in done):
            ap.error(f"{log_path} holds comparisons made with other settings; use another --out")
    have = {(r["kind"], r["config"], r["run"]) for r in done}
    cache = args.cache or args.out.parent / ".artifacts"
    specs = {}
    plan = [("aa", name, i) for i in range(args.runs) for name in args.configs]
    plan += [("power", POWER, i) for i in range(power_runs)]
    # interleave the power runs with the A/A ones: each block of runs sees the same host
    plan.sort(key=lambda p: (p[2], p[0] == "power"))
    for kind, name, i in plan:
        if (kind, name, i) in have:
            continue
        if name not in specs:
            specs[name] = artifact(name, cache)
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        result = paired_compare(specs[name], specs[name],
                                PairedConfig(**(configs[name].to_dict() | {"seed": i})),
                                slowdown=args.slowdown if kind == "power" else 0.0)
        rec = record(kind, name, i, specs[name], settings, result,
                     time.perf_counter() - t0, (load, os.getloadavg()[0]))
        with log_path.open("a") as f:  # one line per comparison: an interrupted run resumes
            f.write(json.dumps(rec) + "\n")
        done.append(rec)
        print(f"{kind:<5} {name:<22} run {i:>2}: {rec['verdict']:<9} ratio "
              f"{rec['ratio']:.3f} [{rec['ci95'][0]:.3f}, {rec['ci95'][1]:.3f}] "
              f"±{rec['half_width']:.1%}, {rec['pairs']} pairs in {rec['seconds']:.0f} s, "
              f"load {load:.1f}", flush=True)
    rows = summary(done)
    print(table(rows))
    aa_slower = sum(r["slower"] for r in rows if r["kind"] == "aa")
    power = next((r for r in rows if r["kind"] == "power"), None)
    if power:
        print(f"power: {power['slower']}/{power['n']} slower at an injected "
              f"{args.slowdown:.0%} slowdown (target >= 95%)")
    print(f"A/A: {aa_slower} false 'slower' verdicts")
    from slimbench.bench.measure.environment import cpu_info

    atomic.write_json(args.out, {"settings": settings, "slowdown": args.slowdown,
                                 "cpu": cpu_info().to_dict(), "summary": rows, "comparisons": done})
    print(f"wrote {args.out} ({log_path} holds each comparison)")
    sys.exit(1 if aa_slower else 0)


if __name__ == "__main__":
    main()
