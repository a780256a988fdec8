"""The gate's paired verdicts: quality tested on the same examples (significance or
non-inferiority), latency and memory compared only between matching environments, and
quality across a kernel-relevant ISA change marked so."""

import json
import math

import pytest

from slimbench.bench.cli import main
from slimbench.errors import UsageError
from slimbench.reports.evidence import load_evidence
from slimbench.reports.gate import compare, load_policy
from slimbench.reports.table import load_rows

REFS = [f"return the value of item {w} from the table" for w in
        ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
         "lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon")]


def _env(vnni: bool = False, threads: int = 2) -> dict:
    flags = {"avx2": True, "avx512f": vnni, "avx512_vnni": vnni}
    return {"cpu": {"model": "AMD EPYC", "flags": flags}, "torch_threads": threads,
            "packages": {"torch": "2.13.0", "onnxruntime-gpu": "1.31.1"}, "gpu": None}


def _rouge_task(predictions):
    from slimbench.tasks.scorers import METRICS

    rows = METRICS["rouge1"].stats(predictions, REFS)
    value = float(rows.mean())
    examples = [{"task": "summary", "id": f"ex{i}", "prediction": p, "reference": r,
                 "scores": {"rouge1": float(rows[i, 0])}}
                for i, (p, r) in enumerate(zip(predictions, REFS, strict=True))]
    spec = {"kind": "generate", "metric_list": [{"metric": "rouge1", "higher_is_better": True,
                                                 "use_stemmer": True}]}
    return "summary", "rouge1", value, True, spec, examples


def _ppl_task(nll_per_token):
    tokens = [40 + 7 * i for i in range(30)]
    nll = [t * x for t, x in zip(tokens, nll_per_token, strict=True)]
    value = math.exp(sum(nll) / sum(tokens))
    examples = [{"task": "perplexity", "id": f"t{i}", "nll_nats": n, "tokens": t, "bytes": 4 * t}
                for i, (n, t) in enumerate(zip(nll, tokens, strict=True))]
    spec = {"kind": "perplexity", "metric_list": [{"metric": "perplexity",
                                                   "higher_is_better": False}]}
    return "perplexity", "perplexity", value, False, spec, examples


def _run(tmp_path, name, tasks=(), env=None, decode_ms=10.0):
    """A run directory with one ok cell (variant v, cpu), its examples, and results.json."""
    run = tmp_path / name
    (run / "cells").mkdir(parents=True)
    decode = {"name": "decode_ms_per_token", "unit": "ms", "higher_is_better": False,
              "median": decode_ms, "ci95": [decode_ms * 0.99, decode_ms * 1.01], "n": 10,
              "cv": 0.01}
    quality, lines = {}, []
    for task, metric, value, hib, spec, examples in tasks:
        quality[task] = {"task": task, "version": "1", "metric": metric, "value": value,
                         "ci95": None, "higher_is_better": hib, "n": len(examples),
                         "seconds": 1.0, "examples_file": "v--cpu.examples.jsonl",
                         "task_spec": spec,
                         "metrics": {metric: {"value": value, "ci95": None,
                                              "higher_is_better": hib}}}
        lines += [json.dumps(e) for e in examples]
    cell = {"schema_version": 1, "document": "cell",
            "cell": {"id": "v--cpu", "variant": "v", "model": "reference", "recipe": [],
                     "device": "cpu", "backend": "torch"},
            "status": "ok", "environment": env,
            "latency": {"config": {}, "scenarios": [{"scenario": "decode", "tag": "128",
                                                     "params": {}, "measurements": [decode]}]},
            "quality": quality}
    (run / "cells" / "v--cpu.json").write_text(json.dumps(cell))
    (run / "cells" / "v--cpu.examples.jsonl").write_text("\n".join(lines) + "\n")
    (run / "suite.json").write_text(json.dumps(
        {"name": "t", "variants": [{"name": "v", "model": "reference", "recipe": [],
                                    "quality": True}], "tasks": [t[0] for t in tasks]}))
    from slimbench.reports.output import write_tables

    write_tables(run)
    return run


def _gate(base, cand, policy=None):
    evidence = (load_evidence(base), load_evidence(cand))
    checks = compare(load_rows(base), load_rows(cand), policy or load_policy(None),
                     evidence=evidence)
    return {c.metric: c for c in checks}


def _swap_words(k: int) -> list[str]:
    """The references, with the last three words of the first ``k`` replaced (a loss on k
    examples, as int8 kernels of another CPU give)."""
    return [r.rsplit(" ", 3)[0] + " chair and lamp" if i < k else r
            for i, r in enumerate(REFS)]


def test_a_loss_on_two_examples_is_not_significant(tmp_path):
    base = _run(tmp_path, "b", [_rouge_task(REFS)], _env())
    cand = _run(tmp_path, "c", [_rouge_task(_swap_words(2))], _env())
    check = _gate(base, cand)["summary.rouge1"]
    # the point value fell by more than the 2% allowance...
    assert check.change < -0.02
    # ...but two changed examples of 20 are no demonstrated loss: the significance test
    # (the default for generation metrics) passes, and says what it could have detected
    assert check.status == "pass" and check.paired.test == "significance"
    lo, hi = check.paired.ci95
    assert lo < 0 <= hi
    assert "detects a loss of" in check.why


def test_a_loss_on_every_example_fails(tmp_path):
    base = _run(tmp_path, "b", [_rouge_task(REFS)], _env())
    cand = _run(tmp_path, "c", [_rouge_task(_swap_words(20))], _env())
    check = _gate(base, cand)["summary.rouge1"]
    assert check.status == "fail" and check.paired.ci95[1] < 0


def test_perplexity_is_held_non_inferior(tmp_path):
    base = _run(tmp_path, "b", [_ppl_task([3.0 + 0.1 * (i % 5) for i in range(30)])], _env())
    near = _run(tmp_path, "near", [_ppl_task([3.005 + 0.1 * (i % 5) for i in range(30)])], _env())
    far = _run(tmp_path, "far", [_ppl_task([3.05 + 0.1 * (i % 5) for i in range(30)])], _env())
    ok = _gate(base, near)["perplexity.perplexity"]
    assert ok.paired.test == "non_inferiority" and ok.status == "pass"
    assert ok.change == pytest.approx(math.exp(0.005) - 1, rel=1e-6)
    bad = _gate(base, far)["perplexity.perplexity"]  # +5.1% > the 2% allowance
    assert bad.status == "fail"
    # a policy may ask for the significance test instead: the loss is consistent, so it fails
    # there too; and a generous allowance passes it
    policy = tmp_path / "p.yaml"
    policy.write_text("metrics:\n  perplexity.perplexity: {relative: 0.06, test: significance}\n")
    check = _gate(base, far, load_policy(policy))["perplexity.perplexity"]
    assert check.paired.test == "significance" and check.status == "pass"


def test_latency_only_between_matching_environments(tmp_path):
    base = _run(tmp_path, "b", env=_env(), decode_ms=10.0)
    same = _run(tmp_path, "same", env=_env(), decode_ms=13.0)
    other_isa = _run(tmp_path, "isa", env=_env(vnni=True), decode_ms=13.0)
    other_threads = _run(tmp_path, "thr", env=_env(threads=4), decode_ms=13.0)
    unknown = _run(tmp_path, "unknown", env=None, decode_ms=13.0)
    metric = "decode_ms_per_token@128"
    assert _gate(base, same)[metric].status == "fail"  # +30%, intervals apart
    isa = _gate(base, other_isa)[metric]
    assert isa.status == "info" and "isa: +avx512_vnni" in isa.why \
        and "+avx512f" in isa.why
    assert "threads: 2 -> 4" in _gate(base, other_threads)[metric].why
    # a run that recorded no environment is compared as before (nothing to tell them apart)
    assert _gate(base, unknown)[metric].status == "fail"


def test_quality_across_an_isa_change_is_marked(tmp_path):
    base = _run(tmp_path, "b", [_rouge_task(REFS)], _env())
    cand = _run(tmp_path, "c", [_rouge_task(_swap_words(1))], _env(vnni=True))
    check = _gate(base, cand)["summary.rouge1"]
    assert check.status == "pass" and "[across isa: +avx512_vnni +avx512f]" in check.why


def test_results_file_with_cells_beside_it_is_paired(tmp_path):
    base = _run(tmp_path, "b", [_rouge_task(REFS)], _env())
    cand = _run(tmp_path, "c", [_rouge_task(_swap_words(2))], _env())
    assert load_evidence(base / "results.json")["v--cpu"].tasks["summary"].examples
    alone = tmp_path / "alone.json"  # a results file without its cells: point comparison
    alone.write_text((base / "results.json").read_text())
    ev = load_evidence(alone)
    assert ev["v--cpu"].fingerprint["isa"] == ["avx2"] and not ev["v--cpu"].tasks
    checks = {c.metric: c for c in compare(load_rows(alone), load_rows(cand),
                                              load_policy(None),
                                              evidence=(ev, load_evidence(cand)))}
    assert checks["summary.rouge1"].status == "fail" \
        and checks["summary.rouge1"].paired is None
    # through the CLI: paired from the run directories, exit 0
    assert main(["gate", "--baseline", str(base), "--candidate", str(cand)]) == 0


def test_examples_of_other_ids_fall_back_to_the_point_value(tmp_path):
    base = _run(tmp_path, "b", [_rouge_task(REFS)], _env())
    cand = _run(tmp_path, "c", [_rouge_task(_swap_words(2))], _env())
    path = cand / "cells" / "v--cpu.examples.jsonl"
    path.write_text(path.read_text().replace('"ex0"', '"other"'))
    check = _gate(base, cand)["summary.rouge1"]
    assert check.status == "fail" and "unpaired" in check.why


@pytest.mark.parametrize("rule, message", [
    ("{relative: 0.1, test: bogus}", "test must be one of significance, non_inferiority"),
    ("{relative: 0.1, absolute: 1}", "give one of relative / absolute / report"),
    ("{}", "give one of relative / absolute / report"),
])
def test_policy_test_is_checked(tmp_path, rule, message):
    policy = tmp_path / "p.yaml"
    policy.write_text(f"metrics:\n  summary.rouge1: {rule}\n")
    with pytest.raises(UsageError, match=message):
        load_policy(policy)


def test_a_test_alone_keeps_the_default_allowance(tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text("metrics:\n  summary.rouge1: {test: non_inferiority}\n")
    p = load_policy(policy)
    assert p.allowance("quality", "summary.rouge1") == ("relative", 0.02)
    assert p.test("summary.rouge1", "generate") == "non_inferiority"
    assert p.test("perplexity.perplexity", "perplexity") == "non_inferiority"
    assert p.test("other.bleu", "generate") == "significance"


def test_artifacts_at_hand(tmp_path):
    from slimbench.bench.orchestrate.remeasure import _scenario, artifact_at_hand

    run = tmp_path / "runs" / "r1"
    cache = tmp_path / "runs" / ".artifacts" / "abc123-export_onnx"
    cache.mkdir(parents=True)
    # a recipe-less variant measures its model spec; a built artifact is found where it was
    # or in the default cache beside the run, and only under its own content key
    assert artifact_at_hand("reference", "k", [], run) == "reference"
    assert artifact_at_hand("elsewhere/.artifacts/abc123-export_onnx", "abc123",
                            ["export_onnx"], run) == str(cache)
    assert artifact_at_hand("elsewhere/.artifacts/abc123-export_onnx", "zzz999",
                            ["export_onnx"], run) is None
    assert artifact_at_hand(None, None, [], run) is None
    latency = {"new_tokens": 16}
    assert _scenario("decode_ms_per_token@128", latency) == ("decode_ms_per_token", "decode",
                                                             128, 16)
    # a cell's row and a pair's metric are one name (a rate is judged as its inverse time)
    assert _scenario("tokens_per_s@64", latency) == ("tokens_per_s", "generate", 64, 16)
    assert _scenario("prefill_ms@128x4", latency) is None  # a batch sweep is not re-measured


@pytest.mark.slow  # two paired A/Bs of the reference, a few seconds each
def test_gate_remeasures_latency_paired(tmp_path, capsys):
    base = _run(tmp_path, "b", env=_env(), decode_ms=10.0)
    # the candidate's own figure is 3x slower, on another CPU: not comparable as it stands
    cand = _run(tmp_path, "c", env=_env(vnni=True), decode_ms=30.0)
    for run in (base, cand):
        path = run / "cells" / "v--cpu.json"
        cell = json.loads(path.read_text())
        cell["cell"] |= {"artifact": "reference", "content_key": "k"}
        path.write_text(json.dumps(cell))
    rc = main(["gate", "--baseline", str(base), "--candidate", str(cand), "--remeasure",
               "--max-seconds", "2"])
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "decode_ms_per_token@128" in line)
    # decided on the re-measurement of the two artifacts (the reference both times), not on
    # the runs' 10 vs 30 ms
    assert "paired re-measurement: time ratio" in row and "over " in row
    assert rc == (1 if row.startswith("| FAIL") else 0)
    # a cell whose artifact is gone is left as it was, saying why
    cell = json.loads((cand / "cells" / "v--cpu.json").read_text())
    cell["cell"] |= {"recipe": ["export_onnx"], "artifact": str(tmp_path / "gone")}
    (cand / "cells" / "v--cpu.json").write_text(json.dumps(cell))
    main(["gate", "--baseline", str(base), "--candidate", str(cand), "--remeasure",
          "--allow-different-suites"])
    row = next(line for line in capsys.readouterr().out.splitlines()
               if "decode_ms_per_token@128" in line)
    assert row.startswith("| INFO") and "not re-measured: the candidate artifact" in row


def test_fingerprint_of_a_real_and_of_a_malformed_environment():
    from slimbench.bench.measure.environment import capture
    from slimbench.fingerprint import differences, fingerprint, kernel_differences

    fp = fingerprint(capture())
    assert fp["threads"] >= 1 and "torch" in fp["packages"] and isinstance(fp["isa"], list)
    assert differences(fp, dict(fp)) == []
    # the environment record is untyped: odd shapes give what they can, never a traceback
    assert fingerprint({"cpu": "test cpu", "threads": 2}) == {
        "cpu": "test cpu", "isa": [], "threads": 2, "gpu": None, "packages": {}}
    assert fingerprint(None) is None and fingerprint("x") is None
    # amx_tile flipped, whichever way this CPU has it (Xeons with AMX run CI too)
    has_amx = "amx_tile" in fp["isa"]
    isa = [f for f in fp["isa"] if f != "amx_tile"] if has_amx else fp["isa"] + ["amx_tile"]
    other = fp | {"threads": fp["threads"] + 1, "isa": isa}
    assert kernel_differences(fp, other) == [f"isa: {'-' if has_amx else '+'}amx_tile"]
    assert f"threads: {fp['threads']} -> {fp['threads'] + 1}" in differences(fp, other)


def test_an_engines_own_libraries_are_held_for_its_cells_only():
    """An OpenVINO cell's fingerprint holds the openvino and nncf versions (another version
    is a kernel difference); a torch cell's does not, so a baseline made before an engine was
    installed or upgraded stays comparable for the torch and ONNX Runtime cells."""
    from slimbench.fingerprint import fingerprint, kernel_differences

    env = {"cpu": {"model": "c"}, "packages": {"torch": "2.13.0", "openvino": "2025.4.0",
                                               "nncf": "2.19.0", "ctranslate2": "4.8.5"}}
    newer = env | {"packages": env["packages"] | {"openvino": "2026.0.0"}}
    assert set(fingerprint(env, "openvino")["packages"]) == {"torch", "openvino", "nncf"}
    assert set(fingerprint(env, "ctranslate2")["packages"]) == {"torch", "ctranslate2"}
    assert set(fingerprint(env, "torch")["packages"]) == {"torch"}
    assert kernel_differences(fingerprint(env, "openvino"), fingerprint(newer, "openvino")) \
        == ["openvino: 2025.4.0 -> 2026.0.0"]
    assert kernel_differences(fingerprint(env, "torch"), fingerprint(newer, "torch")) == []


def test_identical_outputs_say_so(tmp_path):
    base = _run(tmp_path, "b", [_rouge_task(REFS)], _env())
    same = _run(tmp_path, "same", [_rouge_task(REFS)], _env())
    check = _gate(base, same)["summary.rouge1"]
    assert check.status == "pass" and check.why == \
        "rouge1: identical on all 20 paired examples"
