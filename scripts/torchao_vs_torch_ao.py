"""Torch int8 / int4 paths side by side on CPU: what ``torch_dynamic_int8`` uses (``torch.ao``
dynamic int8, deprecated) against torchao's int8 and int4 configs, eager and under
``torch.compile``, in one process with rounds interleaved, so host drift cancels in the ratios.

    python scripts/torchao_vs_torch_ao.py [--model shape:gpt2] [--threads 2] [--rounds 5]
        [--prompt 128] [--new 32] [--no-compile] [--only int4 ...]

torchao is not a dependency of slimbench (``pip install torchao`` beside it to run this).
Prints per variant its median decode ms/token (KV-cached, batch 1), its median per-round ratio
to torch.ao dynamic int8 with the range over rounds, and the next-token agreement of its greedy
tokens with fp32 over the decoded steps. A variant that fails to build or compile is listed
with the reason.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch


def decode_ms(model, ids: torch.Tensor, new: int) -> tuple[float, list[int]]:
    """Prefill ``ids``, then ``new`` greedy single-token steps with the KV cache: ms per step
    and the tokens."""
    from transformers import DynamicCache

    with torch.inference_mode():
        cache = DynamicCache()
        out = model(ids, past_key_values=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        tokens, t0 = [], time.perf_counter()
        for _ in range(new):
            out = model(token, past_key_values=out.past_key_values, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
            tokens.append(int(token))
        return (time.perf_counter() - t0) * 1000 / new, tokens


def variants(base, compile_too: bool) -> dict:
    """Name -> a builder of that variant from a copy of ``base``."""
    from torchao.prototype.quantization.int4.inference_workflow import (
        Int8DynamicActivationInt4WeightConfig,
        PrototypeInt4WeightOnlyConfig,
    )
    from torchao.quantization import (
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        quantize_,
    )

    from slimbench.compress.conv1d import normalize_conv1d
    from slimbench.compress.quant_torch import TorchDynamicInt8Config, quantize_dynamic_int8

    def ao(config):
        def build():
            m = copy.deepcopy(base)
            normalize_conv1d(m)
            head = m.get_output_embeddings()
            quantize_(m, config, filter_fn=lambda mod, fqn: isinstance(mod, torch.nn.Linear)
                      and mod is not head)
            return m
        return build

    out = {"fp32": lambda: copy.deepcopy(base),
           "torch.ao dynamic int8": lambda: quantize_dynamic_int8(copy.deepcopy(base),
                                                                  TorchDynamicInt8Config()),
           "torchao int8 dyn-act int8 weight": ao(Int8DynamicActivationInt8WeightConfig()),
           "torchao int8 weight-only": ao(Int8WeightOnlyConfig()),
           # torchao's CPU int4 kernels are in its prototype namespace (0.18)
           "torchao int4 weight-only g128": ao(PrototypeInt4WeightOnlyConfig(group_size=128)),
           "torchao int8 dyn-act int4 weight g32": ao(
               Int8DynamicActivationInt4WeightConfig(group_size=32))}
    if compile_too:
        for name in [n for n in out if n.startswith("torchao")]:
            out[f"{name} + compile"] = (lambda b: lambda: torch.compile(b(), dynamic=True))(
                out[name])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shape:gpt2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--only", nargs="*", default=(),
                    help="variants whose name holds one of these (fp32 and torch.ao always run)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    from slimbench.bench.measure.environment import cpu_info
    from slimbench.compress.loader import load_artifact

    base = load_artifact(args.model).model.eval()
    ids = torch.randint(0, base.config.vocab_size, (1, args.prompt),
                        generator=torch.Generator().manual_seed(0))
    models, failed = {}, {}
    for name, build in variants(base, not args.no_compile).items():
        if args.only and name not in ("fp32", "torch.ao dynamic int8") and not any(
                o in name for o in args.only):
            continue
        try:
            models[name] = build()
            decode_ms(models[name], ids, 4)  # warm-up (and compilation)
        except Exception as e:  # noqa: BLE001 - a variant that cannot run is a finding
            failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
            models.pop(name, None)
    times = {n: [] for n in models}
    tokens = {}
    for _ in range(args.rounds):  # interleaved: every variant once per round
        for name, model in models.items():
            ms, toks = decode_ms(model, ids, args.new)
            times[name].append(ms)
            tokens[name] = toks
    cpu = cpu_info()
    flags = [f for f, on in (cpu.flags or {}).items() if on]
    print(f"{args.model}, {args.threads} threads, prompt {args.prompt}, {args.new} decode "
          f"steps x {args.rounds} rounds; CPU {cpu.model} ({', '.join(flags)}); "
          f"torch {torch.__version__}")
    ref = times.get("torch.ao dynamic int8")
    print(f"{'variant':48} {'ms/token':>9} {'vs torch.ao':>22} {'greedy = fp32':>14}")
    for name, t in times.items():
        ratios = [a / b for a, b in zip(t, ref, strict=True)] if ref else []
        same = sum(a == b for a, b in zip(tokens[name], tokens["fp32"], strict=True))
        ratio = (f"{statistics.median(ratios):.3f} [{min(ratios):.3f}, {max(ratios):.3f}]"
                 if ratios else "")
        print(f"{name:48} {statistics.median(t):9.2f} {ratio:>22} "
              f"{same:>7}/{len(tokens[name])}")
    for name, why in failed.items():
        print(f"{name:48} failed: {why}")


if __name__ == "__main__":
    main()
