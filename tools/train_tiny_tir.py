"""Train the built-in tiny TIR model (``builtin:tiny-tir``) on CPU from synthetic problems.

Steps, all reproducible from ``--seed``: generate training solutions with ``tools/synth_tir.py``;
train a byte-level BPE ``tokenizer.json`` on them (digits split one by one, so numbers are copied
digit by digit; the TIR markers are single tokens; Numina's chat template); train a small
LlamaForCausalLM (head_dim 32, as vLLM's CPU attention needs) with plain torch on the solutions only
(the problem and the sandbox's output blocks are context, not targets); save a Hugging Face folder
with float32 safetensors. ``--minutes`` caps the training time; the learning rate's cosine follows
the clock over that time, so a busy machine gives fewer steps, not a cut-off schedule.

    python tools/train_tiny_tir.py --out aimo_kernel/models/tiny-tir --minutes 26
    python tools/train_tiny_tir.py --out aimo_kernel/models/tiny-tir-tools --dialect chat-tools --minutes 26

``--dialect chat-tools`` writes the solutions as Qwen3-style tool calls and trains a tokenizer with a
ChatML template (``<|im_start|>``/``<|im_end|>`` special, ``<|im_end|>`` the EOS, the tool tags single
tokens); the prompt is the one :class:`ChatToolsDialect` builds, tool declaration included, checked
against the saved tokenizer's own chat template before training starts. That prompt opens with the same
~240 tokens in every example (the tool declaration), so its keys and values are computed once per batch
and shared by every row (:func:`loss_with_prefix`: the same attention, the same gradients, ~2.5× fewer
tokens a step), as a serving engine's prefix cache shares them.

Needs torch, transformers, tokenizers and safetensors (the CPU set-up has them all). Covers training
only; evaluation is ``aimo-kernel eval`` on a held-out set from ``tools/synth_tir.py --split heldout``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import synth_tir  # noqa: E402

from aimo_kernel.models import (  # noqa: E402
    CHATML_TOOLS_STYLE,
    NUMINA_STYLE,
    PAD,
    TokenizerStyle,
    train_bpe_tokenizer,
)
from aimo_kernel.solve.chat_tools import TOOL_TURN  # noqa: E402

ARCH = {
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 32,
    "max_position_embeddings": 2048,
}
STYLES: dict[str, TokenizerStyle] = {"numina": NUMINA_STYLE, "chat-tools": CHATML_TOOLS_STYLE}
# what the solver feeds back after each block: (where it starts, where it ends); its body is context
FEEDBACK = {"numina": ("```output\n", "\n```\n"), "chat-tools": TOOL_TURN}


class Format:
    """A :class:`~aimo_kernel.engine.base.PromptFormat` over a chat-template renderer: what a dialect needs to
    build its prompt without an engine."""

    def __init__(self, render: Callable[[str], str], count: Callable[[str], int] = len) -> None:
        self.chat_prompt, self.count_tokens = render, count


def template_format(dialect: str) -> Format:
    """The dialect's style's chat template, rendered as the engines render a template (jinja2)."""
    from jinja2 import Template

    template = Template(STYLES[dialect].chat_template)
    return Format(lambda text: str(template.render(messages=[{"role": "user", "content": text}],
                                                   add_generation_prompt=True)))


def prompt_head(problem: str, dialect: str = "numina") -> str:
    """The prompt the solver sends for ``problem`` in ``dialect``: the dialect builds it, on its chat template."""
    from aimo_kernel.solve.dialect import get_dialect

    return get_dialect(dialect).prompt(template_format(dialect), problem)


def chat_text(problem: str, solution: str, dialect: str = "numina") -> tuple[str, int]:
    """The training text (the dialect's prompt, then the solution) and where the solution starts in it."""
    head = prompt_head(problem, dialect)
    return head + solution, len(head)


def masked_spans(text: str, start: int, dialect: str = "numina") -> list[tuple[int, int]]:
    """Character spans that are context, not targets: the prompt and every tool output the solver feeds back."""
    opener, closer = FEEDBACK[dialect]
    spans, i = [(0, start)], start
    while (j := text.find(opener, i)) >= 0:
        body = j + len(opener)
        end = text.find(closer, body)
        # numina: the output's closing fence is the model's to write; chat-tools: the whole tool turn is ours
        stop = len(text) if end < 0 else (end + 1 if dialect == "numina" else end + len(closer))
        spans.append((j if dialect == "chat-tools" else body, stop))
        i = body
    return spans


def encode(tok: Any, examples: list[synth_tir.Example], dialect: str = "numina") -> list[tuple[list[int], list[int]]]:
    """(token ids, loss labels) per example: labels are -100 on the masked spans, EOS closes each one."""
    eos = tok.token_to_id(STYLES[dialect].eos)
    out = []
    texts = [chat_text(ex.problem, ex.solution, dialect) for ex in examples]
    for (text, start), enc in zip(texts, tok.encode_batch([t for t, _ in texts])):
        spans = masked_spans(text, start, dialect)
        labels = [-100 if any(a <= s < b for a, b in spans) or s == e else t
                  for t, (s, e) in zip(enc.ids, enc.offsets)]
        out.append((enc.ids + [eos], labels + [eos]))
    return out


SHARED_PREFIX_MIN = 32  # tokens; below this a shared prefix is not worth a forward pass of its own


def shared_prefix(data: list[tuple[list[int], list[int]]]) -> int:
    """How many leading tokens every example has in common, ending before the token that predicts the
    first target (the logits of the prefix itself are never computed)."""
    first = data[0][0]
    n = len(first) - 1
    for ids, labels in data:
        n = min(n, len(ids) - 1, next((i - 1 for i, y in enumerate(labels) if y != -100), n))
        if ids[:n] != first[:n]:
            n = next(i for i, (a, b) in enumerate(zip(ids, first)) if a != b)
    return n


def loss_with_prefix(model: Any, prefix: Any, ids: Any, labels: Any) -> Any:
    """The loss of ``prefix + ids[row]`` for every row, the prefix run once and its keys and values shared.

    The prefix carries no targets; the rows are padded on the right, so no real token attends to a pad
    (causal attention) and no attention mask is needed."""
    cache = model.model(input_ids=prefix[None], use_cache=True).past_key_values
    for layer in cache.layers:
        layer.keys = layer.keys.expand(ids.shape[0], -1, -1, -1)
        layer.values = layer.values.expand(ids.shape[0], -1, -1, -1)
    return model(input_ids=ids, labels=labels, past_key_values=cache, use_cache=True).loss


def batches(data: list[tuple[list[int], list[int]]], tokens_per_batch: int, pad: int, rng: random.Random) -> Any:
    """Endless shuffled batches of similar lengths, padded on the right."""
    import torch

    order = sorted(range(len(data)), key=lambda i: len(data[i][0]))
    while True:
        chunks, i = [], 0
        while i < len(order):
            n = max(1, tokens_per_batch // len(data[order[min(i + 63, len(order) - 1)]][0]))
            chunks.append(order[i:i + n])
            i += n
        rng.shuffle(chunks)
        for chunk in chunks:
            width = max(len(data[j][0]) for j in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            for row, j in enumerate(chunk):
                x, y = data[j]
                ids[row, :len(x)] = torch.tensor(x)
                labels[row, :len(y)] = torch.tensor(y)
            yield ids, labels


def check_template(folder: Path, problem: str, dialect: str) -> None:
    """The saved tokenizer's chat template, applied as the engines apply it, gives the training prompt."""
    from transformers import AutoTokenizer

    from aimo_kernel.engine.vllm_backend import render_chat
    from aimo_kernel.solve.dialect import get_dialect

    tok = AutoTokenizer.from_pretrained(folder)
    served = get_dialect(dialect).prompt(Format(lambda text: render_chat(tok, text), lambda t: len(tok.encode(t))),
                                         problem)
    if served != prompt_head(problem, dialect):
        raise SystemExit(f"the saved chat template gives another prompt than training uses:\n{served!r}")


def build_model(tok: Any, seed: int, style: TokenizerStyle = NUMINA_STYLE) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from aimo_kernel.models import BOS

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), bos_token_id=tok.token_to_id(BOS),
                      eos_token_id=tok.token_to_id(style.eos), pad_token_id=tok.token_to_id(PAD),
                      rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True, **ARCH)
    return LlamaForCausalLM(cfg)


def lr_at(step: int, progress: float, peak: float, warmup: int) -> float:
    """Linear warm-up over steps, then a cosine over the share of the time budget spent."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train(model: Any, stream: Any, *, minutes: float, peak_lr: float, log_every: int = 100,
          prefix: list[int] | None = None) -> dict[str, float]:
    """Train until the time is up. The schedule follows the clock, not a step count, so a machine
    busy with other work gets fewer steps but the same shape of schedule. With ``prefix`` the batches
    hold what follows it (see :func:`loss_with_prefix`)."""
    import torch

    shared = torch.tensor(prefix, dtype=torch.long) if prefix else None

    opt = torch.optim.AdamW(model.parameters(), lr=peak_lr, betas=(0.9, 0.98), weight_decay=0.01)
    model.train()
    start, step, losses, warmup, budget = time.monotonic(), 0, [], 100, minutes * 60
    while (progress := (time.monotonic() - start) / budget) < 1.0:
        ids, labels = next(stream)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, progress, peak_lr, warmup)
        loss = (model(input_ids=ids, labels=labels).loss if shared is None
                else loss_with_prefix(model, shared, ids, labels))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % log_every == 0:
            print(f"step {step} loss {sum(losses[-log_every:]) / log_every:.4f} "
                  f"lr {lr_at(step, progress, peak_lr, warmup):.2e} {time.monotonic() - start:.0f}s", flush=True)
    tail = losses[-100:] or [float("nan")]
    return {"steps": step, "seconds": time.monotonic() - start, "final_loss": sum(tail) / len(tail)}


def save(model: Any, dest: Path, meta: dict[str, Any]) -> None:
    model.eval()
    model.generation_config.do_sample = False
    model.save_pretrained(dest, safe_serialization=True)
    (dest / "training.json").write_text(json.dumps(meta, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--examples", type=int, default=60_000)
    ap.add_argument("--minutes", type=float, default=26.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch-tokens", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--dialect", choices=tuple(STYLES), default="numina", help="the format the model speaks")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    examples = list(synth_tir.generate("train", args.examples, seed=args.seed, dialect=args.dialect))
    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    texts = [chat_text(e.problem, e.solution, args.dialect)[0] for e in examples]
    style = STYLES[args.dialect]
    tok = train_bpe_tokenizer(texts, tmp, vocab_size=args.vocab, max_length=ARCH["max_position_embeddings"],
                              split_digits=True, style=style)
    check_template(tmp, examples[0].problem, args.dialect)
    data = encode(tok, examples, args.dialect)
    print(f"{len(data)} examples, {sum(len(x) for x, _ in data) / len(data):.1f} tokens each, "
          f"vocab {tok.get_vocab_size()}, prepared in {time.monotonic() - t0:.0f}s", flush=True)
    model = build_model(tok, args.seed, style)
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters", flush=True)
    n = shared_prefix(data)
    prefix = data[0][0][:n] if n >= SHARED_PREFIX_MIN else None
    if prefix:
        print(f"{n} prompt tokens shared by every example: computed once per batch", flush=True)
        data = [(x[n:], y[n:]) for x, y in data]
    stream = batches(data, args.batch_tokens, tok.token_to_id(PAD), random.Random(args.seed))
    stats = train(model, stream, minutes=args.minutes, peak_lr=args.lr, prefix=prefix)
    meta = {"seed": args.seed, "examples": args.examples, "minutes_cap": args.minutes, "lr": args.lr,
            "batch_tokens": args.batch_tokens, "torch_threads": torch.get_num_threads(),
            "shared_prefix_tokens": len(prefix or ()), **stats,
            "total_seconds": time.monotonic() - t0, "generator": "tools/synth_tir.py", "dialect": args.dialect,
            "arch": ARCH}
    save(model, tmp, meta)
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.rename(args.out)
    print(json.dumps(meta), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
