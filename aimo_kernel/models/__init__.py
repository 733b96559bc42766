"""The built-in tiny models, so every code path runs on any CPU machine without a download.

``builtin:tiny-tir`` is a 3.3M-parameter Llama trained on synthetic problems with tool-integrated
solutions (``tools/train_tiny_tir.py``); it ships inside the package (``aimo_kernel/models/tiny-tir``)
and really writes code, reads its output and boxes an answer. It is the default model.

``builtin:tiny-tir-tools`` is the same model trained on the same problems written in the chat-tools
dialect (:mod:`aimo_kernel.solve.chat_tools`): a ChatML chat template whose ``<|im_start|>``/``<|im_end|>``
are special tokens (``<|im_end|>`` ends a turn, as in Qwen's models) and Qwen3-style ``<tool_call>``
calls to a ``python`` tool, answered in ``<tool_response>`` turns (``--dialect chat-tools``).

``builtin:tiny-random-llama`` is created on first use: a complete Hugging Face checkpoint folder
(``config.json`` for LlamaForCausalLM, a real byte-level BPE ``tokenizer.json`` trained on the
bundled competition problems with a Numina-style chat template, random ``model.safetensors``). Head
size 32 (hidden 128, 4 heads, 2 KV heads) because vLLM's CPU attention needs head_dim ≥ 32. Needs
``numpy``, ``tokenizers`` and ``safetensors``, not torch. Its answers are meaningless: it proves the
plumbing, not the method, and serves tests that need a model with no skill.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUILTIN_PREFIX = "builtin:"
TINY_RANDOM = "tiny-random-llama"
TINY_TIR = "tiny-tir"
TINY_TIR_TOOLS = "tiny-tir-tools"
PACKAGED = (TINY_TIR, TINY_TIR_TOOLS)  # shipped inside the package
DEFAULT_MODEL = BUILTIN_PREFIX + TINY_TIR
_VERSION = "v1"

# The Numina TIR chat template (one user turn, then the assistant's solution).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '### Problem: ' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '### Solution: ' + message['content'] + '\n' }}{% endif %}"
    "{% if loop.last and message['role'] == 'user' and add_generation_prompt %}{{ '### Solution: ' }}{% endif %}"
    "{% endfor %}"
)
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
# Whole TIR markers as single tokens, so even random text contains them now and then.
MARKER_TOKENS = ("```python\n", "```output\n", "```\n", "\\boxed{", "### Problem: ", "### Solution: ")

# ChatML, as Qwen's templates render one user turn and the assistant's reply.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
TOOL_MARKERS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "\\boxed{")


@dataclass(frozen=True, kw_only=True)
class TokenizerStyle:
    """What a built-in tokenizer's format is made of: its chat template, special tokens and markers."""

    chat_template: str
    eos: str
    specials: tuple[str, ...]  # special tokens, BOS/EOS/PAD first: skipped when decoding with skip_special_tokens
    markers: tuple[str, ...]  # ordinary added tokens: single tokens, kept in decoded text


NUMINA_STYLE = TokenizerStyle(chat_template=CHAT_TEMPLATE, eos=EOS, specials=(BOS, EOS, PAD), markers=MARKER_TOKENS)
# <|im_end|> ends a turn and is the EOS, as in Qwen's models; the tool tags are ordinary added tokens there too
CHATML_TOOLS_STYLE = TokenizerStyle(chat_template=CHATML_TEMPLATE, eos=IM_END,
                                    specials=(BOS, IM_END, PAD, IM_START), markers=TOOL_MARKERS)

_ARCH = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 4096,
}


def cache_root() -> Path:
    """Where built-in models are created: ``$AIMO_KERNEL_HOME`` or ``~/.cache/aimo_kernel``."""
    env = os.environ.get("AIMO_KERNEL_HOME")
    return Path(env) if env else Path.home() / ".cache" / "aimo_kernel"


def resolve_model(model: str) -> Path:
    """Turn an engine's ``model`` setting into a local folder, creating a built-in model if needed."""
    if model.startswith(BUILTIN_PREFIX):
        name = model[len(BUILTIN_PREFIX):]
        if name in PACKAGED:
            return packaged_model_path(name)
        if name != TINY_RANDOM:
            known = ", ".join(BUILTIN_PREFIX + n for n in (*PACKAGED, TINY_RANDOM))
            raise FileNotFoundError(f"unknown built-in model {model!r}; available: {known}")
        return ensure_tiny_random_llama(cache_root() / "models" / f"{TINY_RANDOM}-{_VERSION}")
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model folder {path} not found or has no config.json")
    return path


def packaged_model_path(name: str) -> Path:
    """A model folder shipped inside the package; FileNotFoundError if the installation lacks it."""
    from importlib import resources

    path = Path(str(resources.files("aimo_kernel") / "models" / name))
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"built-in model {name!r} is missing from this installation ({path})")
    return path


def ensure_tiny_random_llama(dest: Path, *, seed: int = 0) -> Path:
    """Create the model at ``dest`` unless it is already complete; safe against concurrent callers."""
    if (dest / "model.safetensors").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        write_tiny_random_llama(tmp, seed=seed)
        try:
            os.rename(tmp, dest)
        except OSError:  # another process finished first
            if not (dest / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _training_corpus() -> list[str]:
    import csv
    import io
    from importlib import resources

    sample = resources.files("aimo_kernel") / "data" / "competition-sample.csv"
    texts = [row["problem"] for row in csv.DictReader(io.StringIO(sample.read_text(encoding="utf-8")))]
    texts += [
        "Let me solve this step by step.\n```python\nfrom sympy import *\nx = symbols('x')\n"
        "print(solve(x**2 - 4, x))\n```\n```output\n[-2, 2]\n```\nThe answer is \\boxed{2}.",
        "import math\nprint(math.comb(10, 3) % 1000)\nfor i in range(100):\n    total += i * i\n",
    ]
    return texts


def write_tokenizer(dest: Path) -> int:
    """Train and save the random model's byte-level BPE tokenizer; returns its vocabulary size."""
    tok = train_bpe_tokenizer(_training_corpus(), dest, vocab_size=1024,
                              max_length=int(_ARCH["max_position_embeddings"]))
    return int(tok.get_vocab_size())


def train_bpe_tokenizer(texts: list[str], dest: Path, *, vocab_size: int, max_length: int,
                        split_digits: bool = False, style: TokenizerStyle = NUMINA_STYLE) -> Any:
    """Train a byte-level BPE tokenizer on ``texts`` and save it with its chat template under ``dest``.

    The style's markers become single added tokens, its special tokens special ones, and BOS is
    prepended. ``split_digits`` cuts numbers into single digits first, so a trained model copies
    them digit by digit. Returns the ``tokenizers.Tokenizer``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(style.specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens(list(style.markers))
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, bos_id)])
    tok.save(str(dest / "tokenizer.json"))
    _write_tokenizer_files(dest, max_length=max_length, style=style)
    return tok


def _write_tokenizer_files(dest: Path, *, max_length: int, style: TokenizerStyle = NUMINA_STYLE) -> None:
    """The files beside ``tokenizer.json`` that make it a transformers/vLLM tokenizer with a chat template."""
    extra = [t for t in style.specials if t not in (BOS, style.eos, PAD)]
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": style.eos,
        "pad_token": PAD,
        "add_bos_token": True,
        "model_max_length": max_length,
        "chat_template": style.chat_template,
        "clean_up_tokenization_spaces": False,
        **({"additional_special_tokens": extra} if extra else {}),
    }
    specials: dict[str, Any] = {"bos_token": BOS, "eos_token": style.eos, "pad_token": PAD}
    if extra:
        specials["additional_special_tokens"] = extra
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (dest / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")


def _model_config(vocab_size: int, bos_id: int, eos_id: int) -> dict[str, object]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "torch_dtype": "float32",
        **_ARCH,
    }


def _random_weights(cfg: dict[str, object], seed: int) -> dict[str, object]:
    import numpy as np

    rng = np.random.default_rng(seed)
    h, i = int(cfg["hidden_size"]), int(cfg["intermediate_size"])  # type: ignore[call-overload]
    v, d = int(cfg["vocab_size"]), int(cfg["head_dim"])  # type: ignore[call-overload]
    q, kv = int(cfg["num_attention_heads"]) * d, int(cfg["num_key_value_heads"]) * d  # type: ignore[call-overload]

    def w(*shape: int) -> object:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    tensors: dict[str, object] = {"model.embed_tokens.weight": w(v, h), "lm_head.weight": w(v, h),
                                  "model.norm.weight": np.ones(h, np.float32)}
    for layer in range(int(cfg["num_hidden_layers"])):  # type: ignore[call-overload]
        p = f"model.layers.{layer}."
        tensors.update({
            p + "self_attn.q_proj.weight": w(q, h), p + "self_attn.k_proj.weight": w(kv, h),
            p + "self_attn.v_proj.weight": w(kv, h), p + "self_attn.o_proj.weight": w(h, q),
            p + "mlp.gate_proj.weight": w(i, h), p + "mlp.up_proj.weight": w(i, h),
            p + "mlp.down_proj.weight": w(h, i),
            p + "input_layernorm.weight": np.ones(h, np.float32),
            p + "post_attention_layernorm.weight": np.ones(h, np.float32),
        })
    return tensors


def write_tiny_random_llama(dest: Path, *, seed: int = 0) -> None:
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer

    dest.mkdir(parents=True, exist_ok=True)
    vocab_size = write_tokenizer(dest)
    tok = Tokenizer.from_file(str(dest / "tokenizer.json"))
    bos_id, eos_id = tok.token_to_id(BOS), tok.token_to_id(EOS)
    assert bos_id is not None and eos_id is not None  # both are special tokens of the vocabulary
    cfg = _model_config(vocab_size, bos_id, eos_id)
    (dest / "config.json").write_text(json.dumps(cfg, indent=2))
    (dest / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"]}, indent=2))
    save_file(_random_weights(cfg, seed), str(dest / "model.safetensors"), metadata={"format": "pt"})  # type: ignore[arg-type]
