"""The ``llama-text`` student: a causal LM behind its chat template, LoRA adapters via peft.

``LlamaTextStudent.load`` returns a :class:`LlamaTextModel`, the object optimizers and evaluation
use: ``encode`` (token ids for training), ``generate`` (greedy answers, batched, left-padded) and
``score`` (sum log-probability of candidate answers, computed from one prompt pass + a KV cache).
"""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch

from mint_core.components import AnswerConstraint, Student, StudentModel
from mint_core.decoder import mask_as, mask_kind_for
from mint_core.hardware import native_bf16
from mint_core.io import atomic_dir
from mint_core.prepacked import prepacked
from mint_core.registry import MintError
from mint_core.types import Prompt
from mint_llama.config import LlamaTextConfig
from mint_llama.kv_cache import ReservedCache, left_pad, left_pad_positions, prefill_by_length
from mint_llama.resolve import SMOLLM2_CHAT_TEMPLATE, Resolved, resolve_model

if TYPE_CHECKING:
    from mint_core.context import RunContext

# End-of-turn markers of common chat templates; the first one the template uses is what an
# answer must end with (training) and what generation stops on.
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        dtype = getattr(torch, name)
    except AttributeError:
        dtype = None
    if not isinstance(dtype, torch.dtype):
        raise MintError(f"student.dtype={name!r} is not a torch dtype (auto, float32, bfloat16, float16)")
    return dtype


def pick_inference_dtype(name: str, device: torch.device, weights: torch.dtype) -> torch.dtype:
    """``student.inference_dtype`` -> the dtype to generate and score in.

    ``auto`` is bf16 where bf16 matrix products are native (:func:`mint_core.hardware.native_bf16`):
    on the demo's 2-core AVX512-BF16 CPU, greedy answers come 2.0x faster than in fp32 (benchmarks/
    README.md), as GPUs already run in bf16. Answers then differ from fp32's in some cases (the
    argmax of near ties): ``float32`` keeps the reference numerics.
    """
    if name == "auto":
        return torch.bfloat16 if weights == torch.float32 and native_bf16(device.type) else weights
    return pick_dtype(name, device)


def require_4bit(device: torch.device) -> None:
    """A clear error unless ``student.load_in_4bit=true`` can work here: a CUDA device and bitsandbytes."""
    if device.type != "cuda":
        raise MintError("student.load_in_4bit=true needs a CUDA GPU; set student.load_in_4bit=false on CPU")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MintError("student.load_in_4bit=true needs bitsandbytes: pip install bitsandbytes")


def common_prefix(rows: Sequence[Sequence[int]]) -> list[int]:
    """The longest run of leading tokens all ``rows`` share ([] for no rows)."""
    if not rows:
        return []
    shared: list[int] = []
    for column in zip(*rows):
        if any(token != column[0] for token in column):
            break
        shared.append(column[0])
    return shared


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the vocabulary in at least float32 (bf16/fp16 logits are upcast, float64 kept)."""
    return torch.log_softmax(logits if logits.dtype == torch.float64 else logits.float(), dim=-1)


def _pack_suffixes(suffixes: Sequence[Sequence[int]], device: torch.device) -> dict[str, torch.Tensor]:
    """Tokens 2.. of each suffix packed into one row: ``inputs`` (each suffix but its last token),
    ``targets`` (each but its first), each token's ``segment`` (suffix index) and ``offset`` within it,
    and ``own`` [n, n]: packed query q may see packed key k iff same suffix and k <= q."""
    segment = torch.tensor([j for j, s in enumerate(suffixes) for _ in s[:-1]], device=device)
    offset = torch.tensor([k for s in suffixes for k in range(len(s) - 1)], device=device)
    return {"inputs": torch.tensor([t for s in suffixes for t in s[:-1]], device=device),
            "targets": torch.tensor([t for s in suffixes for t in s[1:]], device=device),
            "segment": segment, "offset": offset,
            "own": (segment[:, None] == segment[None, :]) & (offset[:, None] >= offset[None, :])}


def _batches(items: Sequence[Any], size: int):
    size = max(1, int(size))
    for start in range(0, len(items), size):
        yield items[start:start + size]


class LlamaTextModel(StudentModel):
    """A loaded text student. ``model`` is a ``PeftModel`` once an adapter is attached."""

    modality = "text"
    supports_constrained = True

    def __init__(self, *, model: Any, tokenizer: Any, config: LlamaTextConfig, source: str = "",
                 inference_dtype: torch.dtype | None = None):
        self.model = model
        #: Set when loaded for inference only: the dtype generation and scoring switch the model to
        #: (once, on first use; export never calls them, so it saves the weights as loaded).
        self.inference_dtype = inference_dtype
        self.processor = tokenizer
        self.tokenizer = tokenizer
        self.config = config
        self.source = source
        vocab = tokenizer.get_vocab()
        template = tokenizer.chat_template or ""
        end = next((tok for tok in _END_OF_TURN if tok in template and tok in vocab), tokenizer.eos_token)
        if end is None:
            raise MintError("The student's tokenizer has neither an end-of-turn token nor an eos_token")
        #: The token every answer ends with; generation stops on it (and on eos).
        self.end_token_id: int = tokenizer.convert_tokens_to_ids(end)
        self.stop_token_ids = sorted({self.end_token_id} | ({tokenizer.eos_token_id} - {None}))
        self.pad_token_id: int = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.end_token_id
        #: Inside :meth:`reusing_prompts`: prompt ids -> per layer (keys, values) of all its tokens but the last.
        self._kept_prompts: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] | None = None

    # -- configuration -----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def lora_config(self):
        """The peft ``LoraConfig`` from the student config (TRL trainers take it as ``peft_config``)."""
        return lora_config(self.config, model=self.model.get_base_model() if hasattr(self.model, "get_base_model")
                           else self.model)

    @contextmanager
    def _inference(self) -> Iterator[None]:
        """Eval mode and no autograd, restoring the training mode after (a trainer may call us mid-run)."""
        was_training = self.model.training
        if self.inference_dtype is not None and self.model.dtype != self.inference_dtype:
            self.model.to(self.inference_dtype)
        self.model.eval()
        try:
            # bf16 on CPU: frozen weights reordered once for oneDNN (same products, mint_core.prepacked).
            with torch.inference_mode(), prepacked(self.model):
                yield
        finally:
            self.model.train(was_training)

    @contextmanager
    def reusing_prompts(self) -> Iterator[None]:
        """Within the block :meth:`generate` keeps each prompt's keys and values, and :meth:`score` runs
        only each prompt's last token (with the candidates' shared prefix) on top of them.

        Evaluation generates for a split's prompts, then ranks the labels for the same prompts: the
        prompts' forward (~40% of ranking's tokens in the demo) is then computed once. The kept states
        come from generation's batch (all prompts, left-padded), so the scores differ from a fresh
        computation by bf16 rounding only (float64: 1e-10, tested). The model must not change inside.
        The states are held until the block ends (the demo's 60 prompts: ~150 MB in bf16).
        """
        outer = self._kept_prompts
        self._kept_prompts = {} if outer is None else outer
        try:
            yield
        finally:
            self._kept_prompts = outer

    # -- encoding ----------------------------------------------------------------------------
    def messages(self, prompt: Prompt) -> list[dict[str, str]]:
        """Chat messages for ``prompt`` (system message first when ``prompt.system`` is set)."""
        messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
        return messages + [{"role": "user", "content": prompt.text}]

    def prompt_text(self, prompt: Prompt) -> str:
        """The prompt rendered by the chat template, ending with the assistant turn's opening."""
        return self.tokenizer.apply_chat_template(self.messages(prompt), tokenize=False, add_generation_prompt=True)

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        # The template already holds any BOS/special tokens: don't let the tokenizer add a second one.
        return list(self.tokenizer(self.prompt_text(prompt), add_special_tokens=False)["input_ids"])

    def completion_ids(self, completion: str, *, end: bool = True) -> list[int]:
        """Token ids of an answer, followed by the end-of-turn token when ``end``."""
        ids = list(self.tokenizer(completion, add_special_tokens=False)["input_ids"])
        return ids + [self.end_token_id] if end else ids

    def encode(self, *, prompt: Prompt, completion: str | None = None) -> dict[str, Any]:
        ids = self.prompt_ids(prompt)
        prompt_length = len(ids)
        if completion is not None:
            ids += self.completion_ids(completion)
        return {"input_ids": ids, "prompt_length": prompt_length}

    # -- generation --------------------------------------------------------------------------
    def generate(self, *, prompts: Sequence[Prompt], max_new_tokens: int, batch_size: int,
                 allowed_answers: AnswerConstraint | None = None) -> list[str]:
        """Greedy answers; with ``allowed_answers``, only that answer format and its names (see :mod:`mint_llama.constrained`)."""
        from transformers import GenerationConfig

        gen_config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                      eos_token_id=self.stop_token_ids, pad_token_id=self.pad_token_id)
        answers: list[str] = []
        with self._inference():
            for chunk in _batches(list(prompts), batch_size):
                rows = [self.prompt_ids(p) for p in chunk]
                input_ids, attention_mask = self._left_pad(rows)
                constraint = {} if allowed_answers is None else {
                    "prefix_allowed_tokens_fn": self._answer_constraint(allowed_answers, input_ids.shape[1])}
                # The prompts prefilled by length, a few at a time, into a cache written in place
                # instead of DynamicCache's per-step concatenation (the demo's answers unchanged; kv_cache.py).
                cache = prefill_by_length(self.model, rows, pad_id=self.pad_token_id,
                                          capacity=input_ids.shape[1] + max_new_tokens)
                out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                          generation_config=gen_config, cache=cache, **constraint)
                if self._kept_prompts is not None:
                    self._keep_prompts(rows, cache)
                new_tokens = out[:, input_ids.shape[1]:]
                answers += [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        return answers

    def _keep_prompts(self, rows: list[list[int]], cache: ReservedCache) -> None:
        """Copy each left-padded prompt's keys and values (all its tokens but the last) out of a generation's cache."""
        width = max(len(row) for row in rows)
        for r, row in enumerate(rows):
            if len(row) > 1:
                span = slice(width - len(row), width - 1)
                self._kept_prompts[tuple(row)] = [(layer.keys[r:r + 1, :, span].clone(),
                                                   layer.values[r:r + 1, :, span].clone()) for layer in cache.layers]

    def _answer_constraint(self, allowed: AnswerConstraint, prompt_width: int):
        from mint_llama.constrained import AnswerAutomaton, prefix_allowed_tokens_fn

        cached = getattr(self, "_automaton", None)
        if cached is None or cached.constraint != allowed:  # the tries are built once per label space
            self._automaton = AnswerAutomaton(allowed, encode=lambda text: self.completion_ids(text, end=False),
                                              stop_ids=[self.end_token_id, *self.stop_token_ids])
        return prefix_allowed_tokens_fn(self._automaton, prompt_width)

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        return left_pad(rows, pad_id=self.pad_token_id, device=self.device)

    def _right_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(1, max(len(row) for row in rows))
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            if row:
                ids[i, :len(row)] = torch.tensor(row)
                mask[i, :len(row)] = 1
        return ids.to(self.device), mask.to(self.device)

    # -- scoring -----------------------------------------------------------------------------
    def score(self, *, prompts: Sequence[Prompt], candidates: Sequence[str], batch_size: int,
              cached: bool = True, end: bool = False) -> list[list[float]]:
        """Sum log-probability of each candidate answer text given each prompt: ``[n_prompts][n_candidates]``.

        A candidate is the assistant's answer text exactly as it would be generated (evaluation
        passes ``format_answer([name], noun=...) + "\\n"``: the newline closes the name, so a name
        that is a prefix of another is not favoured). ``end=True`` also scores the end-of-turn token.

        ``cached=True`` (default) runs each prompt once, together with the tokens all candidates
        share, and scores the candidates' remaining tokens from its KV cache, packed into one row
        per forward (at most the tokens of ``batch_size`` naive rows); where a prompt's candidates
        fit one row, several prompts share each forward (left-padded, one row each, within the
        tokens and vocabulary rows of one naive batch). ``cached=False`` is the
        reference path (one full prompt+candidate forward per candidate, ``batch_size`` rows per
        forward), kept for benchmarks and parity tests. Both compute the same function: they agree
        to ~1e-14 in float64; in fp32 they differ by rounding (~1e-5 on SmolLM2-135M sums).
        """
        cand_ids = [self.completion_ids(text, end=end) for text in candidates]
        # Token log-probs are summed in float64 so the two paths differ only by the model's own
        # rounding, not by how the sum was accumulated.
        with self._inference():
            if cached:
                return self._score_cached_many([self.prompt_ids(p) for p in prompts], cand_ids, batch_size)
            return [self._score_naive(self.prompt_ids(p), cand_ids, batch_size) for p in prompts]

    def score_naive(self, *, prompts: Sequence[Prompt], candidates: Sequence[str], batch_size: int,
                    end: bool = False) -> list[list[float]]:
        """:meth:`score` without the KV cache (one full forward per candidate)."""
        return self.score(prompts=prompts, candidates=candidates, batch_size=batch_size, cached=False, end=end)

    def _score_cached_many(self, prompts: list[list[int]], cands: list[list[int]], batch_size: int
                           ) -> list[list[float]]:
        """Several prompts per forward where each prompt's candidates fit one packed row.

        A ranking prompt of the demo is ~118 tokens and its 20 candidates ~195 packed tokens: one
        prompt per forward gives matrix products of ~120-200 rows, which two CPU cores run at about
        half their rate. Prompts are grouped so that a forward projects no more vocabulary rows than
        one naive batch (``batch_size`` candidates) and holds no more tokens than one naive batch.
        """
        if not cands or len(prompts) < 2 or not self._packs_candidates():
            return [self._score_cached(p, cands, batch_size) for p in prompts]
        shared = common_prefix(cands)
        suffixes = [c[len(shared):] for c in cands]
        packed = sum(max(0, len(s) - 1) for s in suffixes)
        longest, prompt = max(map(len, cands)), max(map(len, prompts))
        # One naive batch: batch_size rows of prompt + candidate, longest + 1 vocabulary rows each.
        naive_tokens, naive_vocab = max(1, batch_size) * (prompt + longest), max(1, batch_size) * (longest + 1)
        group = min(naive_tokens // (prompt + len(shared) + packed), naive_vocab // (len(shared) + 1 + packed))
        if group < 2:
            return [self._score_cached(p, cands, batch_size) for p in prompts]
        scores: list[list[float]] = []
        for chunk in _batches(prompts, group):
            scores += self._score_group(chunk, shared, suffixes)
        return scores

    def _packs_candidates(self) -> bool:
        """Whether the attention takes the arbitrary 4D masks packed candidates need (sdpa, eager, or a kernel
        that declared its mask form with :func:`mint_core.decoder.register_mask_kind`)."""
        return mask_kind_for(self.model) is not None

    def _score_group(self, prompts: list[list[int]], shared: list[int], suffixes: list[list[int]]) -> list[list[float]]:
        """:meth:`_score_cached` for several prompts at once: contexts left-padded into one batch, then every
        row's candidates packed as in :meth:`_score_packed` (the same packed tokens on every row)."""
        from transformers import DynamicCache

        device = self.device
        ids, mask = self._left_pad([p + shared for p in prompts])
        rows, width = ids.shape
        # Left padding: each row's tokens keep positions 0..n-1, and the last len(shared)+1 positions
        # (those that predict a shared token or a candidate's first token) line up across rows.
        positions = left_pad_positions(mask)
        tail = len(shared) + 1
        kept = [self._kept_prompts.get(tuple(p)) for p in prompts] if self._kept_prompts else [None]
        if all(k is not None for k in kept):
            # Generation kept every prompt's states but its last token's: only the last columns run.
            out = self.model(input_ids=ids[:, -tail:], attention_mask=mask, position_ids=positions[:, -tail:],
                             cache=self._kept_cache(prompts, kept, past=width - tail), use_cache=True)
        else:
            # Kept positions as indices, not a count: the gathered states are contiguous, so the vocabulary
            # projection is one matrix product (a slice of a batch would make torch copy the weight per row).
            keep = torch.arange(width - tail, width, device=device)
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                             logits_to_keep=keep)
        ctx_logp = _log_probs(out.logits)
        scores = torch.zeros(rows, len(suffixes), dtype=torch.float64, device=device)
        if shared:
            targets = torch.tensor(shared, device=device).expand(rows, -1)[..., None]
            scores += ctx_logp[:, :-1].gather(-1, targets).squeeze(-1).double().sum(-1, keepdim=True)
        first = [i for i, s in enumerate(suffixes) if s]
        if first:
            tokens = torch.tensor([suffixes[i][0] for i in first], device=device)
            scores[:, first] += ctx_logp[:, -1].double()[:, tokens]
        pending = [i for i, s in enumerate(suffixes) if len(s) > 1]
        if pending:
            packed = _pack_suffixes([suffixes[i] for i in pending], device)
            n = len(packed["inputs"])
            # Query q sees its own row's context (not its padding) and its own candidate's earlier tokens.
            allowed = torch.cat([mask.bool()[:, None, :].expand(rows, n, width), packed["own"].expand(rows, n, n)],
                                dim=2)[:, None]
            cache = DynamicCache([(layer.keys, layer.values) for layer in out.cache.layers], config=self._base_config())
            form = mask_as(allowed, kind=mask_kind_for(self.model), dtype=cache.layers[0].keys.dtype)
            logits = self.model(input_ids=packed["inputs"].expand(rows, n), attention_mask=form,
                                position_ids=mask.sum(-1, keepdim=True) + packed["offset"][None], cache=cache,
                                use_cache=True).logits
            token_logp = _log_probs(logits).gather(-1, packed["targets"].expand(rows, n)[..., None]).squeeze(-1)
            scores[:, pending] += torch.zeros(rows, len(pending), dtype=torch.float64, device=device).index_add_(
                1, packed["segment"], token_logp.double())
        return scores.tolist()

    def _kept_cache(self, prompts: list[list[int]], kept: list[list[tuple[torch.Tensor, torch.Tensor]]], *,
                    past: int) -> Any:
        """The kept states of ``prompts`` (all tokens but each one's last) left-padded to ``past`` positions,
        as the cache of :meth:`_score_group`'s context forward."""
        from transformers import DynamicCache

        layers = []
        for layer in range(len(kept[0])):
            k0, v0 = kept[0][layer]
            keys = k0.new_zeros((len(prompts), k0.shape[1], past, k0.shape[-1]))
            values = v0.new_zeros((len(prompts), v0.shape[1], past, v0.shape[-1]))
            for r, prompt in enumerate(prompts):
                n = len(prompt) - 1
                keys[r, :, past - n:], values[r, :, past - n:] = kept[r][layer][0][0], kept[r][layer][1][0]
            layers.append((keys, values))
        return DynamicCache(layers, config=self._base_config())

    def _score_cached(self, prompt: list[int], cands: list[list[int]], batch_size: int) -> list[float]:
        if not cands:
            return []
        device = self.device
        # Tokens every candidate starts with (evaluation's "Most likely diseases:\n1.") continue the
        # prompt identically for all of them: run them once, as part of the prompt's forward.
        shared = common_prefix(cands)
        context = prompt + shared
        n_ctx = len(context)
        # Only the positions that predict a shared token or a candidate's first token are projected
        # to the vocabulary; the rest of the prompt is needed only as keys/values.
        out = self.model(input_ids=torch.tensor([context], device=device), use_cache=True,
                         logits_to_keep=len(shared) + 1)
        ctx_logp = _log_probs(out.logits[0])
        shared_sum = 0.0
        if shared:
            shared_sum = ctx_logp[:-1].gather(-1, torch.tensor(shared, device=device)[:, None]).double().sum().item()
        next_logp = ctx_logp[-1].double()
        context_kv = [(layer.keys, layer.values) for layer in out.cache.layers]
        suffixes = [c[len(shared):] for c in cands]
        scores = [shared_sum + (next_logp[s[0]].item() if s else 0.0) for s in suffixes]
        # The remaining tokens of many candidates go through one forward, packed into a single
        # row on top of the (unexpanded) context cache: a 4D mask lets each candidate see the
        # context and its own earlier tokens only, and its position ids restart after the context.
        # A forward holds at most the tokens one naive batch of ``batch_size`` would.
        pending = [i for i, s in enumerate(suffixes) if len(s) > 1]
        budget = max(1, batch_size) * (len(prompt) + max(len(c) for c in cands))
        pack_many = self._packs_candidates()
        while pending:
            chunk, used = [], 0
            while pending and (not chunk or (pack_many and used + len(suffixes[pending[0]]) - 1 <= budget)):
                used += len(suffixes[pending[0]]) - 1
                chunk.append(pending.pop(0))
            for i, total in zip(chunk, self._score_packed(context_kv, n_ctx, [suffixes[i] for i in chunk])):
                scores[i] += total
        return scores

    def _score_packed(self, context_kv: list[tuple[torch.Tensor, torch.Tensor]], n_ctx: int,
                      suffixes: list[list[int]]) -> list[float]:
        """Sum log-probability of tokens 2.. of each suffix (each at least 2 tokens) after the cached context."""
        from transformers import DynamicCache

        device = self.device
        packed = _pack_suffixes(suffixes, device)
        n = len(packed["inputs"])
        mask = None
        if len(suffixes) > 1:
            # Query q may see key k (packed index) iff same candidate and k <= q; all of the context.
            context = torch.ones(n, n_ctx, dtype=torch.bool, device=device)
            allowed = torch.cat([context, packed["own"]], dim=1)[None, None]
            mask = mask_as(allowed, kind=mask_kind_for(self.model), dtype=context_kv[0][0].dtype)
        # A fresh cache per forward: its update concatenates, so the context tensors stay untouched.
        cache = DynamicCache(list(context_kv), config=self._base_config())
        logits = self.model(input_ids=packed["inputs"][None], attention_mask=mask,
                            position_ids=(packed["offset"] + n_ctx)[None], cache=cache, use_cache=True).logits[0]
        token_logp = _log_probs(logits).gather(-1, packed["targets"][:, None]).squeeze(-1).double()
        totals = torch.zeros(len(suffixes), dtype=torch.float64, device=device)
        totals.index_add_(0, packed["segment"], token_logp)
        return totals.tolist()

    def _score_naive(self, prompt: list[int], cands: list[list[int]], batch_size: int) -> list[float]:
        n_prompt = len(prompt)
        scores: list[float] = []
        for chunk in _batches(cands, batch_size):
            ids, mask = self._right_pad([prompt + c for c in chunk])
            # Full forward over prompt + candidate, but only the positions that predict a candidate
            # token are projected to the vocabulary (what any sensible reference would do).
            keep = ids.shape[1] - n_prompt + 1
            logits = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
            logp = _log_probs(logits[:, :-1])
            targets = ids[:, n_prompt:]
            token_logp = logp.gather(-1, targets[..., None]).squeeze(-1).double().where(mask[:, n_prompt:].bool(), 0.0)
            scores += token_logp.sum(-1).tolist()
        return scores

    def _base_config(self):
        model = self.model
        return model.get_base_model().config if hasattr(model, "get_base_model") else model.config

    # -- adapters ----------------------------------------------------------------------------
    def save_adapter(self, directory: str | Path) -> Path:
        """Save the LoRA adapter (safetensors) and tokenizer to ``directory``, atomically (tmp dir + rename)."""
        if not hasattr(self.model, "peft_config"):
            raise MintError("This student has no adapter to save (load it with trainable=True or adapter_dir)")
        with atomic_dir(directory) as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
        return Path(directory)

    # -- export (mint export) ---------------------------------------------------------------
    def export(self, *, out_dir: str | Path, merged: bool = False) -> dict[str, Any]:
        """The adapter (``merged=False``) or the merged model, Hugging Face layout, in ``out_dir``.

        ``merged=True`` merges the adapter into the base weights in place (``merge_and_unload``) and
        writes safetensors, the tokenizer with its chat template, and a generation config that stops
        on the end-of-turn token, so ``AutoModelForCausalLM.from_pretrained(out_dir)`` + ``generate``
        answers like this student. Returns ``base_model`` / ``license`` for the model card.
        """
        from mint_llama.export import export_text_student

        return export_text_student(self, out_dir=Path(out_dir), merged=merged)


def lora_layer_indices(lora_layers: int, num_layers: int) -> list[int] | None:
    """The decoder layers LoRA adapts for ``student.lora_layers`` (the top N), or ``None`` for all."""
    n = int(lora_layers or 0)
    if n < 0:
        raise MintError(f"student.lora_layers={lora_layers}: give the number of top decoder layers to adapt "
                        "(0 = all)")
    if n == 0 or n >= num_layers:
        return None
    return list(range(num_layers - n, num_layers))


def lora_config(config: LlamaTextConfig, *, model: Any = None):
    """The peft ``LoraConfig`` of ``config``; ``model`` (the bare causal LM) places ``lora_layers``."""
    from peft import LoraConfig

    targets = config.lora_target_modules.strip()
    target_modules: str | list[str] = (targets if targets == "all-linear"
                                       else [t.strip() for t in targets.split(",") if t.strip()])
    layers = None
    if getattr(config, "lora_layers", 0):
        if model is None:
            raise MintError("student.lora_layers needs the model (its number of decoder layers)")
        layers = lora_layer_indices(config.lora_layers, int(model.config.num_hidden_layers))
    if layers is not None and target_modules == "all-linear":
        # peft takes layers_to_transform only with a list of names: every linear inside the decoder layers.
        target_modules = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                                 if ".layers." in name and isinstance(module, torch.nn.Linear)})
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=target_modules, bias="none", task_type="CAUSAL_LM",
                      layers_to_transform=layers, layers_pattern="layers" if layers is not None else None)


class LlamaTextStudent(Student):
    """Factory-made component: resolves the model once, loads it (plus adapter) on demand."""

    modality = "text"

    def __init__(self, config: LlamaTextConfig):
        self.config = config
        self._resolved: Resolved | None = None

    def resolve(self, ctx: RunContext | None = None) -> Resolved:
        if self._resolved is None:
            log = ctx.log if ctx is not None else print
            self._resolved = resolve_model(self.config.model, log=log)
            log(f"Student {self.config.model}: {self._resolved.source} ({self._resolved.path})")
        return self._resolved

    def load(self, *, ctx: RunContext, adapter_dir: Path | None = None, trainable: bool = False) -> LlamaTextModel:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cfg = self.config
        resolved = self.resolve(ctx)
        device = pick_device(cfg.device)
        dtype = pick_dtype(cfg.dtype, device)
        kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": False, "use_safetensors": True}
        if cfg.load_in_4bit:
            require_4bit(device)
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16 if dtype == torch.float32 else dtype)
            kwargs["device_map"] = {"": device.index if device.index is not None else torch.cuda.current_device()}
        tokenizer = AutoTokenizer.from_pretrained(resolved.path, trust_remote_code=False)
        if not getattr(tokenizer, "chat_template", None):
            if "<|im_start|>" not in tokenizer.get_vocab():
                raise MintError(f"{cfg.model}: the tokenizer has no chat template; use an instruct/chat model.")
            tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(resolved.path, **kwargs)
        if not cfg.load_in_4bit:
            model.to(device)
        model = self._attach_adapter(model, ctx=ctx, adapter_dir=adapter_dir, trainable=trainable)
        model.train(trainable)
        inference = None if trainable or cfg.load_in_4bit else pick_inference_dtype(cfg.inference_dtype, device, dtype)
        return LlamaTextModel(model=model, tokenizer=tokenizer, config=cfg, source=resolved.source,
                              inference_dtype=inference)

    def _attach_adapter(self, model, *, ctx: RunContext, adapter_dir: Path | None, trainable: bool):
        from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

        if adapter_dir is not None:
            adapter_dir = Path(adapter_dir)
            if not (adapter_dir / "adapter_model.safetensors").is_file():
                raise MintError(f"No adapter_model.safetensors in {adapter_dir}: MINT only loads safetensors adapters. "
                                "Re-save the adapter with safe_serialization=True.")
            ctx.log(f"Student adapter: {adapter_dir}{' (training continues)' if trainable else ''}")
            return PeftModel.from_pretrained(model, adapter_dir, is_trainable=trainable)
        if not trainable:
            return model
        if self.config.load_in_4bit:
            model = prepare_model_for_kbit_training(model)
        torch.manual_seed(ctx.seed)  # LoRA A matrices start random: same seed, same start
        return get_peft_model(model, lora_config(self.config, model=model))
