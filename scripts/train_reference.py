"""Train the embedded reference checkpoint (tokenizer + small GPT-2) from the embedded corpus.

    .venv/bin/python scripts/train_reference.py   # full build (~25 min on 2 idle cores)
    .venv/bin/python scripts/train_reference.py --steps 5 --out /tmp/ref   # smoke run

Deterministic: fixed seeds, fixed torch thread count, a fixed data order and single-process
training, so the same corpus, torch build and thread count give the same bytes (the model card
records the sha256). Writes an HF directory (config, safetensors, tokenizer) plus
``training_log.json``; ``scripts/write_model_card.py`` then evaluates it and writes the card.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer
from tqdm import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from slimbench.tasks.corpus import load_corpus

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "compress" / "reference" / "stdlib-gpt2-mini"
EOS = "<|endoftext|>"

# 2.6 M parameters (10.5 MB fp32, tied lm_head): at 25 CPU-minutes a smaller model that sees
# more tokens ends at a lower loss than a larger one that sees fewer.
MODEL = dict(vocab_size=4096, n_positions=256, n_embd=192, n_layer=4, n_head=6,
             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2,
                            special_tokens=[EOS], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=EOS,
                                   eos_token=EOS, unk_token=EOS, model_max_length=256)


def token_stream(tok: PreTrainedTokenizerFast, texts: list[str]) -> torch.Tensor:
    ids: list[int] = []
    for t in texts:
        ids.extend(tok(t)["input_ids"])
        ids.append(tok.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--steps", type=int, default=1050)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-files", type=int, help="train on the first N files only (smoke runs)")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    train = [r.text for r in load_corpus("train")][: args.max_files]
    t0 = time.time()
    tok = train_tokenizer(train, MODEL["vocab_size"])
    stream = token_stream(tok, train)
    seq = MODEL["n_positions"]
    cfg = GPT2Config(**MODEL, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    model = GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    log = []
    model.train()
    bar = tqdm(range(args.steps), desc="train reference", mininterval=5)
    for step in bar:
        starts = torch.randint(0, len(stream) - seq - 1, (args.batch,), generator=gen)
        batch = torch.stack([stream[s: s + seq] for s in starts.tolist()])  # (B, T)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, warmup=min(100, args.steps // 10 + 1))
        loss = model(input_ids=batch, labels=batch).loss
        if not torch.isfinite(loss):
            raise SystemExit(f"non-finite loss at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 20 == 0 or step == args.steps - 1:
            log.append({"step": step, "loss": round(loss.item(), 4)})
            bar.set_postfix(loss=f"{loss.item():.3f}")
    train_s = time.time() - t0

    args.out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(args.out, safe_serialization=True)
    tok.save_pretrained(args.out)
    meta = {"command": "python scripts/train_reference.py " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                if k != "out" and v is not None),
            "train_seconds": round(train_s, 1), "train_tokens": len(stream),
            "tokens_seen": args.steps * args.batch * seq, "seq_len": seq,
            "torch": torch.__version__, "threads": args.threads, "loss_curve": log}
    (args.out / "training_log.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps({k: v for k, v in meta.items() if k != "loss_curve"}))


if __name__ == "__main__":
    main()
