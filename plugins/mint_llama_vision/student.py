"""The ``llama-vision`` student: loading, LoRA, encoding, batched generation and scoring for Mllama.

Inputs follow ``MllamaProcessor``'s layout, built per example by :meth:`LlamaVisionModel.encode` and
batched by :func:`collate`. The prompt text goes through the checkpoint's chat template with the
image as ``{"type": "image"}`` content (one ``<|image|>`` token); the tokenizer and the image
processor are called separately so the ``cross_attention_mask`` can be built over the whole
prompt+completion sequence: every token from ``<|image|>`` on attends to the image, completion
tokens included (masking the completion off the image is the classic pitfall of feeding Mllama
to a trainer that re-pads only ``input_ids``).
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch

from mint_core.components import Student, StudentModel
from mint_core.decoder import build_pair_mask, cross_attention_layers, decoder_of, decoder_slice, mask_kind_for
from mint_core.registry import MintError
from mint_core.types import Prompt
from mint_llama.student import pick_device, pick_dtype, require_4bit  # shared with the text student
from mint_llama_vision.config import DEFAULT_MODEL, TINY, LlamaVisionConfig

if TYPE_CHECKING:
    from mint_core.context import RunContext

#: Per-example keys holding image tensors (no batch dimension; ``collate`` stacks them).
IMAGE_KEYS = ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")
_LM_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def resolve_device(name: str) -> torch.device:
    device = pick_device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MintError(f"student.device={name} but CUDA is not available; use student.device=cpu (or auto)")
    return device


def lora_target_regex(target_modules: str, *, projector: bool, layers: Sequence[int] | None = None) -> str:
    """A peft ``target_modules`` regex (full match on module names) limited to the language model.

    Names like ``q_proj`` also exist in the vision tower, so plain names would adapt it too; the
    regex anchors them under ``language_model``. ``all-linear`` means every projection of the
    self- and cross-attention layers and the MLPs (the LM head is left out, as peft does).
    ``layers`` limits LoRA to those language-model layer indices (None: every layer).
    """
    spec = target_modules.strip()
    names = _LM_LINEAR if spec in ("all-linear", "") else tuple(n.strip() for n in spec.split(",") if n.strip())
    bad = [n for n in names if not n.replace("_", "").isalnum()]
    if bad:
        raise MintError(f"student.lora_target_modules: {bad} are not module names; use all-linear or q_proj,v_proj")
    where = r".*" if layers is None else rf"layers\.({'|'.join(str(i) for i in sorted(set(layers)))})\..*"
    pattern = rf"(.*\.)?language_model\.{where}\.({'|'.join(names)})"
    if projector:
        pattern += r"|(.*\.)?multi_modal_projector"
    return pattern


#: ``student.full_train`` names -> the module names peft's ``modules_to_save`` gets.
FULL_TRAIN = {"cross_attn": None, "projector": "multi_modal_projector", "vision": "vision_model"}


def is_built_from_text(path: str | Path) -> bool:
    """Whether ``path`` holds an Mllama that :mod:`mint_llama_vision.from_text` built (new, untrained vision side)."""
    import json

    recipe = Path(path) / "mint_recipe.json"
    return recipe.is_file() and "text_model" in json.loads(recipe.read_text(encoding="utf-8"))


def full_train_parts(config: LlamaVisionConfig, *, built: bool = False) -> list[str]:
    """``student.full_train`` resolved: ``auto`` is every new part for a model built from a text model
    (``built``, the default ``smollm2`` among them), nothing for other checkpoints."""
    spec = config.full_train.strip()
    if spec == "auto":
        return list(FULL_TRAIN) if built else []
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    bad = [p for p in parts if p not in FULL_TRAIN]
    if bad:
        raise MintError(f"student.full_train: {bad} unknown; use a comma-separated subset of "
                        f"{', '.join(FULL_TRAIN)}, '' (LoRA only) or auto")
    return parts


def lora_layer_indices(config: LlamaVisionConfig, text_config: Any, *, built: bool = False) -> list[int] | None:
    """Language-model layers LoRA adapts (None: all), from ``student.lora_layers``.

    ``auto``: for a model built from a text model, the layers from the first cross-attention layer on. Below it
    the image cannot matter, and leaving those layers frozen means the backward pass stops there
    (measured: see the README's vision-student sweep); every layer for other checkpoints.
    """
    spec = config.lora_layers.strip()
    n = text_config.num_hidden_layers
    cross = set(getattr(text_config, "cross_attention_layers", None) or [])
    if spec in ("all", "") or (spec == "auto" and not built):
        chosen = list(range(n))
    elif spec == "auto":
        chosen = list(range(min(cross) if cross else 0, n))
    elif spec == "none":
        chosen = []
    else:
        try:
            chosen = [int(item) for item in spec.split(",") if item.strip()]
        except ValueError:
            raise MintError(f"student.lora_layers={spec!r}: use auto, all, none or comma-separated layer indices") from None
        if any(not 0 <= i < n for i in chosen):
            raise MintError(f"student.lora_layers={spec!r}: the language model has layers 0..{n - 1}")
    if "cross_attn" in full_train_parts(config, built=built):  # trained in full: no LoRA inside them
        chosen = [i for i in chosen if i not in cross]
    return None if chosen == list(range(n)) else chosen


def lora_config(config: LlamaVisionConfig, text_config: Any = None, *, built: bool = False):
    """The peft ``LoraConfig`` from the student config (TRL trainers take it as ``peft_config``).

    ``text_config`` (the checkpoint's language-model config) places per-layer choices; without
    it LoRA covers every layer and nothing trains in full. ``built``: the model was built from a
    text model (see :func:`is_built_from_text`), which is what ``auto`` options look at.
    """
    from peft import LoraConfig

    parts = full_train_parts(config, built=built) if text_config is not None else []
    layers = lora_layer_indices(config, text_config, built=built) if text_config is not None else None
    save = [FULL_TRAIN[p] for p in parts if FULL_TRAIN[p]]
    if "cross_attn" in parts:
        save += [f"language_model.layers.{i}" for i in text_config.cross_attention_layers]
    projector = config.lora_projector and "projector" not in parts
    if layers == [] and not projector:
        targets: Any = []  # full training only
    else:
        targets = lora_target_regex(config.lora_target_modules, projector=projector, layers=layers)
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, bias="none",
                      target_modules=targets, modules_to_save=save or None, task_type="CAUSAL_LM")


class LlamaVisionStudent(Student):
    modality = "image"

    def __init__(self, config: LlamaVisionConfig):
        self.config = config
        self._log = print

    def model_path(self) -> str:
        """The folder or hub id to load: the cached tiny model is built on first use."""
        if self.config.model == TINY:
            from mint_llama_vision.tiny import ensure_tiny_mllama

            return str(ensure_tiny_mllama())
        if self.config.model == DEFAULT_MODEL:
            from mint_llama_vision.from_text import ensure_default

            return str(ensure_default(log=self._log))
        return self.config.model

    def load(self, *, ctx: RunContext, adapter_dir: Path | None = None, trainable: bool = False) -> LlamaVisionModel:
        from transformers import AutoProcessor, MllamaForConditionalGeneration

        cfg = self.config
        device = resolve_device(cfg.device)
        dtype = pick_dtype(cfg.dtype, device)
        if ctx is not None:
            self._log = ctx.log
        path = self.model_path()
        kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": True, "trust_remote_code": False}
        if cfg.load_in_4bit:
            kwargs.update(_four_bit_kwargs(device, dtype))
        try:
            processor = AutoProcessor.from_pretrained(path, trust_remote_code=False)
            model = MllamaForConditionalGeneration.from_pretrained(path, **kwargs)
        except OSError as exc:
            raise MintError(f"student.model={cfg.model!r}: cannot load an Mllama checkpoint from {path!r} ({exc}). "
                            "Give a local folder or a hub id reachable from here (hub ids need network and, "
                            f"for gated models, a token), or student.model={TINY} for the offline default.") from exc
        if not cfg.load_in_4bit:
            model.to(device)
        built = is_built_from_text(path)
        model = self._attach_adapter(model, ctx=ctx, adapter_dir=adapter_dir, trainable=trainable, built=built)
        model.train(trainable)
        return LlamaVisionModel(model=model, processor=processor, ctx=ctx, device=device, config=cfg,
                                built_from_text=built)

    def _attach_adapter(self, model: Any, *, ctx: RunContext, adapter_dir: Path | None, trainable: bool,
                        built: bool = False) -> Any:
        from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

        cfg = self.config
        if cfg.load_in_4bit and trainable:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        if adapter_dir is not None:
            adapter_dir = Path(adapter_dir)
            if not (adapter_dir / "adapter_model.safetensors").is_file():
                raise MintError(f"No adapter_model.safetensors in {adapter_dir}: MINT only loads safetensors "
                                "adapters (students/<optimizer>/adapter). Re-save with safe_serialization=True.")
            if ctx is not None:
                ctx.log(f"Student adapter: {adapter_dir}{' (training continues)' if trainable else ''}")
            return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
        if not trainable:
            return model
        lora = lora_config(cfg, model.config.text_config, built=built)
        if ctx is not None:
            torch.manual_seed(ctx.seed)  # LoRA A matrices start random: same seed, same start
        model = get_peft_model(model, lora)
        if "vision" not in full_train_parts(cfg, built=built):
            # peft freezes everything but the LoRA weights; make the frozen vision tower explicit anyway,
            # so a later unfreeze never trains it by accident.
            for name, param in model.named_parameters():
                if ".vision_model." in name:
                    param.requires_grad_(False)
        return model


def _four_bit_kwargs(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    require_4bit(device)
    if dtype == torch.float32:
        dtype = torch.bfloat16  # 4-bit compute in fp32 is slow for nothing
    from transformers import BitsAndBytesConfig

    # The vision tower and projector stay in full precision: quantizing them costs accuracy for little memory.
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                               bnb_4bit_use_double_quant=True,
                               llm_int8_skip_modules=["vision_model", "multi_modal_projector", "lm_head"])
    return {"quantization_config": quant, "device_map": {"": device.index if device.index is not None else torch.cuda.current_device()}}


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    size = max(1, int(size))
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _drop_last_token(feature: dict[str, Any]) -> dict[str, Any]:
    out = dict(feature, input_ids=feature["input_ids"][:-1])
    if "cross_attention_mask" in feature:
        out["cross_attention_mask"] = feature["cross_attention_mask"][:-1]
    return out


def collate(features: Sequence[dict[str, Any]], *, pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Batch :meth:`LlamaVisionModel.encode` outputs into model inputs (``MllamaProcessor`` layout).

    Pads ``input_ids`` (with ``pad_id``), ``attention_mask`` and ``cross_attention_mask`` (with 0)
    on ``padding_side`` (``left`` for generation) and stacks the image tensors. Every example
    must have an image, or none.
    """
    has_image = [("pixel_values" in f) for f in features]
    if any(has_image) and not all(has_image):
        raise ValueError("collate: a batch mixes prompts with and without an image; give every prompt an image")
    length = max(len(f["input_ids"]) for f in features)
    batch: dict[str, list[torch.Tensor]] = {"input_ids": [], "attention_mask": []}
    if all(has_image):
        batch.update({"cross_attention_mask": [], **{key: [] for key in IMAGE_KEYS}})
    for feature in features:
        ids = torch.as_tensor(feature["input_ids"], dtype=torch.long)
        pad = length - len(ids)
        ones = torch.ones(len(ids), dtype=torch.long)
        if padding_side == "left":
            batch["input_ids"].append(torch.cat([ids.new_full((pad,), pad_id), ids]))
            batch["attention_mask"].append(torch.cat([ones.new_zeros(pad), ones]))
        else:
            batch["input_ids"].append(torch.cat([ids, ids.new_full((pad,), pad_id)]))
            batch["attention_mask"].append(torch.cat([ones, ones.new_zeros(pad)]))
        if "pixel_values" in feature:
            mask = torch.as_tensor(feature["cross_attention_mask"], dtype=torch.long)
            zeros = mask.new_zeros((pad, *mask.shape[1:]))
            batch["cross_attention_mask"].append(torch.cat([zeros, mask] if padding_side == "left" else [mask, zeros]))
            for key in IMAGE_KEYS:
                batch[key].append(torch.as_tensor(feature[key]))
    return {key: torch.stack(values) for key, values in batch.items()}


class LlamaVisionModel(StudentModel):
    """A loaded Mllama (optionally with a LoRA adapter) and its processor."""

    modality = "image"

    def __init__(self, *, model: Any, processor: Any, ctx: RunContext | None, device: torch.device,
                 config: LlamaVisionConfig | None = None, built_from_text: bool = False):
        self.config = config or LlamaVisionConfig()
        #: Built by :mod:`mint_llama_vision.from_text`: ``auto`` options train its new vision side in full.
        self.built_from_text = built_from_text
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.ctx = ctx
        self.device = device
        tok = self.tokenizer
        vocab = tok.get_vocab()
        # Instruct checkpoints end a turn with <|eot_id|>; fall back to EOS for base checkpoints.
        self.end_token = "<|eot_id|>" if "<|eot_id|>" in vocab else tok.eos_token
        self.end_token_id: int = tok.convert_tokens_to_ids(self.end_token)
        self.image_token_id: int = processor.image_token_id
        self.pad_token_id: int = tok.pad_token_id if tok.pad_token_id is not None else self.end_token_id
        self.max_tiles: int = processor.image_processor.max_image_tiles
        eos = self._base().generation_config.eos_token_id
        self.stop_token_ids: list[int] = sorted({self.end_token_id, *(eos if isinstance(eos, list) else [eos] if eos is not None else [])})
        params = inspect.signature(self._base().forward).parameters
        # transformers >= 5.2x renamed past_key_values -> cache (the old name still works, with a warning).
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    # Short aliases, kept because other plugins' code uses them.
    @property
    def pad_id(self) -> int:
        return self.pad_token_id

    @property
    def end_id(self) -> int:
        return self.end_token_id

    def _base(self) -> Any:
        """The underlying transformers model, below any peft wrapper."""
        model = self.model
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    # ----------------------------------------------------------------------------------------- encode
    def messages(self, prompt: Prompt) -> list[dict[str, Any]]:
        """Chat messages for ``prompt``: one user turn, the image first when there is one.

        Llama 3.2 Vision's template refuses a system message next to an image, so ``prompt.system``
        is always folded into the user turn (text-only prompts too, so both read alike).
        """
        text = f"{prompt.system.strip()}\n\n{prompt.text}" if prompt.system else prompt.text
        if prompt.image is None:
            return [{"role": "user", "content": text}]
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]

    def lora_config(self):
        """The peft ``LoraConfig`` of this student (LoRA placement and fully trained modules)."""
        return lora_config(self.config, self._base().config.text_config, built=self.built_from_text)

    def completion_ids(self, completion: str, *, end: bool = True) -> list[int]:
        """Token ids of an answer, followed by the end-of-turn token when ``end``."""
        ids = list(self.tokenizer(completion, add_special_tokens=False)["input_ids"])
        return ids + [self.end_token_id] if end else ids

    def prompt_text(self, prompt: Prompt) -> str:
        """The prompt through the chat template, ending with the assistant header."""
        source = self.processor if getattr(self.processor, "chat_template", None) else self.tokenizer
        return source.apply_chat_template(self.messages(prompt), add_generation_prompt=True, tokenize=False)

    def _image_path(self, image: str) -> Path:
        path = self.ctx.resolve(image) if self.ctx is not None else Path(image)
        if not path.is_file():
            raise MintError(f"prompt image {image!r} not found (looked at {path}); images are paths relative to "
                            "the run directory")
        return path

    def image_inputs(self, image: str) -> dict[str, torch.Tensor]:
        """``pixel_values`` (images, tiles, C, H, W), ``aspect_ratio_ids`` (images,), ``aspect_ratio_mask``
        (images, tiles) for one image, plus the number of tiles actually used."""
        from PIL import Image

        with Image.open(self._image_path(image)) as handle:
            rgb = handle.convert("RGB")
        out = self.processor.image_processor(images=[[rgb]], return_tensors="pt")
        inputs = {key: out[key][0] for key in IMAGE_KEYS}
        inputs["num_tiles"] = int(out["num_tiles"][0][0])
        return inputs

    def encode(self, *, prompt: Prompt, completion: str | None = None) -> dict[str, Any]:
        """Model inputs for one example; see the module docstring for the layout.

        ``completion`` is followed by the end-of-turn token (``<|eot_id|>``), the token generation
        stops at. ``cross_attention_mask`` has shape (len(input_ids), images, tiles).
        """
        tok = self.tokenizer
        prompt_ids: list[int] = tok(self.prompt_text(prompt), add_special_tokens=False)["input_ids"]
        ids = list(prompt_ids)
        if completion is not None:
            ids += self.completion_ids(completion)
        encoded: dict[str, Any] = {"input_ids": ids, "prompt_length": len(prompt_ids)}
        if prompt.image is not None:
            image = self.image_inputs(prompt.image)
            positions = [i for i, token in enumerate(prompt_ids) if token == self.image_token_id]
            if len(positions) != 1:
                raise MintError(f"the chat template produced {len(positions)} image tokens for one image; "
                                f"check the chat template of student.model")
            mask = torch.zeros((len(ids), 1, self.max_tiles), dtype=torch.long)
            mask[positions[0]:, 0, :image.pop("num_tiles")] = 1  # through the end of the completion
            encoded.update(image, cross_attention_mask=mask)
        return encoded

    def collate(self, features: Sequence[dict[str, Any]], padding_side: str = "right") -> dict[str, torch.Tensor]:
        return collate(features, pad_id=self.pad_token_id, padding_side=padding_side)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        dtype = next(p.dtype for p in self._base().parameters() if p.is_floating_point())
        return {key: value.to(self.device, dtype=dtype if key == "pixel_values" else None)
                for key, value in batch.items()}

    # --------------------------------------------------------------------------------------- generate
    @torch.no_grad()
    def generate(self, *, prompts: Sequence[Prompt], max_new_tokens: int, batch_size: int) -> list[str]:
        """Greedy answers, batched with left padding; decoding stops at the end-of-turn token."""
        answers: list[str] = []
        with self._eval_mode():
            for chunk in _batches(prompts, batch_size):
                batch = self._to_device(self.collate([self.encode(prompt=p) for p in chunk], padding_side="left"))
                out = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                          eos_token_id=self.stop_token_ids, pad_token_id=self.pad_token_id)
                new = out[:, batch["input_ids"].shape[1]:]
                answers += [text.strip() for text in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
        return answers

    # ------------------------------------------------------------------------------------------ score
    @torch.no_grad()
    def score(self, *, prompts: Sequence[Prompt], candidates: Sequence[str], batch_size: int,
              cached: bool = True, end: bool = False) -> list[list[float]]:
        """Sum of log-probabilities of each candidate answer text given each prompt: ``[n_prompts][n_candidates]``.

        As for the text student, a candidate is scored as the exact text the model would generate;
        ``end=True`` adds the end-of-turn token. With ``cached`` (default) the prompt, image
        included, runs once per case and its KV cache (self-attention keys/values of the prompt,
        cross-attention keys/values of the image) is shared by the candidates, scored
        ``batch_size`` at a time; ``cached=False`` is :meth:`score_naive`.
        """
        if not cached:
            return self.score_naive(prompts=prompts, candidates=candidates, batch_size=batch_size, end=end)
        cand_ids = [self.completion_ids(c, end=end) for c in candidates]
        if any(not ids for ids in cand_ids):
            raise ValueError("score: an empty candidate has no tokens to score (pass end=True or non-empty text)")
        scores: list[list[float] | None] = [None] * len(prompts)
        with self._eval_mode():
            encoded = [self.encode(prompt=prompt) for prompt in prompts]
            depth = self._image_free_depth()
            # Prompts with the same text and an image (every tile of the tissue task) share their
            # image-free bottom: one run of it per text for all tiles and candidates (_score_shared).
            groups: dict[tuple[int, ...], list[int]] = {}
            for index, feature in enumerate(encoded):
                if depth > 0 and "pixel_values" in feature:
                    groups.setdefault(tuple(feature["input_ids"]), []).append(index)
                else:
                    scores[index] = self._score_cached(feature, cand_ids, batch_size)
            for members in groups.values():
                rows = self._score_shared([encoded[i] for i in members], cand_ids, depth=depth, batch_size=batch_size)
                for index, row in zip(members, rows):
                    scores[index] = row
        return scores  # type: ignore[return-value]

    def _image_free_depth(self) -> int:
        """Language-model layers below the first cross-attention layer: their states never see the image."""
        cross = cross_attention_layers(decoder_of(self.model))
        return int(cross[0]) if cross else 0

    def _score_shared(self, features: Sequence[dict[str, Any]], cand_ids: list[list[int]], *, depth: int,
                      batch_size: int) -> list[list[float]]:
        """Scores for prompts that differ only in their image, the bottom ``depth`` layers run once.

        One row holds the prompt and every candidate after it, each candidate attending to the
        prompt and to itself (positions continue from the prompt's, as in :meth:`_score_cached`).
        Below the first cross-attention layer a token's state is a function of the text alone, so
        the row's states entering layer ``depth`` serve every image; per image only the vision tower,
        the cross-attention layer and the layers above it run, ``batch_size`` images at a time.
        Same scores as :meth:`_score_cached` (tests); ~10x less work for SmolLM2-vision (28 of 31 layers).
        """
        prompt_ids = list(features[0]["input_ids"])
        n_prompt = len(prompt_ids)
        ids, segment, positions, starts = list(prompt_ids), [0] * n_prompt, list(range(n_prompt)), []
        for number, c in enumerate(cand_ids, start=1):
            starts.append(len(ids))
            ids += c
            segment += [number] * len(c)
            positions += range(n_prompt, n_prompt + len(c))
        decoder = decoder_of(self.model)
        # The packed layout's mask (segment 0 = the prompt, one segment per candidate); sdpa takes it
        # as bool, eager as additive.
        mask = build_pair_mask(torch.as_tensor([segment], device=self.device), kind=mask_kind_for(self._base()) or "bool",
                               dtype=decoder.embed_tokens.weight.dtype)
        position_ids = torch.as_tensor(positions, device=self.device)[None]
        with decoder_slice(decoder, 0, depth, final_norm=False):
            bottom = decoder(input_ids=torch.as_tensor(ids, device=self.device)[None], attention_mask=mask,
                             position_ids=position_ids, use_cache=False).last_hidden_state
        # Logits are needed where a candidate token is predicted: the prompt's last position and each
        # candidate's positions but its last. Candidate i reads kept columns 0 and its own run, the
        # same for every tile.
        keep, columns = [n_prompt - 1], []
        for s, c in zip(starts, cand_ids):
            columns.append(torch.as_tensor([0, *range(len(keep), len(keep) + len(c) - 1)], device=self.device))
            keep += [s + j for j in range(len(c) - 1)]
        targets = [torch.as_tensor(c, device=self.device) for c in cand_ids]
        results: list[list[float]] = []
        for chunk in _batches(features, batch_size):
            rows = []
            for feature in chunk:
                prompt_mask = torch.as_tensor(feature["cross_attention_mask"], dtype=torch.long)
                tail = prompt_mask[-1:].expand(len(ids) - n_prompt, *prompt_mask.shape[1:])
                rows.append(dict(feature, input_ids=ids, cross_attention_mask=torch.cat([prompt_mask, tail])))
            batch = self._to_device(self.collate(rows))
            n = len(chunk)
            batch.pop("input_ids")
            batch.update(inputs_embeds=bottom.expand(n, -1, -1), attention_mask=mask.expand(n, -1, -1, -1),
                         position_ids=position_ids.expand(n, -1), use_cache=False,
                         logits_to_keep=torch.as_tensor(keep, device=self.device))
            with decoder_slice(decoder, depth, None):
                logprobs = torch.log_softmax(self.model(**batch).logits.float(), dim=-1)
            for row in range(n):
                results.append([float(logprobs[row, cols, target].double().sum())
                                for cols, target in zip(columns, targets)])
        return results

    def _score_cached(self, encoded: dict[str, Any], cand_ids: list[list[int]], batch_size: int) -> list[float]:
        from transformers import DynamicCache

        prompt = self._to_device(self.collate([encoded]))
        out = self.model(**prompt, use_cache=True)
        cache = getattr(out, "cache", None) or out.past_key_values
        first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        prompt_len = prompt["input_ids"].shape[1]
        tile_mask = prompt["cross_attention_mask"][:, -1:] if "cross_attention_mask" in prompt else None
        result: list[float] = []
        for chunk in _batches(cand_ids, batch_size):
            n, length = len(chunk), max(len(c) for c in chunk)
            ids = torch.full((n, length), self.pad_token_id, dtype=torch.long, device=self.device)
            valid = torch.zeros((n, length), dtype=torch.long, device=self.device)
            for row, c in enumerate(chunk):
                ids[row, :len(c)] = torch.as_tensor(c, device=self.device)
                valid[row, :len(c)] = 1
            # A fresh cache per chunk: decoding appends to the self-attention layers in place. A prompt
            # without an image (the content-free calibration prompt) leaves the cross-attention layers
            # empty (None): they stay empty, and Mllama skips them for the candidates too.
            chunk_cache = DynamicCache([(None, None) if k is None else (k.expand(n, *k.shape[1:]), v.expand(n, *v.shape[1:]))
                                        for k, v in layers])
            inputs: dict[str, Any] = {
                "input_ids": ids,
                "attention_mask": torch.cat([valid.new_ones((n, prompt_len)), valid], dim=1),
                "position_ids": torch.arange(prompt_len, prompt_len + length, device=self.device).expand(n, -1),
                self._cache_kw: chunk_cache, "use_cache": True,
            }
            if tile_mask is not None:
                # Candidate tokens come after <|image|>: they attend to the image, like in encode().
                inputs["cross_attention_mask"] = tile_mask.expand(n, length, *tile_mask.shape[2:])
            logits = self.model(**inputs).logits.float()
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1)  # position j predicts token j+1
            for row, c in enumerate(chunk):
                total = first[c[0]].double()
                if len(c) > 1:
                    targets = torch.as_tensor(c[1:], device=self.device)
                    total = total + logprobs[row, torch.arange(len(c) - 1, device=self.device), targets].double().sum()
                result.append(float(total))
        return result

    @torch.no_grad()
    def score_naive(self, *, prompts: Sequence[Prompt], candidates: Sequence[str], batch_size: int,
                    end: bool = False) -> list[list[float]]:
        """Reference for :meth:`score`: every prompt+candidate sequence run in full, no cache."""
        scores = []
        with self._eval_mode():
            for prompt in prompts:
                features = [self.encode(prompt=prompt, completion=c) for c in candidates]
                if not end:  # drop the end-of-turn token that encode() appends
                    features = [_drop_last_token(f) for f in features]
                row: list[float] = []
                for chunk in _batches(features, batch_size):
                    logprobs = torch.log_softmax(self.model(**self._to_device(self.collate(chunk))).logits.float(), -1)
                    for i, feature in enumerate(chunk):
                        start, ids = feature["prompt_length"], feature["input_ids"]
                        targets = torch.as_tensor(ids[start:], device=self.device)
                        positions = torch.arange(start - 1, len(ids) - 1, device=self.device)
                        row.append(float(logprobs[i, positions, targets].double().sum()))
                scores.append(row)
        return scores

    # ---------------------------------------------------------------------------------------- helpers
    @contextmanager
    def _eval_mode(self) -> Iterator[None]:
        """Inference without dropout, then back to the mode the caller (a trainer) had."""
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)
