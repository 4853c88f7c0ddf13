"""The pieces `finetune` is built from: the model with LoRA (PEFT) or full training, the
completion-loss module, the learning-rate schedule, processes under torchrun, saved weights."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from tinytitan.errors import TinyTitanError
from tinytitan.train.head import mined_everywhere, mined_rows
from tinytitan.train.loss import chunked_head_loss, completion_positions


def check_train_layers(config, layers: int) -> None:
    if config.train_layers > layers:
        raise TinyTitanError(f"train_layers: {config.train_layers} is more than the model's {layers} decoder layers")


def build_model(ref, config, device: torch.device):
    """The fp32 `Gemma3ForCausalLM` with only the trainable part requiring grad."""
    from tinytitan.model.torch_model import load_torch_model

    model = load_torch_model(ref, dtype="float32").to(device)
    model.config.use_cache = False
    layers = model.config.num_hidden_layers
    check_train_layers(config, layers)
    trained = range(layers - (config.train_layers or layers), layers)  # the top ones: nothing below needs a gradient
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        for param in model.parameters():
            param.requires_grad_(False)
        # embeddings and LM head stay frozen: the adapter must stay exportable to llama.cpp
        lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=list(config.lora_targets), bias="none", task_type="CAUSAL_LM",
                          layers_to_transform=list(trained), layers_pattern="layers")
        model = get_peft_model(model, lora)
    else:
        for name, param in model.named_parameters():
            embedding = "embed_tokens" in name or "lm_head" in name
            layer = re.search(r"\.layers\.(\d+)\.", name)
            param.requires_grad_(config.train_embeddings if embedding else
                                 layer is None or int(layer.group(1)) in trained)
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
                 kd_weight: float = 0.0, kd_temperature: float = 1.0, kd_divergence: str = "forward",
                 head_rows: torch.Tensor | None = None, frozen=None):
        super().__init__()
        self.model = model
        self.frozen = frozen  # train/frozen.py: the frozen lower layers' output, kept per training row
        # with a teacher's rows (train/teacher.py)
        self.kd_weight, self.kd_temperature, self.kd_divergence = kd_weight, kd_temperature, kd_divergence
        self.bf16 = bf16
        self.head_chunk = head_chunk
        self.negatives = negatives  # (K, H) frozen rows added to the head's softmax, never targets
        self.in_head = None  # the training softmax (train/head.py): a bool mask over the vocabulary (None: all)
        self.head_rows = None  # its vocabulary ids, sorted
        if head_rows is not None:
            self.in_head = torch.zeros(causal_lm(model).lm_head.weight.shape[0], dtype=torch.bool)
            self.in_head[head_rows] = True
            self.head_rows = self.in_head.nonzero().flatten()
        self._full_head = None  # (head weight, its version, the head the loss uses)

    def keep_in_head(self, rows: torch.Tensor) -> None:
        """Add vocabulary `rows` to the training softmax for the rest of the run (a step's mined tokens, or
        those a checkpoint saved)."""
        rows = rows.to(self.in_head.device)
        if not self.in_head[rows].all():
            self.in_head[rows] = True
            self.head_rows = self.in_head.nonzero().flatten()

    def head(self, weight: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The head weight the loss uses: its `rows` (a step's training softmax; None: all), with the negatives
        appended; the full one made once while the head is frozen."""
        if rows is None and self.negatives is None:
            return weight

        def make(w):
            w = w[rows] if rows is not None else w
            return torch.cat([w, self.negatives.to(w.dtype)]) if self.negatives is not None else w

        if weight.requires_grad or rows is not None:  # a step's rows: a gather of a few thousand, each step
            return make(weight)
        cached = self._full_head
        if cached is None or cached[0] is not weight or cached[1] != weight._version:
            cached = self._full_head = (weight, weight._version, make(weight.detach()))
        return cached[2]

    def forward(self, input_ids, attention_mask, loss_mask, teacher_ids=None, teacher_logp=None, rows=None):
        """`rows`: each batch row's index in the training set (-1: an empty row), for `frozen`."""
        lm = causal_lm(self.model)
        device_type = input_ids.device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.bf16):
            if self.frozen is not None:
                hidden = self.frozen(input_ids, attention_mask, rows)  # (B, T, H)
            else:
                hidden = lm.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        predicts, targets = completion_positions(input_ids, loss_mask)
        teacher = (teacher_ids, teacher_logp) if teacher_ids is not None else None
        if teacher is not None and teacher_ids.shape[0] != targets.shape[0]:
            raise ValueError(f"the teacher has {teacher_ids.shape[0]} positions for {targets.shape[0]} completion tokens")
        hidden = hidden[predicts]
        softmax = None  # this step's vocabulary ids (None: all)
        if self.head_rows is not None and torch.is_grad_enabled():  # validation scores the whole vocabulary
            if not self.in_head.to(targets.device)[targets].all():
                raise ValueError("a completion token is not in the task's head rows")
            ends = predicts.sum(1).cumsum(0)[predicts.any(1)] - 1  # each row's last completion position
            self.keep_in_head(mined_everywhere(mined_rows(hidden, lm.lm_head.weight, ends), len(self.in_head)))
            softmax = self.head_rows.to(targets.device)
            targets = torch.searchsorted(softmax, targets)
        return chunked_head_loss(hidden, self.head(lm.lm_head.weight, softmax), targets, chunk=self.head_chunk,
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
