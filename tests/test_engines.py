"""The two engines on the tiny model: same tokens, same logits, same greedy text; sampling knobs."""

from __future__ import annotations

import numpy as np
import pytest

from tinytitan.model.engines import GenerationChunk, SamplingParams
from tinytitan.errors import TinyTitanError

TEXTS = [
    "the cat sat on the mat.",
    "Hello world!\n\nRed, blue; 42 cups of sugar",
    "  leading spaces and\ttabs",
    "unicode: café 日本 🙂",
    "spelled controls: <end_of_turn><start_of_turn>model\n<bos><eos>",
]


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizers_agree(tiny_torch, tiny_llama, text):
    assert tiny_torch.tokenize(text, bos=True) == tiny_llama.tokenize(text, bos=True)


def test_logits_match_between_engines(tiny_torch, tiny_llama):
    """llama.cpp (F32 weights, F16 KV cache) against our torch model: 40 tokens, both layer kinds."""
    ids = tiny_torch.tokenize(" ".join(TEXTS[:2]) * 2, bos=True)[:40]
    torch_logits = tiny_torch.score(ids, 0)
    llama_logits = tiny_llama.score(ids, 0)
    assert torch_logits.shape == llama_logits.shape == (len(ids), tiny_torch.vocab_size)
    # tolerance: llama.cpp stores K/V in F16 and sums in another order; logits here span about +-10
    np.testing.assert_allclose(llama_logits, torch_logits, atol=2e-2, rtol=0)
    assert (llama_logits.argmax(-1) == torch_logits.argmax(-1)).all()


def test_score_positions(tiny_llama, tiny_torch):
    ids = tiny_torch.tokenize("the dog sat on the red mat", bos=True)
    for engine in (tiny_llama, tiny_torch):
        full = engine.score(ids, 0)
        tail = engine.score(ids, 3)
        assert tail.shape[0] == len(ids) - 3
        np.testing.assert_allclose(tail, full[3:], atol=1e-4)


def test_greedy_generation_agrees(tiny_torch, tiny_llama):
    prompt = tiny_torch.tokenize("the cat", bos=True)
    params = SamplingParams(max_tokens=12)
    a, b = tiny_torch.generate(prompt, params), tiny_llama.generate(prompt, params)
    assert a.tokens == b.tokens and a.text == b.text
    assert a.last.generation_tokens == len(a.tokens) <= 12


def test_stream_chunks_carry_statistics(tiny_llama, tiny_torch):
    prompt = tiny_llama.tokenize("hello world", bos=True)
    for engine in (tiny_llama, tiny_torch):
        chunks = list(engine.stream(prompt, SamplingParams(max_tokens=6)))
        assert all(isinstance(c, GenerationChunk) for c in chunks)
        last = chunks[-1]
        assert last.finish_reason in ("length", "stop") and all(c.finish_reason is None for c in chunks[:-1])
        assert last.prompt_tokens == len(prompt) and last.prompt_tps > 0 and last.peak_memory_mb > 10
        if last.generation_tokens > 1:
            assert last.generation_tps > 0


@pytest.mark.parametrize("engine_name", ["tiny_torch", "tiny_llama"])
def test_seeded_sampling_is_reproducible(engine_name, request):
    engine = request.getfixturevalue(engine_name)
    prompt = engine.tokenize("the", bos=True)
    params = SamplingParams(max_tokens=10, temperature=1.5, top_k=50, top_p=0.95, seed=7)
    first, second = engine.generate(prompt, params), engine.generate(prompt, params)
    assert first.tokens == second.tokens
    others = {tuple(engine.generate(prompt, SamplingParams(max_tokens=10, temperature=1.5, seed=s)).tokens)
              for s in range(6)}
    assert len(others) > 1  # different seeds explore different continuations


@pytest.mark.parametrize("engine_name", ["tiny_torch", "tiny_llama"])
def test_a_vanishing_temperature_is_greedy(engine_name, request):
    """1.2e-38 would overflow logits / temperature (NaN probabilities): both engines decode it as 0."""
    engine = request.getfixturevalue(engine_name)
    prompt = engine.tokenize("the dog", bos=True)
    greedy = engine.generate(prompt, SamplingParams(max_tokens=8))
    tiny = engine.generate(prompt, SamplingParams(max_tokens=8, temperature=1.1754943508222875e-38, seed=3))
    assert tiny.tokens == greedy.tokens


def test_top_k_one_is_greedy(tiny_torch):
    prompt = tiny_torch.tokenize("the dog", bos=True)
    greedy = tiny_torch.generate(prompt, SamplingParams(max_tokens=8))
    sampled = tiny_torch.generate(prompt, SamplingParams(max_tokens=8, temperature=2.0, top_k=1, seed=3))
    assert greedy.tokens == sampled.tokens


def test_stop_strings_cut_the_text(tiny_torch, tiny_llama):
    prompt = tiny_torch.tokenize("the cat", bos=True)
    for engine in (tiny_torch, tiny_llama):
        free = engine.generate(prompt, SamplingParams(max_tokens=20)).text
        assert len(free) > 4
        stop = free[2:4]
        cut = engine.generate(prompt, SamplingParams(max_tokens=20, stop=(stop,)))
        assert cut.text == free[: free.index(stop)]
        assert cut.finish_reason == "stop"


@pytest.mark.parametrize("kwargs, param", [
    ({"max_tokens": 0}, "max_tokens"), ({"temperature": -1.0}, "temperature"), ({"top_k": -2}, "top_k"),
    ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"seed": -1}, "seed"), ({"stop": ("",)}, "stop"),
])
def test_bad_sampling_params_name_the_param(kwargs, param):
    with pytest.raises(TinyTitanError, match=param):
        SamplingParams(**kwargs)


def test_prompt_longer_than_context_is_an_error(tiny_llama):
    with pytest.raises(TinyTitanError, match="do not fit the context"):
        tiny_llama.generate([2] * 600, SamplingParams(max_tokens=4))


def test_scoring_across_several_decode_batches(tiny, tiny_torch):
    """llama.cpp decodes long inputs in n_batch pieces; scores must line up with the targets."""
    from tinytitan.model.engines.llama import LlamaEngine
    from tinytitan.model.registry import resolve

    ids = tiny_torch.tokenize("the cat sat on the mat and the dog sat on the cup " * 4, bos=True)[:70]
    with LlamaEngine(resolve(str(tiny[0])), n_ctx=128, n_batch=16) as small_batches:
        llama = small_batches.target_logprobs(ids, 5)
        logits = small_batches.score(ids, 5)
    expected = tiny_torch.target_logprobs(ids, 5)
    assert llama.shape == expected.shape == (len(ids) - 6,) and logits.shape[0] == len(ids) - 5
    np.testing.assert_allclose(llama, expected, atol=2e-2)


def test_the_earliest_stop_string_wins():
    from tinytitan.model.engines import StopAwareText

    text = StopAwareText(["B", "A"])
    assert text.feed("xAyB", final=False) == ("x", True)


def test_batched_greedy_matches_one_at_a_time(tiny, tmp_path):
    """The llama engine's batched decoding (several sequences per llama_decode) gives every prompt the
    completion it gets alone, with and without a LoRA adapter, across groups and per-prompt budgets."""
    import random

    from tinytitan.model.engines import SamplingParams, load_engine
    from tests.test_serve import write_adapter

    (tmp_path / "base.gguf").write_bytes(tiny[0].read_bytes())
    adapter = write_adapter(tiny[1], tmp_path / "a.gguf", seed=3)
    rng = random.Random(1)
    words = ["the", "cat", "sat", "on", "mat", "red", "blue", "dog", "one", "two"]
    for lora in (None, str(adapter)):
        engine = load_engine("llama", str(tmp_path / "base.gguf"), n_ctx=256, lora=lora)
        prompts = [engine.tokenize(" ".join(rng.choices(words, k=rng.randint(1, 12))), bos=True) for _ in range(7)]
        budgets = [rng.randint(1, 20) for _ in prompts]
        alone = [engine.generate(p, SamplingParams(max_tokens=b)).text for p, b in zip(prompts, budgets)]
        done = []
        batched = engine.generate_greedy_batch(prompts, max_tokens=20, budgets=budgets, sequences=3,
                                               on_done=done.append)
        assert batched == alone, lora
        assert done == [3, 6, 7]  # progress after each group of 3
        # one grammar per prompt, each sequence held to its own
        grammars = [f'root ::= "row {i}" | "other"\n' for i in range(len(prompts))]
        held = engine.generate_greedy_batch(prompts, max_tokens=20, grammars=grammars, sequences=3)
        assert all(text in (f"row {i}", "other") for i, text in enumerate(held)), held
        only = engine.generate_greedy_batch(prompts, max_tokens=20, grammars=[f'root ::= "row {i}"\n'
                                                                                  for i in range(len(prompts))])
        assert only == [f"row {i}" for i in range(len(prompts))]
        with pytest.raises(ValueError, match="2 grammars for 7 prompts"):
            engine.generate_greedy_batch(prompts, max_tokens=4, grammars=grammars[:2])
        engine.close()


@pytest.mark.parametrize("kwargs, param", [
    ({"presence_penalty": 2.5}, "presence_penalty"), ({"frequency_penalty": -3.0}, "frequency_penalty"),
    ({"logit_bias": ((-1, 1.0),)}, "logit_bias"), ({"logit_bias": ((5, float("nan")),)}, "logit_bias"),
])
def test_bad_penalties_and_biases_name_the_param(kwargs, param):
    with pytest.raises(TinyTitanError, match=param):
        SamplingParams(**kwargs)


def test_the_runtime_keeps_the_shared_prefix_and_gives_the_same_logits(tiny):
    """runtime.Context: a prompt that extends what the cache holds decodes only its new tokens, and its
    logits are those of a fresh decode; detokenize drops the space after <bos>, as llama.cpp does."""
    from tinytitan.model.engines.runtime import LoadedModel

    model = LoadedModel(tiny[0], n_ctx=256)
    context = model.new_context(threads=1, swa_full=True)
    try:
        ids = model.tokenize("the cat sat on the mat and the dog", bos=True)
        context.prefill(ids)
        fresh = context.logits().copy()
        assert context.tokens == ids
        longer = ids + model.tokenize(" sat")
        assert context.keep_prefix(longer, len(longer) - 1) == len(ids)
        context.prefill(longer[len(ids):], len(ids))
        extended = context.logits().copy()
        assert context.keep_prefix(ids, len(ids) - 1) == len(ids) - 1  # the last token is decoded again
        context.prefill(ids[-1:], len(ids) - 1)
        np.testing.assert_allclose(context.logits(), fresh, atol=1e-4)
        context.clear()
        context.prefill(longer)
        np.testing.assert_allclose(context.logits(), extended, atol=1e-4)
        assert context.keep_prefix([ids[0] + 1] + ids[1:], len(ids)) == 0 and context.tokens == []
        assert model.detokenize(model.tokenize(" hello", bos=True)) == "hello"
    finally:
        context.free()
        model.close()
