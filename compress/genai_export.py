"""``export_genai``: a torch model as an ONNX Runtime GenAI model, built by GenAI's own model
builder (``onnxruntime_genai.models.builder``): its fused graph (GroupQueryAttention, the
KV cache GenAI manages) with float32 weights or int4 / int8 weight-only MatMulNBits.

The parent is saved as a Hugging Face folder first (a shape or a pruned model has none; a
model without a tokenizer gets placeholder token strings, which the builder needs) and built
from there in a child process: the builder prints its progress and keeps module state, and
a failure is reported with its last lines. The audit counts the graph's weight MatMuls per
kind from ``model.onnx``; the parity compares GenAI's logits with the torch parent's.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from slimbench.compress.arch import arch_of
from slimbench.compress.genai_model import (
    DISTRIBUTIONS,
    GENAI_ONNX,
    GenaiModel,
    genai_logits_fn,
    import_genai,
)
from slimbench.compress.loader import LoadedModel
from slimbench.compress.manifest import StepReport
from slimbench.compress.parity import parity, reference_prompts, torch_logits_fn
from slimbench.compress.placeholder_tokenizer import placeholder_tokenizer
from slimbench.compress.step_io import save_model
from slimbench.compress.steps import register_step
from slimbench.errors import CompressionError, UsageError
from slimbench.schema.codec import Typed

# the families of slimbench's (compress/arch.py) that GenAI's builder builds
FAMILIES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
PRECISIONS = ("fp32", "int8", "int4")
BLOCK_SIZES = (16, 32, 64, 128, 256)  # the builder's MatMulNBits block sizes
FP32_LOGIT_BOUND = 1e-3  # float32 against float32: kernel order only
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclasses.dataclass(frozen=True)
class ExportGenaiConfig:
    """Args:
        precision: fp32, or int4 / int8 weight-only (MatMulNBits, per block of the input
            dimension; the embedding too).
        block_size: the quantization block (int4 / int8).
        accuracy_level: MatMulNBits' compute type (0: the weights' type upcast to float32;
            4: int8 activations, the builder's recommendation for CPU).
    """

    precision: str = "fp32"
    block_size: int = 32
    accuracy_level: int = 4

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got "
                             f"{self.precision!r}")
        if self.block_size not in BLOCK_SIZES:
            raise UsageError(f"block_size must be one of {', '.join(map(str, BLOCK_SIZES))}, "
                             f"got {self.block_size!r}")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise UsageError(f"accuracy_level must be 0 to 4, got {self.accuracy_level!r}")


@dataclasses.dataclass(frozen=True)
class GenaiGraphAudit(Typed):
    """What the builder's graph computes its weights with, counted from ``model.onnx``.

    Attributes:
        float_matmuls: MatMul nodes with a weight initializer (float weights).
        nbits_matmuls: MatMulNBits nodes (weight-only quantized), per bit width.
        block_sizes: their block sizes.
        quantized_embeddings: GatherBlockQuantized nodes (a quantized embedding table).
        attention: GroupQueryAttention nodes (GenAI's fused attention with its KV cache).
    """

    float_matmuls: int
    nbits_matmuls: dict[str, int]
    block_sizes: list[int]
    quantized_embeddings: int
    attention: int


def audit_graph(path: Path) -> GenaiGraphAudit:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    nbits: collections.Counter = collections.Counter()
    blocks, ops = set(), collections.Counter(n.op_type for n in graph.node)
    for node in graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            nbits[f"int{attrs['bits']}"] += 1
            blocks.add(int(attrs["block_size"]))
    float_matmuls = sum(1 for n in graph.node if n.op_type == "MatMul"
                        and any(i in weights for i in n.input))
    return GenaiGraphAudit(float_matmuls=float_matmuls, nbits_matmuls=dict(nbits),
                           block_sizes=sorted(blocks),
                           quantized_embeddings=ops["GatherBlockQuantized"],
                           attention=ops["GroupQueryAttention"])


def build(parent: LoadedModel, out: Path, config: ExportGenaiConfig) -> None:
    """Write GenAI's model of ``parent`` into ``out`` with its builder (a child process)."""
    import_genai()  # one line naming the extra, before any work
    with tempfile.TemporaryDirectory(prefix="slimbench-genai-") as tmp:
        src, cache = Path(tmp) / "hf", Path(tmp) / "cache"
        save_model(parent.model, parent.tokenizer or placeholder_tokenizer(parent.model.config),
                   src)
        # the builder picks its architecture by this name, which a shape may lack
        hf = json.loads((src / "config.json").read_text())
        hf["architectures"] = [FAMILIES[parent.model.config.model_type]]
        (src / "config.json").write_text(json.dumps(hf))
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(src),
               "-o", str(out), "-p", config.precision, "-e", "cpu", "-c", str(cache)]
        if config.precision != "fp32":
            cmd += ["--extra_options", f"block_size={config.block_size}",
                    f"accuracy_level={config.accuracy_level}"]
        run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0 or not (out / GENAI_ONNX).is_file():
        tail = " | ".join((run.stderr or run.stdout).strip().splitlines()[-3:])
        raise CompressionError(f"ONNX Runtime GenAI's builder failed: {tail}")


@register_step("export_genai", ExportGenaiConfig, produces="genai", libraries=DISTRIBUTIONS,
               help="ONNX Runtime GenAI model of a torch model (its builder): int4 / int8 / "
                    "fp32 weights")
def _apply_export_genai(parent: LoadedModel, config: ExportGenaiConfig,
                        out: Path) -> StepReport:
    from slimbench.compress.loader import count_parameters

    arch_of(parent.model, "export_genai")
    model_type = parent.model.config.model_type
    if model_type not in FAMILIES:
        raise UsageError(f"export_genai builds {', '.join(FAMILIES)} models; ONNX Runtime "
                         f"GenAI's builder has no {model_type} architecture")
    build(parent, out, config)
    for name in TOKENIZER_FILES:  # the parent's own tokenizer, or none (placeholders)
        (out / name).unlink(missing_ok=True)
    if parent.tokenizer is not None:
        parent.tokenizer.save_pretrained(out)
    parent.model.config.save_pretrained(out)  # config.json beside GenAI's genai_config.json
    audit = audit_graph(out / GENAI_ONNX)
    if audit.attention == 0:
        raise CompressionError("GenAI's builder wrote a graph without GroupQueryAttention")
    if config.precision != "fp32" and (
            audit.float_matmuls or list(audit.nbits_matmuls) != [config.precision]
            or audit.block_sizes != [config.block_size]):
        raise CompressionError(f"GenAI's builder left {audit.float_matmuls} float weight "
                               f"MatMuls under {config.precision} (quantized: "
                               f"{audit.nbits_matmuls}, blocks {audit.block_sizes})")
    child = GenaiModel(out, parent.model.config)
    prompts = reference_prompts(parent.tokenizer, parent.model.config.vocab_size)
    params, nonzero = count_parameters(parent.model)
    match = parity(torch_logits_fn(parent.model), genai_logits_fn(child), prompts)
    if config.precision == "fp32" and match.max_abs_logit_diff > FP32_LOGIT_BOUND:
        raise CompressionError(f"GenAI's float32 model differs from its parent by "
                               f"{match.max_abs_logit_diff:.3g} in the logits (bound "
                               f"{FP32_LOGIT_BOUND}): the builder misread this model")
    weights = "float32" if config.precision == "fp32" else (
        f"{config.precision} (MatMulNBits, block {config.block_size})")
    return StepReport(
        format="genai", parameters=params, nonzero_parameters=nonzero,
        dtypes={"weights": weights, "activations": "float32", "kv_cache": "float32"},
        quantization=audit, parity=match)
