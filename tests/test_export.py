"""Export: round trips, every format reloaded by its own library, the parity gate, no half files."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from tinytitan.model.registry import resolve
from tests.conftest import run_cli, tiny_lora_run

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def tiny_run(tiny, tmp_path_factory):
    """A LoRA run on the tiny model (1,000 rows: a 100-row validation split for the gate)."""
    return tiny_lora_run(tiny[0], tmp_path_factory.mktemp("export"), rows=1000, steps=40, seed=1)[0]


def test_round_trip_tiny_gguf_torch_f32_gguf(tiny, tmp_path):
    """tiny GGUF -> torch -> F32 GGUF -> llama.cpp: the same logits as the original file."""
    from tinytitan.model.engines.llama import LlamaEngine
    from tinytitan.export.gguf_writer import write_merged_gguf
    from tinytitan.model.torch_model import load_torch_model

    ref = resolve(str(tiny[0]))
    copy = write_merged_gguf(tmp_path / "copy-f32.gguf", load_torch_model(ref), ref.gguf, "f32", {})
    ids = [2, 300, 301, 302, 310, 320, 330, 340, 350, 360, 370, 380, 390, 300]
    with LlamaEngine(ref, n_ctx=64) as original, LlamaEngine(resolve(str(copy)), n_ctx=64) as exported:
        np.testing.assert_allclose(exported.score(ids, 0), original.score(ids, 0), atol=1e-5)
    assert resolve(str(copy)).gguf.get("tokenizer.chat_template").startswith("{{ bos_token }}")


@pytest.mark.real_model
def test_round_trip_real_model(tmp_path):
    """Gemma 3 270M Q4_K_M -> torch (dequantized) -> F32 GGUF -> llama.cpp agrees with torch."""
    from tinytitan.model.engines.llama import LlamaEngine
    from tinytitan.model.engines.torch import TorchEngine
    from tinytitan.export.gguf_writer import write_merged_gguf

    base = resolve("gemma-3-270m")
    torch_engine = TorchEngine(base)
    path = write_merged_gguf(tmp_path / "gemma-f32.gguf", torch_engine.model, base.gguf, "f32", {})
    ids = torch_engine.tokenize("The Eiffel Tower is a wrought-iron lattice tower in Paris, France. " * 6, bos=True)
    with LlamaEngine(resolve(str(path)), n_ctx=512) as engine:
        llama = torch.log_softmax(torch.from_numpy(engine.score(ids, 0)), -1)
    reference = torch.log_softmax(torch.from_numpy(torch_engine.score(ids, 0)), -1)
    kl = (reference.exp() * (reference - llama)).sum(-1)
    assert kl.mean() < 1e-3 and (llama.argmax(-1) == reference.argmax(-1)).float().mean() > 0.99
    assert (llama - reference).abs().max() < 0.1  # fp32 both sides; float summation order differs


def test_export_every_format_passes_and_reloads(tiny_run, tmp_path):
    out = tmp_path / "out"
    result = run_cli("export", str(tiny_run), "--to", "gguf,adapter,hf,peft,ollama", "--quant", "f16",
                     "--out", str(out), "--gate-rows", "100", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    names = {a["artifact"] for a in report["artifacts"]}
    assert names == {"run-f16.gguf", "run-adapter-f16.gguf", "hf", "peft", "Modelfile", "Modelfile.adapter"}
    assert report["gate_rows"] >= 90  # the hash split gives the validation set about 100 of 1,000 rows
    # adapter on the base and the merged model decode the same (llama.cpp both)
    assert report["adapter_vs_merged_f16_greedy_agreement"] >= 0.98
    for artifact in report["artifacts"]:
        if artifact["kind"] == "ollama":
            continue
        manifest = json.loads((out / f"{artifact['artifact']}.manifest.json").read_text())
        assert manifest["status"] == "passed" and manifest["parity"]["rows"] == report["gate_rows"]
        if (out / artifact["artifact"]).is_file():
            digest = hashlib.sha256((out / artifact["artifact"]).read_bytes()).hexdigest()
            assert manifest["sha256"] == digest and manifest["bytes"] == (out / artifact["artifact"]).stat().st_size
    assert not list(out.glob(".staging-*"))
    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./run-f16.gguf" in modelfile and 'PARAMETER stop "<end_of_turn>"' in modelfile
    assert "ADAPTER ./run-adapter-f16.gguf" in (out / "Modelfile.adapter").read_text()

    # the HF folder loads with transformers and reproduces the trained model's logits
    from peft import PeftModel
    from transformers import Gemma3ForCausalLM

    from tinytitan.model.runs import load_run_model
    from tinytitan.model.torch_model import load_torch_model

    base_ref, trained = load_run_model(tiny_run)
    ids = torch.tensor([[2, 300, 310, 320, 330, 340, 350]])
    with torch.no_grad():
        expected = trained(ids).logits
        hf = Gemma3ForCausalLM.from_pretrained(out / "hf").eval()(ids).logits
        peft = PeftModel.from_pretrained(load_torch_model(base_ref), str(out / "peft")).eval()(ids).logits
    torch.testing.assert_close(hf, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(peft, expected, rtol=1e-4, atol=1e-4)
    # the adapter runs in llama.cpp on the unchanged base
    generated = run_cli("generate", "cat dog 7", "--model", str(resolve(json.loads(
        (tiny_run / "config.json").read_text())["model"]).path), "--lora", str(out / "run-adapter-f16.gguf"),
        "--chat", "-n", "8", "--json")
    assert generated.returncode == 0, generated.stderr


def test_gate_fails_on_a_corrupted_tensor_and_leaves_nothing(tiny_run, tmp_path, monkeypatch):
    from tinytitan.export import export
    from tinytitan.export import gguf_writer as gguf_export
    from tinytitan.errors import TinyTitanError
    from tinytitan.export.quantize import parse_quants

    real_write = gguf_export.write_merged_gguf

    def corrupting_write(path, model, base, dtype, metadata):
        with torch.no_grad():  # damage one projection of the copy being written, not the trained model
            model = type(model)(model.config)
            model.load_state_dict(dict(real_model_state))
            model.model.layers[0].self_attn.q_proj.weight.mul_(-3.0)
        return real_write(path, model, base, dtype, metadata)

    from tinytitan.model.runs import load_run_model

    real_model_state = load_run_model(tiny_run)[1].state_dict()
    monkeypatch.setattr(gguf_export, "write_merged_gguf", corrupting_write)
    out = tmp_path / "out"
    report = export.export(tiny_run, ["gguf"], parse_quants("f16"), out, gate_rows=30)
    (artifact,) = report["artifacts"]
    assert not artifact["parity"]["passed"] and artifact["path"] is None
    assert sorted(p.name for p in out.iterdir()) == []  # nothing at the final path, no staging left
    # the verb reports it as an error (exit 1); --force keeps the file, marked failed
    import argparse

    args = argparse.Namespace(run=str(tiny_run), to="gguf", quant="f16", out=str(out), weights="best", gate_rows=30,
                              gate_data=None, max_tokens=128, force=True, threads=None, json=True,
                              trim=False, keep_top=None)
    with pytest.raises(TinyTitanError, match=r"parity gate failed for run-f16.gguf \(kept, marked failed"):
        export.run(args)
    manifest = json.loads((out / "run-f16.gguf.manifest.json").read_text())
    assert manifest["status"] == "failed" and (out / "run-f16.gguf").exists()


def test_export_cli_failure_exit_and_bad_flags(tiny_run, tmp_path):
    result = run_cli("export", str(tiny_run), "--quant", "q9_9")
    assert result.returncode == 1 and result.stderr.startswith("error: --quant 'q9_9': unknown type")
    result = run_cli("export", str(tiny_run), "--to", "gguf,zip")
    assert result.returncode == 1 and "--to: ['zip'] not among" in result.stderr
    result = run_cli("export", str(tmp_path))
    assert result.returncode == 1 and "not a fine-tuning run" in result.stderr
    result = run_cli("export", str(tiny_run), "--to", "ollama")
    assert result.returncode == 1 and "add gguf or adapter to --to" in result.stderr


def test_pickle_weights_are_refused(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "best" / "adapter_model.safetensors").rename(run / "best" / "adapter_model.bin")
    result = run_cli("export", str(run), "--quant", "f16")
    assert result.returncode == 1 and "pickle weights (adapter_model.bin)" in result.stderr


def test_importance_matrix_matches_the_matmul_inputs(tiny, tmp_path):
    """imatrix entries are the column sums of squared inputs of every matmul, the head's included."""
    import gguf

    from tinytitan.export.gguf_writer import compute_imatrix

    model = tiny[1].eval()
    sequences = [[2, 300, 301, 302, 310], [2, 320, 330, 340, 350, 360, 370]]
    seen = {}
    hooks = [module.register_forward_hook(lambda _m, inputs, _o, name=name: seen.setdefault(name, []).append(inputs[0]))
             for name, module in model.named_modules() if name in ("lm_head", "model.layers.1.mlp.down_proj")]
    with torch.no_grad():
        for ids in sequences:
            model(input_ids=torch.tensor([ids]))
    for handle in hooks:
        handle.remove()
    path = compute_imatrix(model, sequences, tmp_path / "imatrix.gguf", "test rows", bf16=False)
    tensors = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(path)).tensors}
    for name, gguf_name in (("lm_head", "token_embd.weight"), ("model.layers.1.mlp.down_proj", "blk.1.ffn_down.weight")):
        expected = sum((x.reshape(-1, x.shape[-1]).double() ** 2).sum(0) for x in seen[name]).float().numpy()
        np.testing.assert_allclose(tensors[f"{gguf_name}.in_sum2"].reshape(-1), expected, rtol=1e-5)
        assert tensors[f"{gguf_name}.counts"].reshape(-1)[0] == 12


class _TextEngine:
    """A stand-in engine: token i is the i-th word of `words`, every position gives the same logits,
    and greedy decoding answers `replies[prompt]`."""

    def __init__(self, words, replies):
        self.words, self.replies = words, replies

    def detokenize(self, ids):
        return " ".join(self.words[i] for i in ids)

    def tokenize(self, text):
        return [self.words.index(w) for w in text.split()]

    def score(self, ids, first):
        return np.tile(np.linspace(0, 1, len(self.words), dtype=np.float32), (len(ids) - first, 1))

    def generate_greedy_batch(self, prompts, max_tokens):
        return [self.replies[tuple(p)] for p in prompts]


@pytest.mark.parametrize("free_text", [True, False])
def test_greedy_agreement_is_gated_for_labels_and_reported_for_free_text(free_text):
    from tinytitan.data.tokens import TokenizedExample
    from tinytitan.export.gate import Candidate, run_gate

    words = ["tell", "me", "a", "story", "label", "yes", "no"] + [f"w{i}" for i in range(40)]
    rows = []
    for n in range(4):  # prompt: "tell me a story <n>"; completion: 20 story words, or a yes/no label
        completion = ([words.index(f"w{(n * 7 + k) % 40}") for k in range(20)] if free_text
                      else [words.index("yes" if n % 2 else "no")])
        rows.append(TokenizedExample((0, 1, 2, 3, 7 + n, *completion), 5, False, f"rows:{n + 1}"))
    prompts = [tuple(r.ids[:5]) for r in rows]
    reference = _TextEngine(words, {p: "w1 w2 w3" for p in prompts})
    drifting = Candidate("q8_0", "Q8_0", _TextEngine(words, {p: "w1 w2 w4" for p in prompts}))  # parts at a near-tie
    run_gate(reference, [drifting], rows, max_tokens=32)
    report = drifting.report()
    assert report["kl_mean"] == pytest.approx(0, abs=1e-6) and report["top1"] == 1.0
    assert report["greedy_agreement"] == 0.0
    if free_text:
        assert report["passed"] and report["thresholds"]["min_greedy_agreement"] is None
    else:
        assert not report["passed"] and report["failures"] == ["greedy agreement 0.0% < 90%"]
