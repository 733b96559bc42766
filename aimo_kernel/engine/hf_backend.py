"""Plain Hugging Face transformers backend (registered as ``transformers``), for machines without vLLM.

Covers: loading a causal LM and its tokenizer from the resolved model folder, the same chat template
and token counting as the vLLM backends, and deadline-bounded batched decoding with a KV cache
(left padding, finished rows dropped from the batch), greedy or temperature + top-p sampling with a
per-request seeded generator. Its text follows vLLM's rules exactly: incremental detokenization
primed with the prompt (``DecodeStream``, special tokens skipped), stop strings searched in the new
text and kept at the end (``include_stop_str_in_output``), EOS (the tokenizer's and the generation
config's) not shown, ``max_tokens`` and ``max_model_len`` both ending in ``length``. On the tiny
model, greedy outputs agree with ``vllm-offline`` token for token (tests/test_transformers_engine.py).

It does not do continuous batching, prefix caching, paged attention, quantized checkpoints or
streaming (it is a blocking :class:`~aimo_kernel.engine.base.Engine`, so the runner drives it with the
synchronous solver). Requests beyond ``max_num_seqs`` are decoded in successive batches, shortest
prompts first; a batch that finds the deadline already passed returns empty ``deadline`` generations.
On CPU it uses every core it may run on unless ``OMP_NUM_THREADS`` says otherwise. torch and
transformers are imported here only, when the engine is created.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aimo_kernel.engine.base import EngineError, Generation, GenerationRequest, SamplingParams
from aimo_kernel.engine.vllm_backend import render_chat
from aimo_kernel.models import resolve_model

if TYPE_CHECKING:
    from aimo_kernel.config import Config

log = logging.getLogger(__name__)

_GREEDY_EPS = 1e-5  # vLLM samples greedily below this temperature
_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "half": "float16", "float16": "float16"}


def _torch_dtype(name: str, on_cpu: bool) -> Any:
    """The torch dtype for ``EngineConfig.dtype``; "auto" keeps the checkpoint's own."""
    import torch

    if name == "auto":
        return "auto"
    dtype = getattr(torch, _DTYPES[name])
    if on_cpu and dtype == torch.float16:  # half matmuls are slow or missing on CPU; vLLM-cpu does the same
        return torch.bfloat16
    return dtype


def _cpu_threads() -> int:
    """The cores this process may run on (a container's affinity, not the host's count).

    Measured on the built-in tiny model (2 cores, 32 prompts): two threads 4000 tok/s, one 2700 on
    a quiet machine; beside another busy process one thread wins (OMP_NUM_THREADS=1 then).
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _stop_ids(tokenizer: Any, model: Any) -> frozenset[int]:
    """Token ids that end a generation as EOS: the tokenizer's, plus the generation config's (as vLLM)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if extra is not None:
        ids.update(int(i) for i in ([extra] if isinstance(extra, int) else extra))
    return frozenset(ids)


def stop_end(text: str, new_chars: int, stops: Sequence[str]) -> int | None:
    """Where ``text`` is cut if a stop string ends in its last ``new_chars`` characters, else None.

    vLLM's rule: only stop strings overlapping the new text are searched, and the one that ends first
    wins (ties go to the first in ``stops``); the cut is right after it, so it is kept.
    """
    best: int | None = None
    for stop in stops:
        if not stop:
            continue
        at = text.find(stop, max(0, len(text) - new_chars - len(stop) + 1))
        if at != -1 and (best is None or at + len(stop) < best):
            best = at + len(stop)
    return best


class _Detokenizer:
    """Incremental detokenization as vLLM's fast path does it: a ``DecodeStream`` primed with the prompt.

    A tokenizer without a ``tokenizers`` backend falls back to decoding all output tokens each step.
    """

    def __init__(self, tokenizer: Any, prompt_ids: list[int], *, skip_special: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self._out: list[int] = []
        self._text = ""
        self._stream: Any = None
        if self._backend is not None:
            from tokenizers.decoders import DecodeStream

            self._stream = DecodeStream(ids=prompt_ids, skip_special_tokens=skip_special)

    def step(self, token: int) -> str:
        if self._stream is None:
            self._out.append(token)
            text = str(self._tokenizer.decode(self._out, skip_special_tokens=self._skip))
            piece, self._text = text[len(self._text):], text
            return piece
        try:
            return str(self._stream.step(self._backend, token) or "")
        except Exception as exc:  # non-monotonic UTF-8 breaks the stream; vLLM restarts it the same way
            if not str(exc).startswith("Invalid prefix encountered"):
                raise
            from tokenizers.decoders import DecodeStream

            self._stream = DecodeStream(skip_special_tokens=self._skip)
            return str(self._stream.step(self._backend, token) or "")


@dataclasses.dataclass
class _Row:
    """One request while it is decoded."""

    prompt_ids: list[int]
    max_tokens: int  # already capped by the room left in the context
    generator: Any  # torch.Generator, or None when decoding greedily
    detok: _Detokenizer | None
    text: str = ""
    num_tokens: int = 0
    finish: str | None = None
    logprobs: list[float] = dataclasses.field(default_factory=list)
    top_logprobs: list[tuple[float, ...]] = dataclasses.field(default_factory=list)

    def add(self, token: int, stops: Sequence[str], eos_ids: frozenset[int]) -> None:
        """Append one sampled token and decide whether the request is finished (vLLM's order)."""
        assert self.detok is not None
        self.num_tokens += 1
        piece = self.detok.step(token)
        self.text += piece
        if token in eos_ids:
            self.finish = "eos"
        elif self.num_tokens >= self.max_tokens:
            self.finish = "length"
        cut = stop_end(self.text, len(piece), stops) if piece else None
        if cut is not None:  # a stop string overrides EOS and length, as in vLLM's output processor
            self.text, self.finish = self.text[:cut], "stop"

    def generation(self) -> Generation:
        return Generation(text=self.text, num_tokens=self.num_tokens, prompt_tokens=len(self.prompt_ids),
                          finish_reason=self.finish or "deadline", logprobs=tuple(self.logprobs),
                          top_logprobs=tuple(self.top_logprobs))


def _add_logprobs(rows: list[_Row], logits: Any, tokens: Any, k: int) -> None:
    """Each row's sampled-token log-probability and its step's top-k values, from the raw logits
    (before temperature and top-p, as vLLM's default ``raw_logprobs``)."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    own = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).tolist()
    top = logp.topk(min(max(k, 1), logp.shape[-1]), dim=-1).values.tolist()
    for row, lp, values in zip(rows, own, top):
        row.logprobs.append(float(lp))
        row.top_logprobs.append(tuple(float(v) for v in values))


class TransformersEngine:
    """A causal LM on plain transformers + torch, decoded in batches by a hand-written loop."""

    name = "transformers"

    def __init__(self, config: Config) -> None:
        cfg = config.engine
        try:
            path = str(resolve_model(cfg.model))
        except FileNotFoundError as exc:
            raise EngineError(str(exc)) from None
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self._tokenizer: Any = AutoTokenizer.from_pretrained(path)
            model: Any = AutoModelForCausalLM.from_pretrained(
                path, dtype=_torch_dtype(cfg.dtype, self._device.type == "cpu"), trust_remote_code=False)
        except Exception as exc:  # transformers raises many types; the caller needs one
            raise EngineError(f"transformers could not load {path}: {type(exc).__name__}: {exc}") from exc
        self._model: Any = model.to(self._device).eval()
        if self._device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:  # an explicit setting wins
            torch.set_num_threads(_cpu_threads())
        limit = getattr(model.config, "max_position_embeddings", None) or cfg.max_model_len
        self.max_model_len = min(cfg.max_model_len, int(limit))
        self._batch = cfg.max_num_seqs
        self._eos_ids = _stop_ids(self._tokenizer, model)
        pad = self._tokenizer.pad_token_id
        self._pad_id = int(pad if pad is not None else min(self._eos_ids, default=0))

    def chat_prompt(self, problem: str) -> str:
        return render_chat(self._tokenizer, problem)

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text))

    def generate(
        self, requests: Sequence[GenerationRequest], params: SamplingParams, *, deadline: float
    ) -> list[Generation]:
        rows = [self._row(req, params) for req in requests]
        live = sorted((r for r in rows if r.finish is None), key=lambda r: len(r.prompt_ids))
        # shortest prompts first: batches of similar lengths waste less on padding
        for start in range(0, len(live), self._batch):
            batch = live[start:start + self._batch]
            if time.monotonic() >= deadline:
                break  # these rows keep finish None: "deadline", empty
            try:
                self._decode(batch, params, deadline)
            except Exception as exc:  # e.g. out of memory: the whole call failed, as a vLLM step would
                raise EngineError(f"transformers generation failed: {type(exc).__name__}: {exc}") from exc
        return [r.generation() for r in rows]

    def _row(self, req: GenerationRequest, params: SamplingParams) -> _Row:
        """Tokenize one request; one vLLM would refuse (empty, no room left, no tokens asked) is an error."""
        ids = list(self._tokenizer.encode(req.prompt))
        room = self.max_model_len - len(ids)
        if not ids or room <= 0 or req.max_tokens < 1:
            log.warning("request refused: %d prompt tokens, max_tokens %d, max_model_len %d",
                        len(ids), req.max_tokens, self.max_model_len)
            return _Row(ids, 0, None, None, finish="error")
        return _Row(ids, min(req.max_tokens, room), self._generator(req.seed, params),
                    _Detokenizer(self._tokenizer, ids, skip_special=params.skip_special_tokens))

    def _generator(self, seed: int | None, params: SamplingParams) -> Any:
        if params.temperature < _GREEDY_EPS:
            return None
        import torch

        gen = torch.Generator(device=self._device)
        if seed is None:
            gen.seed()  # unseeded requests differ from call to call, as in vLLM
        else:
            gen.manual_seed(seed)
        return gen

    def _decode(self, rows: list[_Row], params: SamplingParams, deadline: float) -> None:
        """Prefill the batch, then one token per row per step until every row is done or time is up."""
        import torch
        from transformers import DynamicCache

        with torch.inference_mode():
            ids, mask = self._left_pad(rows)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            cache = DynamicCache(config=self._model.config)
            while rows and time.monotonic() < deadline:
                logits = self._model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                     past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1, :]
                tokens = self._sample(logits, rows, params)
                if params.logprobs is not None:
                    _add_logprobs(rows, logits, tokens, params.logprobs)
                for row, token in zip(rows, tokens.tolist()):
                    row.add(token, params.stop, self._eos_ids)
                keep = [i for i, row in enumerate(rows) if row.finish is None]
                if len(keep) < len(rows):  # finished rows leave the batch so they cost nothing more
                    index = torch.tensor(keep, dtype=torch.long, device=self._device)
                    cache.batch_select_indices(index)
                    tokens, mask, positions = tokens[index], mask[index], positions[index]
                    rows = [rows[i] for i in keep]
                ids = tokens.unsqueeze(1)
                mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
                positions = positions[:, -1:] + 1

    def _left_pad(self, rows: list[_Row]) -> tuple[Any, Any]:
        """Prompts padded on the left to one length, and the mask that hides the padding."""
        import torch

        width = max(len(r.prompt_ids) for r in rows)
        ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row.prompt_ids):] = torch.tensor(row.prompt_ids)
            mask[i, width - len(row.prompt_ids):] = 1
        return ids.to(self._device), mask.to(self._device)

    @staticmethod
    def _sample(logits: Any, rows: list[_Row], params: SamplingParams) -> Any:
        """Next token per row: argmax at temperature 0, else temperature + top-p with each row's generator."""
        import torch

        if params.temperature < _GREEDY_EPS:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits.float() / params.temperature, dim=-1)
        if params.top_p < 1.0:
            # vLLM's top-p: drop the smallest probabilities whose sum stays within 1 - top_p, keep the top one
            sorted_p, order = probs.sort(dim=-1)
            drop = sorted_p.cumsum(dim=-1) <= 1.0 - params.top_p
            drop[:, -1] = False
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p.masked_fill(drop, 0.0))
        # Inverse-CDF sampling: one uniform draw per row from the row's own generator (a per-row
        # multinomial costs several times more per step); 1 - rand is in (0, 1], so a token of
        # probability 0 is never picked; float64 keeps a large vocabulary's cumulative sum exact enough.
        draws = torch.stack([1.0 - torch.rand((), generator=row.generator, device=probs.device, dtype=torch.float64)
                             for row in rows])
        cdf = probs.double().cumsum(dim=-1)
        picks = torch.searchsorted(cdf, (draws * cdf[:, -1]).unsqueeze(1)).squeeze(1)
        return picks.clamp(max=probs.shape[-1] - 1)

    def close(self) -> None:
        import torch

        self._model = None
        if self._device.type == "cuda":
            torch.cuda.empty_cache()


def create_engine(config: Config) -> TransformersEngine:
    return TransformersEngine(config)
