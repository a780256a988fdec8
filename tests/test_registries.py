"""The registries: lazy entries, mapping reads, the plugin entry point, and what reads them
(``slimbench ls``, ``ort_optimize``'s model type, the tiny family configs)."""

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from slimbench.compress import arch
from slimbench.compress.arch import ARCHS, tiny_config, tiny_model_types
from slimbench.errors import UsageError
from slimbench.registry import Plugins, Registry, UnknownName
from slimbench.tasks.scorers import CHOICE_METRICS, METRICS, PERPLEXITY_METRICS


def test_lazy_entry_is_listed_without_import_and_resolved_on_lookup():
    reg = Registry("widget")
    reg.add_lazy("dec", "decimal:Decimal", "exact decimals")
    reg.add("int", int)
    sys.modules.pop("decimal", None)
    assert reg.names() == ["dec", "int"] and "dec" in reg and len(reg) == 2
    assert reg.describe("dec") == "exact decimals"
    assert "decimal" not in sys.modules  # listed, described, tested: nothing imported
    import decimal

    assert reg.get("dec") is decimal.Decimal and reg["dec"] is decimal.Decimal
    assert dict(reg.items()) == {"dec": decimal.Decimal, "int": int}
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("dec", object())
    with pytest.raises(ValueError, match="must look like 'package.module:attribute'"):
        reg.add_lazy("bad", "no_colon")


def test_lazy_entry_that_cannot_load_names_itself():
    reg = Registry("backend")
    reg.add_lazy("ghost", "slimbench_no_such_module:Runtime")
    with pytest.raises(UsageError, match="backend 'ghost' cannot be loaded from "
                                         "'slimbench_no_such_module:Runtime'"):
        reg.get("ghost")


def test_unknown_name_is_a_usage_error_and_a_key_error():
    reg = Registry("widget")
    reg.add("magnitude", object())
    for lookup in (reg.get, reg.__getitem__):
        with pytest.raises(UnknownName) as e:
            lookup("magnitud")
        assert isinstance(e.value, UsageError) and isinstance(e.value, KeyError)
        assert str(e.value) == ("unknown widget 'magnitud'; did you mean 'magnitude'? "
                                "(known: magnitude)")
    assert reg.get("nope", None) is None and "nope" not in reg and ["x"] not in reg


def test_loader_runs_once_before_the_first_read_and_again_after_a_failure():
    calls = []

    def loader():
        calls.append(1)
        assert reg.names() == ["early"]  # a read while loading sees what is there: no recursion
        if len(calls) == 1:
            raise RuntimeError("first load fails")
        reg.add("late", 1)

    reg = Registry("widget", loader=loader)
    reg.add("early", 0)  # registration never loads
    assert calls == []
    with pytest.raises(RuntimeError):
        reg.names()
    assert reg.names() == ["early", "late"] and reg["late"] == 1
    reg.names()
    assert len(calls) == 2


def test_metrics_read_like_dicts():
    assert METRICS["bleu"] is METRICS.get("bleu") and "rougeL" in METRICS
    assert set(METRICS) == {"f1", "squad_f1", "exact_match", "macro_f1", "bleu", "rouge1",
                            "rouge2", "rougeL"}
    assert set(PERPLEXITY_METRICS) == {"perplexity", "bits_per_byte"}
    assert set(dict(CHOICE_METRICS.items())) == {"acc", "acc_norm", "macro_f1"}
    assert all(METRICS.describe(n) for n in METRICS)
    with pytest.raises(KeyError, match="unknown metric 'blue'; did you mean 'bleu'"):
        METRICS["blue"]


def test_listing_backends_and_families_imports_no_backend():
    code = ("import json, sys; from slimbench.bench.runtimes import RUNTIMES; "
            "names = RUNTIMES.names(); helps = [RUNTIMES.describe(n) for n in names]; "
            "print(json.dumps({'names': names, 'helps': helps, 'loaded': sorted(m for m in "
            "('onnxruntime', 'openvino', 'ctranslate2', 'onnxruntime_genai', "
            "'slimbench.bench.runtimes.ort_runtime', 'slimbench.bench.runtimes.ov_runtime', "
            "'slimbench.bench.runtimes.ct2_runtime', 'slimbench.bench.runtimes.genai_runtime', "
            "'slimbench.bench.runtimes.torch_runtime') if m in sys.modules)}))")
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                    text=True, check=True).stdout)
    assert out["names"] == ["ctranslate2", "genai", "onnxruntime", "openvino", "torch"]
    assert all(out["helps"])
    assert out["loaded"] == []


def test_builtin_runtimes_resolve_to_their_classes():
    from slimbench.bench.runtimes import RUNTIMES, OrtRuntime, TorchRuntime

    assert RUNTIMES["torch"] is TorchRuntime and RUNTIMES["onnxruntime"] is OrtRuntime
    assert {cls.backend for cls in RUNTIMES.values()} == set(RUNTIMES)


def test_every_family_declares_its_ort_model_type():
    from slimbench.compress.ort_optimize import optimizer_model_type

    got = {t: optimizer_model_type(tiny_config(t)) for t in tiny_model_types()}
    assert got == {"gpt2": "gpt2", "llama": "qwen3", "qwen2": "qwen3", "gpt_neox": "gpt_neox",
                   "opt": "bert"}


def test_ort_optimize_refuses_an_unknown_family_clearly(monkeypatch):
    from transformers import AutoConfig

    from slimbench.compress.ort_optimize import optimizer_model_type

    bloom = AutoConfig.for_model("bloom")
    with pytest.raises(UsageError, match=r"ort_optimize: model type 'bloom' is not an "
                                         r"architecture slimbench knows; known families"):
        optimizer_model_type(bloom)
    # a family registered without an optimizer model type: one line, not a KeyError
    reg = Registry("architecture family")
    for name, a in ARCHS.items():
        reg.add(name, a)
    import dataclasses

    reg.add("bloom", dataclasses.replace(ARCHS["opt"], family="bloom", model_types=("bloom",),
                                         ort_model_type=None))
    monkeypatch.setattr(arch, "ARCHS", reg)
    with pytest.raises(UsageError, match=r"ort_optimize: family 'bloom' declares no ONNX "
                                         r"Runtime optimizer model type .*families that do: "
                                         r"gpt2, gpt_neox, llama, opt"):
        optimizer_model_type(bloom)


def test_tiny_configs_are_defined_once_per_model_type():
    assert set(tiny_model_types()) == {"gpt2", "llama", "qwen2", "gpt_neox", "opt"}
    cfg = tiny_config("qwen2", num_hidden_layers=3)
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size,
            cfg.num_key_value_heads) == ("qwen2", 3, 64, 2)
    assert arch.arch_of(tiny_config("qwen2")).family == "llama"
    with pytest.raises(UsageError, match="unknown tiny model type 'qwen'; did you mean"):
        tiny_config("qwen")


def test_family_matrix_uses_the_shared_tiny_configs():
    from pathlib import Path

    text = (Path(__file__).parents[1] / "scripts" / "family_matrix.py").read_text()
    assert "tiny_config(family)" in text and "num_attention_heads" not in text


def test_a_broken_plugin_is_reported_once_by_name(tmp_path, monkeypatch, caplog):
    _write_dist(tmp_path, "slimbench.test_broken", {"oops": "slimbench_oops_plugin"})
    (tmp_path / "slimbench_oops_plugin.py").write_text("raise RuntimeError('no weights here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins = Plugins("slimbench.test_broken")
    with caplog.at_level(logging.WARNING, logger="slimbench.registry"):
        plugins.load()
        plugins.load()  # loaded once: one warning
    message = ("slimbench plugin 'oops' (slimbench_oops_plugin) failed to load: "
               "RuntimeError: no weights here")
    assert [r.getMessage() for r in caplog.records] == [message]
    assert plugins.failed == {"oops": message} and plugins.note() == f"; {message}"


PLUGIN = '''\
"""A plugin package's module: registers a metric and a step when imported."""
import dataclasses

import numpy as np

from slimbench.compress.step_io import save_model
from slimbench.compress.steps import register_step
from slimbench.tasks.scorers import METRICS, Scorer


def _stats(preds, refs):
    return np.asarray([[len(p) / max(len(r), 1)] for p, r in zip(preds, refs)], dtype=float)


METRICS.add("length_ratio", Scorer(_stats, lambda rows: float(rows[:, 0].mean())),
            "plugin: prediction length over reference length")


@dataclasses.dataclass(frozen=True)
class CopyConfig:
    pass


@register_step("plugin_copy", CopyConfig)
def _copy(parent, config, out):
    """plugin: copy the parent unchanged."""
    save_model(parent.model, parent.tokenizer, out)
    return {"format": "hf"}
'''


def _write_dist(root, group: str, entries: dict) -> None:
    """A distribution's metadata on ``root`` (no install): ``importlib.metadata`` reads it."""
    dist = root / "slimbench_toy_plugin-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: slimbench-toy-plugin\n"
                                   "Version: 0.1\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entries.items())
    with (dist / "entry_points.txt").open("a") as f:
        f.write(f"[{group}]\n{lines}\n")


def test_plugin_entry_point_adds_a_metric_and_a_step(tmp_path):
    _write_dist(tmp_path, "slimbench.plugins", {"toy": "slimbench_toy_plugin",
                                                "broken": "slimbench_broken_plugin:register"})
    (tmp_path / "slimbench_toy_plugin.py").write_text(PLUGIN)
    (tmp_path / "slimbench_broken_plugin.py").write_text(
        "def register():\n    raise ImportError('needs the moon')\n")
    code = textwrap.dedent("""
        import json
        from slimbench.bench.cli import main
        from slimbench.errors import UsageError
        assert main(['ls', 'metrics']) == 0 and main(['ls', 'steps']) == 0
        from slimbench.tasks.scorers import METRICS, compute
        from slimbench.compress.steps import STEPS
        try:
            METRICS['nope']
        except UsageError as e:
            unknown = str(e)
        print(json.dumps({'value': compute('length_ratio', ['ab', 'abcd'], ['abcd', 'ab']),
                          'step': STEPS.describe('plugin_copy'), 'unknown': unknown}))
    """)
    env = os.environ | {"PYTHONPATH": os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out, result = proc.stdout.splitlines(), json.loads(proc.stdout.splitlines()[-1])
    assert any(line.startswith("  length_ratio ") and "plugin: prediction length" in line
               for line in out)
    assert "  plugin_copy          plugin: copy the parent unchanged." in out
    assert "  torch_dynamic_int8 " in proc.stdout  # the built-in steps are still there
    assert result["value"] == pytest.approx(1.25) and result["step"].startswith("plugin:")
    # the broken plugin: one warning naming it; the others keep working; an unknown name
    # says which plugin failed (it may have been the one to define it)
    broken = ("slimbench plugin 'broken' (slimbench_broken_plugin:register) failed to load: "
              "ImportError: needs the moon")
    assert proc.stderr.count(broken) == 1, proc.stderr
    assert result["unknown"].startswith("unknown metric 'nope'")
    assert result["unknown"].endswith(broken)
