"""The llama-text student on a tiny random Llama built offline (mint_llama.testing)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mint_llama
from mint_core.context import RunContext
from mint_core.registry import MintError, Registry
from mint_core.types import Prompt
from mint_llama import LlamaTextConfig
from mint_llama import resolve as resolve_mod
from mint_llama.testing import build_tiny_llama

PROMPTS = [
    Prompt("A 7-year-old boy with seizures and microcephaly. List the 3 most likely diseases."),
    Prompt("Tall stature, arachnodactyly and lens dislocation.", system="You are a careful clinical geneticist."),
    Prompt("Hypotonia."),
]
CANDIDATES = [
    "Most likely diseases:\n1. Marfan syndrome\n",
    "Most likely diseases:\n1. Angelman syndrome\n",
    "Most likely diseases:\n1. Noonan syndrome\n2. Kabuki syndrome\n3. Down syndrome",
    "x",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> RunContext:
    return RunContext(run_dir=tmp_path_factory.mktemp("run"), seed=0)


@pytest.fixture(scope="module")
def student(tiny_dir):
    registry = Registry()
    info = registry.register_plugin(mint_llama, name="llama_text")
    assert info.status == "ok", info.error
    spec = registry.get("student", "llama-text")
    config = spec.default_config()
    config.model = str(tiny_dir)
    config.lora_r = 4
    config.lora_alpha = 8
    config.inference_dtype = "float32"  # the scoring paths are compared in the reference numerics
    return spec.create(config)


@pytest.fixture(scope="module")
def model(student, ctx):
    torch.manual_seed(0)
    return student.load(ctx=ctx)


def test_tiny_llama_is_deterministic_and_small(tmp_path):
    a = build_tiny_llama(tmp_path / "a", seed=3)
    b = build_tiny_llama(tmp_path / "b", seed=3)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    assert not list(a.glob("*.bin")), "weights must be safetensors only"


def test_default_config_and_lora(student, model):
    assert LlamaTextConfig().model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    lora = model.lora_config()
    assert (lora.r, lora.lora_alpha, lora.target_modules) == (4, 8, "all-linear")
    assert model.modality == "text" and model.processor is model.tokenizer


def test_encode_prompt_length_and_end_token(model):
    tok = model.tokenizer
    plain = model.encode(prompt=PROMPTS[1])
    full = model.encode(prompt=PROMPTS[1], completion="Most likely diseases:\n1. Marfan syndrome")
    assert full["prompt_length"] == plain["prompt_length"] == len(plain["input_ids"])
    assert full["input_ids"][:full["prompt_length"]] == plain["input_ids"]
    prompt_text = tok.decode(plain["input_ids"])
    assert prompt_text.startswith("<|im_start|>system\nYou are a careful clinical geneticist.<|im_end|>")
    assert prompt_text.endswith("<|im_start|>assistant\n")
    completion = full["input_ids"][full["prompt_length"]:]
    # The answer ends with the chat template's end-of-turn token, which is what generation stops on.
    assert completion[-1] == tok.convert_tokens_to_ids("<|im_end|>") == model.end_token_id
    assert model.end_token_id in model.stop_token_ids
    assert tok.decode(completion[:-1]) == "Most likely diseases:\n1. Marfan syndrome"
    assert "system" not in tok.decode(model.encode(prompt=PROMPTS[0])["input_ids"])


def test_generate_batch_matches_single(model):
    batched = model.generate(prompts=PROMPTS, max_new_tokens=8, batch_size=3)
    singles = [model.generate(prompts=[p], max_new_tokens=8, batch_size=1)[0] for p in PROMPTS]
    assert len(batched) == 3 and all(isinstance(text, str) for text in batched)
    assert any(batched), "the random tiny model should emit some text"
    # Left padding must not change a greedy answer (prompts have different lengths).
    assert batched == singles


@pytest.mark.parametrize("limit", [0, 1000])  # 0: the reserve is short and must grow mid-answer
def test_reserved_cache_gives_the_dynamic_cache_answers(model, monkeypatch, limit):
    from transformers import DynamicCache

    import mint_llama.kv_cache as kv_cache_module
    from mint_llama.kv_cache import ReservedCache

    used: list[ReservedCache] = []

    def reserve(*, capacity: int) -> ReservedCache:
        used.append(ReservedCache(capacity=min(capacity, limit)))
        return used[-1]

    monkeypatch.setattr(kv_cache_module, "ReservedCache", reserve)
    reserved = model.generate(prompts=PROMPTS, max_new_tokens=12, batch_size=3)
    assert used and all(c.get_seq_length() > 0 for c in used)  # generate wrote into the cache it was given
    monkeypatch.setattr(kv_cache_module, "ReservedCache", lambda capacity: DynamicCache())
    dynamic = model.generate(prompts=PROMPTS, max_new_tokens=12, batch_size=3)
    assert reserved == dynamic and any(reserved)
    # The layer itself: the same keys/values as concatenation, whatever the reserve.
    cache, plain = ReservedCache(capacity=limit), DynamicCache()
    for width in (5, 1, 1, 3):
        k, v = torch.randn(2, 3, width, 4), torch.randn(2, 3, width, 4)
        got, want = cache.update(k, v, 0), plain.update(k, v, 0)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert cache.get_seq_length() == plain.get_seq_length() == 10


def test_prefill_by_length_gives_the_one_batch_states_and_answers(model, monkeypatch):
    import mint_llama.kv_cache as kv_cache_module
    from mint_llama.kv_cache import prefill_by_length

    prompts = PROMPTS + [Prompt("Short stature."), Prompt("Ataxia, telangiectasia and recurrent infections in a child.")]
    rows = [model.prompt_ids(p) for p in prompts]
    assert len({len(row) for row in rows}) == len(rows)  # every group pads differently
    width = max(len(row) for row in rows)
    with model._inference():
        one = prefill_by_length(model.model, rows, pad_id=model.pad_token_id, capacity=width, rows_per_group=len(rows))
        groups = prefill_by_length(model.model, rows, pad_id=model.pad_token_id, capacity=width, rows_per_group=2)
    assert one.get_seq_length() == groups.get_seq_length() == width - 1
    for a, b in zip(one.layers, groups.layers):
        for r, row in enumerate(rows):
            real = slice(width - len(row), width - 1)
            torch.testing.assert_close(b.keys[r, :, real], a.keys[r, :, real], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(b.values[r, :, real], a.values[r, :, real], rtol=1e-5, atol=1e-6)
            # before the row's first token: zeros, masked as padding
            assert not b.keys[r, :, :width - len(row)].any() and not b.values[r, :, :width - len(row)].any()
    together = model.generate(prompts=prompts, max_new_tokens=12, batch_size=len(prompts))
    monkeypatch.setattr(kv_cache_module, "PREFILL_ROWS", 2)  # three groups of the five prompts
    assert model.generate(prompts=prompts, max_new_tokens=12, batch_size=len(prompts)) == together
    assert any(together)


def test_cached_score_matches_naive(model):
    cached = model.score(prompts=PROMPTS, candidates=CANDIDATES, batch_size=3)
    naive = model.score_naive(prompts=PROMPTS, candidates=CANDIDATES, batch_size=2)
    assert len(cached) == len(PROMPTS) and all(len(row) == len(CANDIDATES) for row in cached)
    # 1e-5, widened by two float32 steps of the value: a sum near -150 has a float32 spacing of 1.5e-5,
    # so on some CPUs (AMD EPYC here) another GEMM kernel's rounding alone exceeds a flat 1e-5.
    assert torch.allclose(torch.tensor(cached), torch.tensor(naive), atol=1e-5, rtol=2e-7), \
        (torch.tensor(cached) - torch.tensor(naive)).abs().max().item()
    assert all(score < 0 for row in cached for score in row)
    # Candidate batch size changes nothing, and candidates on different prompts differ.
    again = model.score(prompts=PROMPTS[:1], candidates=CANDIDATES, batch_size=1)
    assert torch.allclose(torch.tensor(again[0]), torch.tensor(cached[0]), atol=1e-5)
    assert cached[0] != cached[1]
    # An empty candidate scores 0 (nothing to predict) and does not disturb its batch mates.
    mixed = model.score(prompts=PROMPTS[:1], candidates=["", CANDIDATES[0]], batch_size=2)
    assert mixed[0][0] == 0.0 and mixed[0][1] == pytest.approx(cached[0][0], abs=1e-5)
    # The same with two prompts in one forward (left-padded).
    mixed = model.score(prompts=PROMPTS[:2], candidates=["", CANDIDATES[0]], batch_size=2)
    assert [row[0] for row in mixed] == [0.0, 0.0]
    assert [row[1] for row in mixed] == pytest.approx([cached[0][0], cached[1][0]], abs=1e-5)
    # Scoring the end-of-turn token adds a (negative) term.
    with_end = model.score(prompts=PROMPTS[:1], candidates=CANDIDATES[:1], batch_size=1, end=True)
    assert with_end[0][0] < cached[0][0]


RANKING = [f"Most likely diseases:\n1. {name}\n" for name in
           ("Marfan syndrome", "Angelman syndrome", "Noonan syndrome", "Kabuki syndrome", "Down syndrome",
            "Fabry disease", "Marfan syndrome")] + ["Most likely diseases:\n1.", "Most likely diseases:\n1. X"]


def _count_forwards(model) -> list[int]:
    calls: list[int] = []
    model.model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs["input_ids"].shape[1]),
                                          with_kwargs=True)
    return calls


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_ranking_candidates_share_the_prefix_and_pack_into_one_forward(student, ctx, attn):
    # Evaluation's ranking candidates share "Most likely diseases:\n1." and differ in a few tokens; a
    # duplicate, a candidate that is only the shared prefix and a one-token-longer one are edge cases.
    torch.manual_seed(0)
    model = student.load(ctx=ctx)
    model.model.set_attn_implementation(attn)
    calls = _count_forwards(model)
    cached = model.score(prompts=PROMPTS[:2], candidates=RANKING, batch_size=8)
    # Both prompts (left-padded, with the shared prefix) in one forward, then every candidate's
    # remaining tokens, packed on each prompt's row, in one more.
    assert len(calls) == 2, calls
    naive = model.score_naive(prompts=PROMPTS[:2], candidates=RANKING, batch_size=3)
    assert (torch.tensor(cached) - torch.tensor(naive)).abs().max().item() <= 1e-5
    # One prompt at a time (two forwards each) gives the same scores: the padding is invisible.
    calls.clear()
    alone = [model.score(prompts=[p], candidates=RANKING, batch_size=8)[0] for p in PROMPTS[:2]]
    assert len(calls) == 4, calls
    assert (torch.tensor(cached) - torch.tensor(alone)).abs().max().item() <= 1e-5
    assert cached[0][0] == pytest.approx(cached[0][6], abs=1e-5)  # same candidate, same score
    # A forward holds at most the tokens of batch_size naive rows: with batch_size=1 and many candidates
    # they spread over several packed forwards, with the same scores.
    calls.clear()
    small = model.score(prompts=PROMPTS[:1], candidates=RANKING * 6, batch_size=1)
    assert len(calls) > 2 and max(calls[1:]) <= calls[0] + max(len(model.completion_ids(c, end=False)) for c in RANKING)
    assert (torch.tensor(small[0]) - torch.tensor(cached[0] * 6)).abs().max().item() <= 1e-5


def test_cached_score_is_exact_in_float64(tiny_dir, ctx):
    # In float64 the model's own rounding is ~1e-15: any difference left would be the method's.
    config = LlamaTextConfig(model=str(tiny_dir), dtype="float64", device="cpu")
    model = mint_llama.student.LlamaTextStudent(config).load(ctx=ctx)
    assert next(model.model.parameters()).dtype == torch.float64
    cached = model.score(prompts=PROMPTS, candidates=RANKING + CANDIDATES, batch_size=4)
    naive = model.score_naive(prompts=PROMPTS, candidates=RANKING + CANDIDATES, batch_size=4)
    assert (torch.tensor(cached, dtype=torch.float64) - torch.tensor(naive, dtype=torch.float64)).abs().max() < 1e-10
    # The same with the three prompts (of different lengths) left-padded into one batch.
    calls = _count_forwards(model)
    grouped = model.score(prompts=PROMPTS, candidates=RANKING, batch_size=16)
    assert len(calls) == 2, calls
    naive = model.score_naive(prompts=PROMPTS, candidates=RANKING, batch_size=4)
    assert (torch.tensor(grouped, dtype=torch.float64) - torch.tensor(naive, dtype=torch.float64)).abs().max() < 1e-10


def test_ranking_on_the_prompts_generation_kept_is_exact_in_float64(tiny_dir, ctx):
    # Evaluation generates, then ranks the same prompts inside reusing_prompts(): the ranking's first
    # forward then runs only each prompt's last token and the shared prefix on generation's states.
    config = LlamaTextConfig(model=str(tiny_dir), dtype="float64", device="cpu")
    model = mint_llama.student.LlamaTextStudent(config).load(ctx=ctx)
    fresh = model.score(prompts=PROMPTS, candidates=RANKING, batch_size=16)
    shared = len(mint_llama.student.common_prefix([model.completion_ids(c, end=False) for c in RANKING]))
    with model.reusing_prompts():
        model.generate(prompts=PROMPTS, max_new_tokens=4, batch_size=2)  # two generation batches
        calls = _count_forwards(model)
        reused = model.score(prompts=PROMPTS, candidates=RANKING, batch_size=16)
        assert calls[0] == shared + 1 and len(calls) == 2, calls
        outside = model.score(prompts=PROMPTS[:1] + [Prompt("Not generated for.")], candidates=RANKING, batch_size=16)
        assert calls[2] > shared + 1  # a prompt generation did not run: the whole context forward
    assert model._kept_prompts is None
    assert (torch.tensor(reused, dtype=torch.float64) - torch.tensor(fresh, dtype=torch.float64)).abs().max() < 1e-10
    assert outside[0] == pytest.approx(fresh[0], abs=1e-10)


def test_adapter_roundtrip_gives_identical_scores(student, ctx, model, tmp_path):
    trainable = student.load(ctx=ctx, trainable=True)
    n_trainable = sum(p.numel() for p in trainable.model.parameters() if p.requires_grad)
    assert 0 < n_trainable < sum(p.numel() for p in trainable.model.parameters())
    # A fresh LoRA is a no-op (B = 0); make it a real change, as training would.
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in trainable.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    adapter = trainable.save_adapter(tmp_path / "adapter")
    assert (adapter / "adapter_model.safetensors").is_file()
    assert trainable.model.training
    before = trainable.score(prompts=PROMPTS[:2], candidates=CANDIDATES, batch_size=4)
    assert trainable.model.training, "scoring mid-training must restore train mode"

    loaded = student.load(ctx=ctx, adapter_dir=adapter)
    after = loaded.score(prompts=PROMPTS[:2], candidates=CANDIDATES, batch_size=4)
    base = model.score(prompts=PROMPTS[:2], candidates=CANDIDATES, batch_size=4)
    assert torch.allclose(torch.tensor(before), torch.tensor(after), atol=1e-6)
    assert not torch.allclose(torch.tensor(after), torch.tensor(base), atol=1e-3)
    # The adapter's cached scoring path agrees with the naive one too.
    naive = loaded.score_naive(prompts=PROMPTS[:2], candidates=CANDIDATES, batch_size=4)
    assert torch.allclose(torch.tensor(after), torch.tensor(naive), atol=1e-5, rtol=2e-7)  # as above

    resumed = student.load(ctx=ctx, adapter_dir=adapter, trainable=True)
    assert any(p.requires_grad for p in resumed.model.parameters())


def test_unsafe_or_impossible_loads_fail_clearly(student, ctx, tmp_path, tiny_dir):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(MintError, match="safetensors"):
        student.load(ctx=ctx, adapter_dir=tmp_path / "bad")
    if not torch.cuda.is_available():
        quantized = type(student)(LlamaTextConfig(model=str(tiny_dir), load_in_4bit=True))
        with pytest.raises(MintError, match="load_in_4bit"):
            quantized.load(ctx=ctx)


# -- where the default model comes from (no download) ------------------------------------------
@pytest.fixture
def isolated_caches(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MINT_CACHE", str(tmp_path / "mint"))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


def _fake_model_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def _no_download(dest: Path) -> Path:
    raise AssertionError("must not reach PyPI")


def test_resolver_prefers_a_local_folder(isolated_caches):
    folder = _fake_model_dir(isolated_caches / "my-model")
    resolved = resolve_mod.resolve_model(str(folder), download=_no_download)
    assert resolved.path == folder and resolved.source == "local folder"
    with pytest.raises(MintError, match="not a model folder"):
        resolve_mod.resolve_model(str(isolated_caches / "missing"), download=_no_download)


def test_resolver_order_hf_cache_then_mint_cache_then_pypi(isolated_caches):
    model_id = resolve_mod.SMOLLM2_ID
    # Nothing cached, offline: the PyPI fallback is next.
    with pytest.raises(AssertionError, match="must not reach PyPI"):
        resolve_mod.resolve_model(model_id, download=_no_download)
    # A converted copy in the MINT cache serves without any download.
    converted = _fake_model_dir(resolve_mod.converted_dir(model_id))
    assert converted.is_relative_to(isolated_caches / "mint")
    resolved = resolve_mod.resolve_model(model_id, download=_no_download)
    assert resolved.path == converted and resolved.source == "MINT cache"
    # A snapshot in the HF cache wins over the MINT cache.
    repo = isolated_caches / "hf" / "models--HuggingFaceTB--SmolLM2-135M-Instruct"
    _fake_model_dir(repo / "snapshots" / ("a" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    resolved = resolve_mod.resolve_model(model_id, download=_no_download)
    assert resolved.source == "HF cache" and resolved.path == repo / "snapshots" / ("a" * 40)


def test_resolver_has_no_pypi_fallback_for_other_models(isolated_caches):
    with pytest.raises(MintError, match="HF_HUB_OFFLINE"):
        resolve_mod.resolve_model("someone/other-model", download=_no_download)


def test_inference_dtype_auto_follows_native_bf16(monkeypatch):
    import mint_llama.student as student_module
    from mint_llama.student import pick_inference_dtype

    cpu = torch.device("cpu")
    monkeypatch.setattr(student_module, "native_bf16", lambda device_type: True)
    assert pick_inference_dtype("auto", cpu, torch.float32) == torch.bfloat16
    assert pick_inference_dtype("auto", cpu, torch.float16) == torch.float16  # low-precision weights kept
    assert pick_inference_dtype("float32", cpu, torch.float32) == torch.float32
    monkeypatch.setattr(student_module, "native_bf16", lambda device_type: False)
    assert pick_inference_dtype("auto", cpu, torch.float32) == torch.float32
    with pytest.raises(MintError, match="student.dtype"):
        pick_inference_dtype("float33", cpu, torch.float32)


def test_bf16_inference_switches_on_first_use_only(student, ctx):
    model = student.load(ctx=ctx)
    model.inference_dtype = torch.bfloat16
    assert model.model.dtype == torch.float32  # loading (and so export) keeps the weights as stored
    prompt = Prompt(text="Findings: seizures.")
    answers = model.generate(prompts=[prompt], max_new_tokens=4, batch_size=1)
    assert model.model.dtype == torch.bfloat16 and len(answers) == 1
    trained = student.load(ctx=ctx, trainable=True)
    assert trained.inference_dtype is None  # a student being trained is never cast
