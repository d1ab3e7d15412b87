"""Batching preference pairs: the shared-prompt packed layout and the standard two-sequence layout.

A *pair feature* is a dict ``{"prompt_ids": [...], "chosen_ids": [...], "rejected_ids": [...],
"extras": {...}}``: token ids of the prompt (chat template applied) and of each answer (ending in
EOS), plus the student's extra model inputs (a vision student's ``pixel_values`` ...).

Packed layout (one row per pair, the prompt run once)::

    row i:  [pad .. pad | prompt_i ][ chosen_i  pad .. ][ rejected_i  pad .. ]
            0           Pmax-P_i   Pmax               Pmax+Cmax            Pmax+Cmax+Rmax

Prompts are left-padded and answers right-padded inside their blocks, so every row's answer block
starts at the same column. That makes the columns whose logits are needed the same for every row,
so a single index tensor passed as ``logits_to_keep`` selects them and the vocabulary projection
(``lm_head``) runs only there, through the model's own ``forward`` (accelerate, DeepSpeed and FSDP
wrappers see a normal call). Position ids restart after the prompt: chosen and rejected both count
from ``P_i``. The 4D attention mask (built on device from ``segment_ids``, see
:func:`build_pair_mask`) lets the prompt attend causally to itself, the chosen answer to the prompt
and itself, the rejected answer to the prompt and itself, never to the chosen answer. Padding is
per batch and minimal (the longest prompt, chosen and rejected answer of the batch).

Padding-free variants (``padding_free=True``) put every sequence of the batch into ONE row, back
to back, with no padding at all::

    packed:        [prompt_0 chosen_0 rejected_0 prompt_1 chosen_1 rejected_1 ...]
    two-sequence:  [prompt_0 chosen_0 prompt_1 chosen_1 ... prompt_0 rejected_0 ...]

The packed variant's 4D mask also keeps pairs apart (``pair_ids``). The two-sequence variant has no
mask at all: position ids restart at 0 for every sequence, which transformers reads as packed
sequences (flash-attention's varlen kernels; a block-diagonal mask for sdpa/eager), so it serves
students whose attention takes no custom 4D mask. Whether dropping the padding pays depends on
the attention kernel: varlen/flash kernels skip the blocks between sequences; a dense 4D mask
(sdpa, eager) computes attention over the whole row, so there the choice is made per batch from
an estimate of both costs (:func:`layout_costs`).

Every layout emits the same gather description: for every scored token, which row and kept column
predicts it (``g_row``, ``g_col``), the token (``g_tok``), its pair (``g_pair``) and its kind
(``g_kind``: 0 prompt token in the NLL, 1 chosen answer token, 2 rejected answer token). The
statistics are then computed identically (:func:`pair_statistics`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch

from mint_core.decoder import SEG_PAD, SEG_PROMPT, attention_implementation, build_pair_mask
from mint_engine.segment_attention import NAME as SEGMENT_KERNEL

KIND_PROMPT, KIND_CHOSEN, KIND_REJECTED = 0, 1, 2
SEG_CHOSEN, SEG_REJECTED = 1, 2  # SEG_PAD = -1 and SEG_PROMPT = 0 live in mint_core.decoder

# Extras whose second dimension runs along the token sequence (padded with zeros, not stacked as is).
SEQUENCE_EXTRAS = {"cross_attention_mask"}


def _gather_fields(rows: list[int], cols: list[int], toks: list[int], pairs: list[int],
                   kinds: list[int]) -> dict[str, torch.Tensor]:
    return {"g_row": torch.tensor(rows, dtype=torch.long), "g_col": torch.tensor(cols, dtype=torch.long),
            "g_tok": torch.tensor(toks, dtype=torch.long), "g_pair": torch.tensor(pairs, dtype=torch.long),
            "g_kind": torch.tensor(kinds, dtype=torch.long)}


def _counts(features: Sequence[dict[str, Any]], nll_on_prompt: bool) -> dict[str, torch.Tensor]:
    chosen = [len(f["chosen_ids"]) for f in features]
    rejected = [len(f["rejected_ids"]) for f in features]
    # TRL's NLL is a token mean over the whole chosen sequence minus its first token.
    nll = sum(c + (len(f["prompt_ids"]) - 1 if nll_on_prompt else 0) for f, c in zip(features, chosen))
    return {"n_chosen": torch.tensor(chosen, dtype=torch.float32),
            "n_rejected": torch.tensor(rejected, dtype=torch.float32),
            "n_nll": torch.tensor(float(nll), dtype=torch.float32)}


def collate_packed(features: Sequence[dict[str, Any]], *, pad_id: int, nll_on_prompt: bool = True,
                   padding_free: bool = False) -> dict[str, Any]:
    """The packed layout (see module docstring); ``padding_free``: all pairs in one row (text only).

    Image inputs (Mllama's ``pixel_values`` ...) are stacked once per pair, so the vision encoder
    also runs once per pair; ``cross_attention_mask`` follows the packed token layout.
    """
    if padding_free:
        if any(f.get("extras") for f in features):
            raise ValueError("padding-free batches take text-only pairs (image inputs need one row per pair)")
        return _collate_packed_flat(features, nll_on_prompt=nll_on_prompt)
    p_max = max(len(f["prompt_ids"]) for f in features)
    c_max = max(len(f["chosen_ids"]) for f in features)
    r_max = max(len(f["rejected_ids"]) for f in features)
    length = p_max + c_max + r_max
    batch = len(features)
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
    segment = torch.full((batch, length), SEG_PAD, dtype=torch.int8)
    positions = torch.zeros((batch, length), dtype=torch.long)

    # Columns whose hidden state gets a vocabulary projection, shared by all rows.
    first_prompt_col = 0 if nll_on_prompt else p_max - 1
    keep = list(range(first_prompt_col, p_max + c_max - 1)) + list(range(p_max + c_max, length - 1))
    col_index = {col: k for k, col in enumerate(keep)}
    rows, cols, toks, pairs, kinds = [], [], [], [], []

    def add(row: int, col: int, tok: int, kind: int) -> None:
        rows.append(row)
        cols.append(col_index[col])
        toks.append(tok)
        pairs.append(row)
        kinds.append(kind)

    for i, f in enumerate(features):
        prompt, chosen, rejected = f["prompt_ids"], f["chosen_ids"], f["rejected_ids"]
        p, c, r = len(prompt), len(chosen), len(rejected)
        start = p_max - p
        input_ids[i, start:p_max] = torch.tensor(prompt)
        input_ids[i, p_max:p_max + c] = torch.tensor(chosen)
        input_ids[i, p_max + c_max:p_max + c_max + r] = torch.tensor(rejected)
        segment[i, start:p_max] = SEG_PROMPT
        segment[i, p_max:p_max + c] = SEG_CHOSEN
        segment[i, p_max + c_max:p_max + c_max + r] = SEG_REJECTED
        positions[i, start:p_max] = torch.arange(p)
        positions[i, p_max:p_max + c] = torch.arange(p, p + c)
        positions[i, p_max + c_max:p_max + c_max + r] = torch.arange(p, p + r)
        if nll_on_prompt:
            for t in range(1, p):  # prompt token t is predicted at column start + t - 1
                add(i, start + t - 1, prompt[t], KIND_PROMPT)
        for j in range(c):  # chosen token j: from the last prompt column, then from chosen j-1
            add(i, p_max - 1 if j == 0 else p_max + j - 1, chosen[j], KIND_CHOSEN)
        for j in range(r):  # rejected token j: the last prompt column too, then rejected j-1
            add(i, p_max - 1 if j == 0 else p_max + c_max + j - 1, rejected[j], KIND_REJECTED)

    out: dict[str, Any] = {"input_ids": input_ids, "segment_ids": segment, "position_ids": positions,
                           "logits_to_keep": torch.tensor(keep, dtype=torch.long),
                           # Where the prompt block and each answer block end (mint_engine.segment_attention).
                           "segment_bounds": torch.tensor([p_max, p_max + c_max, length], dtype=torch.long)}
    out.update(_packed_extras(features, p_max, c_max, length))
    out.update(_gather_fields(rows, cols, toks, pairs, kinds))
    out.update(_counts(features, nll_on_prompt))
    return out


def _packed_extras(features: Sequence[dict[str, Any]], p_max: int, c_max: int, length: int) -> dict[str, torch.Tensor]:
    """A vision student's per-pair tensors for packed rows: images once per pair; ``cross_attention_mask``
    (stored for the prompt, ``[prompt_len, images, tiles]``) placed under the left-padded prompt, and its
    last row under every answer token (answers see the image like the tokens before them)."""
    keys = sorted({k for f in features for k in (f.get("extras") or {})})
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        values = [torch.as_tensor(f["extras"][key]) for f in features]
        if key not in SEQUENCE_EXTRAS:
            out[key] = torch.stack(values)
            continue
        rows = []
        for f, mask in zip(features, values):
            p, c, r = len(f["prompt_ids"]), len(f["chosen_ids"]), len(f["rejected_ids"])
            row = mask.new_zeros((length, *mask.shape[1:]))
            row[p_max - p:p_max] = mask
            row[p_max:p_max + c] = mask[-1]
            row[p_max + c_max:p_max + c_max + r] = mask[-1]
            rows.append(row)
        out[key] = torch.stack(rows)
    return out


def _collate_packed_flat(features: Sequence[dict[str, Any]], *, nll_on_prompt: bool) -> dict[str, Any]:
    """Padding-free packed layout: ``[prompt_i, chosen_i, rejected_i]`` for every pair, one row."""
    ids: list[int] = []
    segment: list[int] = []
    pair_ids: list[int] = []
    positions: list[int] = []
    scored: list[tuple[int, int, int, int]] = []  # (predicting column, token, pair, kind)
    for i, f in enumerate(features):
        prompt, chosen, rejected = f["prompt_ids"], f["chosen_ids"], f["rejected_ids"]
        p, c, r = len(prompt), len(chosen), len(rejected)
        s = len(ids)  # the pair's first column
        ids += [*prompt, *chosen, *rejected]
        segment += [SEG_PROMPT] * p + [SEG_CHOSEN] * c + [SEG_REJECTED] * r
        pair_ids += [i] * (p + c + r)
        positions += [*range(p), *range(p, p + c), *range(p, p + r)]
        if nll_on_prompt:
            scored += [(s + t - 1, prompt[t], i, KIND_PROMPT) for t in range(1, p)]
        scored += [(s + p - 1 if j == 0 else s + p + j - 1, chosen[j], i, KIND_CHOSEN) for j in range(c)]
        scored += [(s + p - 1 if j == 0 else s + p + c + j - 1, rejected[j], i, KIND_REJECTED) for j in range(r)]
    out: dict[str, Any] = {"input_ids": torch.tensor([ids]), "segment_ids": torch.tensor([segment], dtype=torch.int8),
                           "pair_ids": torch.tensor([pair_ids]), "position_ids": torch.tensor([positions])}
    out.update(_one_row_gather(scored))
    out.update(_counts(features, nll_on_prompt))
    return out


def _one_row_gather(scored: list[tuple[int, int, int, int]]) -> dict[str, torch.Tensor]:
    """``logits_to_keep`` and the gather fields of a padding-free row from its scored tokens
    ``(predicting column, token, pair, kind)``: only the predicting columns are projected."""
    keep = sorted({col for col, *_ in scored})
    col_index = {col: k for k, col in enumerate(keep)}
    out = {"logits_to_keep": torch.tensor(keep, dtype=torch.long)}
    out.update(_gather_fields([0] * len(scored), [col_index[col] for col, *_ in scored], [t for _, t, _, _ in scored],
                              [pair for *_, pair, _ in scored], [kind for *_, kind in scored]))
    return out


def _stack_extras(features: Sequence[dict[str, Any]], seq_lengths: list[int], length: int) -> dict[str, torch.Tensor]:
    """Batch a vision student's per-example tensors for the two-sequence rows (chosen rows, then rejected rows).

    Image tensors (``pixel_values`` ...) carry no batch axis; they are stacked and repeated for both
    row groups. ``cross_attention_mask`` is stored for the prompt only (``[prompt_len, images,
    tiles]``); every answer token gets the prompt's last row (it sees the image like the tokens
    before it, as the student's own encoding does), then the rows are zero-padded to ``length``.
    """
    keys = sorted({k for f in features for k in (f.get("extras") or {})})
    out: dict[str, torch.Tensor] = {}
    n = len(features)
    for key in keys:
        values = [torch.as_tensor(f["extras"][key]) for f in features]
        if key in SEQUENCE_EXTRAS:
            rows = []
            for row, seq_len in enumerate(seq_lengths):
                mask = values[row % n]
                grown = torch.cat([mask, mask[-1:].expand(seq_len - mask.shape[0], *mask.shape[1:])])
                rows.append(torch.cat([grown, grown.new_zeros((length - seq_len, *mask.shape[1:]))]))
            out[key] = torch.stack(rows)
        else:
            stacked = torch.stack(values)
            out[key] = torch.cat([stacked, stacked], dim=0)
    return out


def collate_two_sequence(features: Sequence[dict[str, Any]], *, pad_id: int,
                         nll_on_prompt: bool = True, padding_free: bool = False) -> dict[str, Any]:
    """The standard layout: rows ``[prompt+chosen_0..B-1, prompt+rejected_0..B-1]``, right-padded.

    Used as the reference in tests and as the fallback for models whose attention takes no custom
    4D mask (flash-attention) and for vision students other than Mllama. Logits are still computed
    only at needed columns.
    ``padding_free``: the same sequences back to back in one row, position ids restarting at 0.
    """
    batch = len(features)
    seqs = [f["prompt_ids"] + f["chosen_ids"] for f in features] + \
           [f["prompt_ids"] + f["rejected_ids"] for f in features]
    if padding_free:
        if any(f.get("extras") for f in features):
            raise ValueError("padding-free batches take text-only pairs (image inputs need one row per sequence)")
        return _collate_two_sequence_flat(features, seqs, nll_on_prompt=nll_on_prompt)
    length = max(len(s) for s in seqs)
    input_ids = torch.full((2 * batch, length), pad_id, dtype=torch.long)
    attention = torch.zeros((2 * batch, length), dtype=torch.long)
    for row, seq in enumerate(seqs):
        input_ids[row, :len(seq)] = torch.tensor(seq)
        attention[row, :len(seq)] = 1
    min_prompt = min(len(f["prompt_ids"]) for f in features)
    first_col = 0 if nll_on_prompt else min_prompt - 1
    keep = list(range(first_col, length - 1))
    rows, cols, toks, pairs, kinds = [], [], [], [], []
    for i, f in enumerate(features):
        p = len(f["prompt_ids"])
        for row, answer, kind in ((i, f["chosen_ids"], KIND_CHOSEN), (batch + i, f["rejected_ids"], KIND_REJECTED)):
            seq = seqs[row]
            start = 1 if (nll_on_prompt and kind == KIND_CHOSEN) else p
            for t in range(start, p + len(answer)):
                rows.append(row)
                cols.append(t - 1 - first_col)
                toks.append(seq[t])
                pairs.append(i)
                kinds.append(KIND_PROMPT if t < p else kind)
    out: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention,
                           "logits_to_keep": torch.tensor(keep, dtype=torch.long)}
    out.update(_stack_extras(features, [len(seq) for seq in seqs], length))
    out.update(_gather_fields(rows, cols, toks, pairs, kinds))
    out.update(_counts(features, nll_on_prompt))
    return out


def _collate_two_sequence_flat(features: Sequence[dict[str, Any]], seqs: list[list[int]], *,
                               nll_on_prompt: bool) -> dict[str, Any]:
    batch = len(features)
    starts = [sum(len(s) for s in seqs[:row]) for row in range(len(seqs))]
    scored: list[tuple[int, int, int, int]] = []  # (predicting column, token, pair, kind)
    for i, f in enumerate(features):
        p = len(f["prompt_ids"])
        for row, kind in ((i, KIND_CHOSEN), (batch + i, KIND_REJECTED)):
            first = 1 if (nll_on_prompt and kind == KIND_CHOSEN) else p
            scored += [(starts[row] + t - 1, seqs[row][t], i, KIND_PROMPT if t < p else kind)
                       for t in range(first, len(seqs[row]))]
    out: dict[str, Any] = {"input_ids": torch.tensor([[t for s in seqs for t in s]]),
                           "position_ids": torch.tensor([[k for s in seqs for k in range(len(s))]])}
    out.update(_one_row_gather(scored))
    out.update(_counts(features, nll_on_prompt))
    return out


MODEL_KEYS = ("input_ids", "attention_mask", "position_ids")
GATHER_KEYS = ("g_row", "g_col", "g_tok", "g_pair", "g_kind", "g_weight", "n_chosen", "n_rejected", "n_nll", "segment_ids",
               "pair_ids", "logits_to_keep", "feature_index", "segment_bounds")


def varlen_attention(model: Any) -> bool:
    """Whether the model's attention runs packed sequences without a dense mask (flash / flex kernels)."""
    impl = attention_implementation(model)
    return "flash" in impl or impl == "flex_attention"


# How much slower attention runs per FLOP than the layers' matmuls: the FLOP ratio of one (query,
# key) pair to one token is scaled by it. Fitted with benchmarks/padding_free.py on CPU sdpa (1.06:
# attention's FLOPs cost about what GEMM FLOPs cost there); see benchmarks/README.md.
ATTENTION_SLOWDOWN = 1.0


def attention_weight(model: Any) -> float:
    """Cost of one (query, key) attention pair relative to one token through the model's layers.

    Per token, the decoder's matmuls cost ~2 FLOPs per non-embedding parameter; per (query, key)
    pair, attention costs ~4 FLOPs per query-head dimension per layer (scores and weighted values).
    """
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    head_dim = getattr(config, "head_dim", None) or (int(getattr(config, "hidden_size", 0) or 0) // max(heads, 1))
    params = sum(p.numel() for p in model.parameters())
    for embeddings in {id(m.weight): m.weight for m in (model.get_input_embeddings(), model.get_output_embeddings())
                       if m is not None and getattr(m, "weight", None) is not None}.values():
        params -= embeddings.numel()
    if params <= 0 or layers * heads * head_dim == 0:
        return 0.0
    return ATTENTION_SLOWDOWN * (4 * heads * head_dim * layers) / (2 * params)


def layout_costs(features: Sequence[dict[str, Any]], *, packed: bool, attention_weight: float,
                 segments: bool = False) -> dict[str, float]:
    """Estimated cost (token units) of padded rows vs one padding-free row under a dense mask.

    ``tokens + attention_weight * (query, key) pairs``: padded rows pay for their padding, the single
    row pays attention between every pair of its tokens (a dense mask skips nothing). ``segments``:
    the padded packed rows run :mod:`mint_engine.segment_attention`, which skips the block between
    the two answers.
    """
    if packed:
        lengths = [len(f["prompt_ids"]) + len(f["chosen_ids"]) + len(f["rejected_ids"]) for f in features]
        p, c, r = (max(len(f[k]) for f in features) for k in ("prompt_ids", "chosen_ids", "rejected_ids"))
        row, rows = p + c + r, len(features)
        pairs = (p + c) ** 2 + r * (p + r) if segments else row * row
    else:
        lengths = [len(f["prompt_ids"]) + len(f[k]) for k in ("chosen_ids", "rejected_ids") for f in features]
        row, rows = max(lengths), len(lengths)
        pairs = row * row
    total = sum(lengths)
    return {"padded": rows * row + attention_weight * rows * pairs,
            "padding_free": total + attention_weight * total * total}


def logits_token_logps(logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """Each scored token's log-probability from kept logits ``[rows, K, V]``: ``logit[target] - logsumexp``
    at scored tokens only (the log-softmax over the vocabulary is never materialized)."""
    logits = logits.float()
    rows, cols, toks = batch["g_row"], batch["g_col"], batch["g_tok"]
    lse = torch.logsumexp(logits, dim=-1)  # [rows, K]
    return logits[rows, cols, toks] - lse[rows, cols]


def gather_weights(batch: dict[str, Any], features: Sequence[dict[str, Any]]) -> torch.Tensor:
    """``g_weight``: each scored token's weight from its feature's ``chosen_weights``/``rejected_weights``.

    Every layout lists an answer's tokens in order, so the j-th gathered token of a pair and kind
    is that answer's token j. Prompt tokens (NLL only) weigh 1.
    """
    seen: dict[tuple[int, int], int] = {}
    weights = []
    for pair, kind in zip(batch["g_pair"].tolist(), batch["g_kind"].tolist()):
        if kind == KIND_PROMPT:
            weights.append(1.0)
            continue
        j = seen.get((pair, kind), 0)
        seen[(pair, kind)] = j + 1
        weights.append(float(features[pair]["chosen_weights" if kind == KIND_CHOSEN else "rejected_weights"][j]))
    return torch.tensor(weights, dtype=torch.float32)


def pair_statistics(token_logps: torch.Tensor, batch: dict[str, Any], n_pairs: int) -> dict[str, torch.Tensor]:
    """Per-pair mean answer log-probs and the batch NLL from the scored tokens' log-probabilities.

    Sums per pair and kind: the same quantities as TRL's ``get_batch_logps(average_log_prob=True)``
    and its chosen ``CrossEntropyLoss``. With ``g_weight`` (:func:`gather_weights`) the answers'
    log-probs count only the weighted tokens (their mean over those tokens); the NLL is unchanged.
    """
    pairs, kinds = batch["g_pair"], batch["g_kind"]
    zeros = token_logps.new_zeros(n_pairs)
    weight = batch.get("g_weight")
    counted = token_logps if weight is None else token_logps * weight.to(token_logps.dtype)
    chosen_sum = zeros.index_add(0, pairs, torch.where(kinds == KIND_CHOSEN, counted, 0.0))
    rejected_sum = zeros.index_add(0, pairs, torch.where(kinds == KIND_REJECTED, counted, 0.0))
    nll_sum = -torch.where(kinds != KIND_REJECTED, token_logps, 0.0).sum()
    if weight is None:
        n_chosen, n_rejected = batch["n_chosen"].to(chosen_sum.dtype), batch["n_rejected"].to(chosen_sum.dtype)
    else:
        w = weight.to(zeros.dtype)
        n_chosen = zeros.index_add(0, pairs, torch.where(kinds == KIND_CHOSEN, w, 0.0)).clamp(min=1.0)
        n_rejected = zeros.index_add(0, pairs, torch.where(kinds == KIND_REJECTED, w, 0.0)).clamp(min=1.0)
    return {"chosen_logps": chosen_sum / n_chosen,
            "rejected_logps": rejected_sum / n_rejected,
            "nll": nll_sum / batch["n_nll"].to(nll_sum.dtype),
            "chosen_logps_sum": chosen_sum, "rejected_logps_sum": rejected_sum}


def forward_pairs(model: Any, batch: dict[str, Any], *, mask_kind: str | None = None,
                  frozen_cache: Any = None, fused: bool = True,
                  projection_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Run ``model`` on a collated batch (either layout) and return :func:`pair_statistics`.

    The packed layout (``segment_ids`` present) needs ``mask_kind`` (see :func:`mint_core.decoder.mask_kind_for`).
    ``frozen_cache`` (a :class:`mint_engine.frozen_cache.FrozenBottomCache`; packed batches carrying
    ``feature_index``) replaces the frozen bottom layers' forward by the cached states. ``fused``: when
    the model's vocabulary projection allows it (:func:`mint_engine.vocab.fused_projection`), the
    model returns its final hidden states only and the scored tokens' log-probabilities are computed
    in chunks (:func:`mint_engine.vocab.token_log_probs`, its products in ``projection_dtype``: the
    mixed-precision dtype the model's forward runs in); else from the kept logits.
    """
    from mint_engine.vocab import fused_projection, token_log_probs

    n_pairs = int(batch["n_chosen"].shape[0])
    kwargs = {k: v for k, v in batch.items() if k not in GATHER_KEYS}
    if "pixel_values" in kwargs:  # images arrive as fp32; the vision tower may hold bf16 weights
        kwargs["pixel_values"] = kwargs["pixel_values"].to(_param_dtype(model))
    if "segment_ids" in batch:
        if mask_kind is None:
            raise ValueError("the packed layout needs a 4D-mask-capable attention (sdpa or eager)")
        dtype = _compute_dtype(model)
        kwargs["attention_mask"] = build_pair_mask(batch["segment_ids"], kind=mask_kind, dtype=dtype,
                                                   pair_ids=batch.get("pair_ids"))
        if "segment_bounds" in batch and attention_implementation(model) == SEGMENT_KERNEL:
            kwargs["segment_bounds"] = tuple(batch["segment_bounds"].tolist())
    weight = fused_projection(model) if fused else None
    keep = batch["logits_to_keep"]
    if weight is not None:  # the model's own forward (wrappers see a normal call), no vocabulary projection
        kwargs.update(logits_to_keep=keep[:0], output_hidden_states=True)
    else:
        kwargs["logits_to_keep"] = keep
    kwargs["use_cache"] = False
    with _no_projection(model) if weight is not None else contextlib.nullcontext():
        if frozen_cache is not None:
            outputs = frozen_cache.forward(model, kwargs, segment_ids=batch["segment_ids"],
                                           feature_index=batch["feature_index"], dtype=_param_dtype(model))
        else:
            outputs = model(**kwargs)
    if weight is None:
        return pair_statistics(logits_token_logps(outputs.logits, batch), batch, n_pairs)
    hidden = outputs.hidden_states[-1][batch["g_row"], keep.to(batch["g_col"].device)[batch["g_col"]]]
    return pair_statistics(token_log_probs(hidden, weight, batch["g_tok"], projection_dtype), batch, n_pairs)


@contextlib.contextmanager
def _no_projection(model: Any) -> Iterator[None]:
    """The model's ``lm_head`` returns an empty tensor for the block: its forward projects no position
    (``logits_to_keep`` is empty), but under autocast the call would still cast the whole weight."""
    inner = model
    while hasattr(inner, "module") and not hasattr(inner, "get_output_embeddings"):
        inner = inner.module
    head = inner.get_output_embeddings()
    head.forward = lambda hidden: hidden.new_empty(*hidden.shape[:-1], head.out_features)
    try:
        yield
    finally:
        del head.forward


def _compute_dtype(model: Any) -> torch.dtype:
    if torch.is_autocast_enabled("cpu") or (torch.cuda.is_available() and torch.is_autocast_enabled("cuda")):
        return torch.float32  # additive masks are added to fp32-promoted scores under autocast
    return _param_dtype(model)


def _param_dtype(model: Any) -> torch.dtype:
    try:
        return next(p for p in model.parameters() if p.is_floating_point()).dtype
    except StopIteration:
        return torch.float32
