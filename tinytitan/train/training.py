"""The pieces `finetune` is built from: the model with LoRA (PEFT) or full training, the
completion-loss module, the learning-rate schedule, processes under torchrun, saved weights."""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from tinytitan.errors import TinyTitanError
from tinytitan.train.loss import chunked_head_loss, completion_positions


def build_model(ref, config, device: torch.device):
    """The fp32 `Gemma3ForCausalLM` with only the trainable part requiring grad."""
    from tinytitan.model.torch_model import load_torch_model

    model = load_torch_model(ref, dtype="float32").to(device)
    model.config.use_cache = False
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        for param in model.parameters():
            param.requires_grad_(False)
        # embeddings and LM head stay frozen: the adapter must stay exportable to llama.cpp
        lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=list(config.lora_targets), bias="none", task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    else:
        for name, param in model.named_parameters():
            embedding = "embed_tokens" in name or "lm_head" in name
            param.requires_grad_(config.train_embeddings or not embedding)
    model.train()
    return model


def use_bf16(precision: str) -> bool:
    """Whether matmuls run in bf16 for `precision` (auto: where the CPU does bf16)."""
    supported = torch.ops.mkldnn._is_mkldnn_bf16_supported() or torch.cuda.is_available()
    if precision == "bf16" and not supported:
        raise TinyTitanError("precision: bf16 is not supported on this CPU (use auto or fp32)")
    return precision == "bf16" or (precision == "auto" and supported)


def causal_lm(model):
    """The `Gemma3ForCausalLM` inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class CompletionLoss(torch.nn.Module):
    """forward(input_ids, attention_mask, loss_mask) -> summed cross-entropy on completion tokens."""

    def __init__(self, model, bf16: bool, head_chunk: int, negatives: torch.Tensor | None = None,
                 kd_weight: float = 0.0, kd_temperature: float = 1.0, kd_divergence: str = "forward"):
        super().__init__()
        self.model = model
        # with a teacher's rows (train/teacher.py)
        self.kd_weight, self.kd_temperature, self.kd_divergence = kd_weight, kd_temperature, kd_divergence
        self.bf16 = bf16
        self.head_chunk = head_chunk
        self.negatives = negatives  # (K, H) frozen rows added to the head's softmax, never targets
        self._head: tuple | None = None  # (head weight, its version, the head with the negatives)

    def head(self, weight: torch.Tensor) -> torch.Tensor:
        """The head weight the loss uses: with the negatives appended (once, while the head is frozen)."""
        if self.negatives is None:
            return weight
        if weight.requires_grad:
            return torch.cat([weight, self.negatives.to(weight.dtype)])
        if self._head is None or self._head[0] is not weight or self._head[1] != weight._version:
            self._head = (weight, weight._version, torch.cat([weight.detach(), self.negatives.to(weight.dtype)]))
        return self._head[2]

    def forward(self, input_ids, attention_mask, loss_mask, teacher_ids=None, teacher_logp=None):
        lm = causal_lm(self.model)
        device_type = input_ids.device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.bf16):
            hidden = lm.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        predicts, targets = completion_positions(input_ids, loss_mask)
        teacher = (teacher_ids, teacher_logp) if teacher_ids is not None else None
        if teacher is not None and teacher_ids.shape[0] != targets.shape[0]:
            raise ValueError(f"the teacher has {teacher_ids.shape[0]} positions for {targets.shape[0]} completion tokens")
        return chunked_head_loss(hidden[predicts], self.head(lm.lm_head.weight), targets, chunk=self.head_chunk,
                                 bf16=self.bf16, softcap=lm.config.final_logit_softcapping, teacher=teacher,
                                 kd_weight=self.kd_weight if teacher else 0.0, temperature=self.kd_temperature,
                                 divergence=self.kd_divergence)


def make_scheduler(optimizer, config, total_steps: int):
    warmup = int(config.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if config.scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if config.scheduler == "linear":
            shape = 1.0 - progress
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * max(shape, 0.0)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [k for k, p in params.items() if p.requires_grad and k not in state]
    if missing:
        raise TinyTitanError(f"the checkpoint lacks trainable weights ({missing[0]}, ...): it is from another run")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def save_weights(model, folder: Path, info: dict) -> None:
    """best/ or last/: a PEFT adapter folder, or a full Hugging Face model folder; atomic."""
    from tinytitan.train.checkpoint import write_atomic_dir

    def write(staging: Path) -> None:
        model.save_pretrained(staging, safe_serialization=True)
        (staging / "tinytitan.json").write_text(json.dumps(info, indent=2))

    write_atomic_dir(folder, write)


@dataclass
class Distributed:
    """This process's place under torchrun (or a single process)."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def setup(cls, threads: int) -> "Distributed":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        use_cuda = torch.cuda.is_available()
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}") if use_cuda else torch.device("cpu")
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // world))
        if use_cuda:
            torch.cuda.set_device(device)
        if world > 1:
            from datetime import timedelta

            import torch.distributed as dist

            if not dist.is_initialized():
                # torchrun stops every process when one fails; the timeout covers other launchers
                dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timedelta(minutes=10))
        return cls(rank, world, device)

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        if self.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[self.device] if self.device.type == "cuda" else None)

    def no_sync(self, wrapped, last: bool):
        if self.world > 1 and not last:
            return wrapped.no_sync()
        return contextlib.nullcontext()

    def sum(self, value: torch.Tensor) -> float:
        if self.world > 1:
            import torch.distributed as dist

            value = value.detach().clone().to(torch.float64)
            dist.all_reduce(value)
        return float(value)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
