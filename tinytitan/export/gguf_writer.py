"""Write what llama.cpp runs: a merged model GGUF, a GGUF LoRA adapter, an importance matrix.

All three go through `gguf.GGUFWriter` into a temporary file beside the target, renamed into
place only when complete.
- merged model: the trained weights as F32/F16/BF16 with the base file's tokenizer, licence and our
  chat template (`convert.write_gemma3_gguf` does the tensors);
- LoRA adapter: llama.cpp's adapter format (general.type = adapter, adapter.type = lora,
  adapter.lora.alpha; tensors `<base tensor>.lora_a` [rank x in] and `.lora_b` [out x rank]), to
  hot-swap on the unchanged base GGUF;
- importance matrix: llama.cpp's imatrix GGUF (general.type = imatrix; `<tensor>.in_sum2` = the sum of
  squared inputs per column of each matmul, `<tensor>.counts` = rows seen), computed here in torch
  from the task's own training sequences, for llama-quantize's `--imatrix`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import gguf
import numpy as np
import torch

from tinytitan.model import convert
from tinytitan.model.chat_format import JINJA_TEMPLATE
from tinytitan.errors import TinyTitanError
from tinytitan.files import atomic_file
from tinytitan.model.gguf import GGUFFile


def write_merged_gguf(path: Path, model, base: GGUFFile, dtype: str, metadata: dict) -> Path:
    """The merged `Gemma3ForCausalLM` as a GGUF of `dtype` (f32 | f16 | bf16)."""
    tokenizer = convert.tokenizer_fields(base)
    tokenizer["tokenizer.chat_template"] = JINJA_TEMPLATE
    extra = {key: base.get(key) for key in ("general.license", "general.license.link")
             if base.get(key) is not None}
    extra.update(metadata)
    name = f"{base.get('general.name') or 'Gemma 3'} (tinytitan: {metadata.get('general.finetune', 'fine-tuned')})"
    state = {k: v for k, v in model.state_dict().items()}
    return atomic_file(path, lambda tmp: convert.write_gemma3_gguf(tmp, model.config, state, tokenizer,
                                                                  dtype=dtype, name=name, extra=extra))


def lora_tensors(adapter_state: dict[str, torch.Tensor], n_layers: int) -> dict[str, np.ndarray]:
    """PEFT `...layers.N.self_attn.q_proj.lora_A.weight` -> llama.cpp `blk.N.attn_q.weight.lora_a`."""
    to_gguf = convert.hf_to_gguf_names(n_layers)
    out = {}
    for name, tensor in adapter_state.items():
        for peft_part, gguf_part in ((".lora_A.weight", ".lora_a"), (".lora_B.weight", ".lora_b")):
            if name.endswith(peft_part):
                module = name[: -len(peft_part)]
                module = module.split("base_model.model.", 1)[-1]  # PEFT's wrapper prefix
                out[to_gguf(module + ".weight") + gguf_part] = tensor.detach().float().numpy()
                break
        else:
            raise TinyTitanError(f"the adapter holds {name!r}, which a llama.cpp LoRA adapter cannot carry")
    return out


def write_lora_adapter(path: Path, adapter_state: dict[str, torch.Tensor], alpha: float, base: GGUFFile,
                       dtype: str = "f16", metadata: dict | None = None) -> Path:
    n_layers = int(base.arch_key("block_count"))
    tensors = lora_tensors(adapter_state, n_layers)
    np_dtype = {"f16": np.float16, "f32": np.float32}[dtype]

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp), base.architecture)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        for key, value in (metadata or {}).items():
            convert.add_metadata(writer, key, value)
        for name, array in sorted(tensors.items()):
            writer.add_tensor(name, np.ascontiguousarray(array.astype(np_dtype)))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    return atomic_file(path, write)


@torch.no_grad()
def compute_imatrix(model, sequences: Sequence[Sequence[int]], path: Path, dataset: str,
                    max_tokens: int = 65536, chunk_size: int = 512, bf16: bool = True) -> Path:
    """Sum of squared matmul inputs per column for every Linear (and the tied output head)."""
    n_layers = model.config.num_hidden_layers
    to_gguf = convert.hf_to_gguf_names(n_layers)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    def add(target: str, x: torch.Tensor) -> None:
        x = x.detach().float().reshape(-1, x.shape[-1])  # (tokens, in)
        sums[target] = sums.get(target, 0) + (x.double() ** 2).sum(0)
        counts[target] = counts.get(target, 0) + x.shape[0]

    head = "token_embd.weight" if model.config.tie_word_embeddings else "output.weight"
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            hooks.append(module.register_forward_hook(
                lambda _module, inputs, _output, target=to_gguf(name + ".weight"): add(target, inputs[0])))
    seen = 0
    try:
        model.eval()
        for ids in sequences:
            if seen >= max_tokens:
                break
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                # the head's input is the final hidden state: its statistics without computing
                # [tokens x 262,144] logits nobody reads
                add(head, model.model(input_ids=torch.tensor([list(ids)])).last_hidden_state)
            seen += len(ids)
    finally:
        for handle in hooks:
            handle.remove()
    if not seen:
        raise TinyTitanError("no training sequences to compute an importance matrix from")

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp), "")  # imatrix files carry no architecture
        writer.add_string("general.type", "imatrix")
        writer.add_array("imatrix.datasets", [dataset])
        writer.add_uint32("imatrix.chunk_count", max(1, -(-seen // chunk_size)))
        writer.add_uint32("imatrix.chunk_size", chunk_size)
        for name in sorted(sums):
            writer.add_tensor(f"{name}.in_sum2", sums[name].float().numpy()[None, :])
            writer.add_tensor(f"{name}.counts", np.array([[float(counts[name])]], dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    return atomic_file(path, write)
