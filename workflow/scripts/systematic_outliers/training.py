"""Training the GPT-2 attention variants: the schedule, the loop, checkpoints that resume exactly.

The data comes from tasks.py (the synthetic testbed or text windows).

Resuming: the checkpoint holds the model, the optimizer and the log rows so far, and each
step's data depends only on (seed, step, rank), so a killed run continued from its last
checkpoint ends with the same weights and the same log as one that never stopped (apart from
the wall-clock column).
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from .devices import device
from .gpt2 import GPT, GPTConfig
from .io import atomic_file, write_json
from .tasks import BigramBackcopy


@dataclass
class Schedule:
    steps: int
    batch_size: int
    learning_rate: float
    min_learning_rate: float
    warmup_steps: int
    decay_steps: int  # cosine from the peak to min_learning_rate over this many steps, then flat
    weight_decay: float
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    gradient_accumulation: int = 1
    eval_interval: int = 100
    eval_batches: int = 8
    checkpoint_interval: int = 500
    seed: int = 0
    precision: str = "float32"  # or bfloat16 (autocast)

    def learning_rate_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.learning_rate * (step + 1) / (self.warmup_steps + 1)
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.decay_steps - self.warmup_steps))
        return self.min_learning_rate + 0.5 * (1 + math.cos(math.pi * progress)) * (self.learning_rate - self.min_learning_rate)


def validation_batches(data, schedule: Schedule, device: torch.device | None = None) -> list:
    """Fixed validation batches (their own generator), the same for every variant and every
    resume, on `device`."""
    generator = torch.Generator().manual_seed(10_000 + schedule.seed)
    batches = [data.validation_batch(schedule.batch_size, generator) for _ in range(schedule.eval_batches)]
    return [tuple(t if t is None else t.to(device) for t in batch) for batch in batches]


@torch.no_grad()
def evaluate(model: GPT, batches, data) -> dict:
    model.eval()
    losses, correct, copies = [], 0, 0
    for inputs, targets, mask in batches:
        logits, loss = model(inputs, targets, mask)
        losses.append(loss.item())
        if isinstance(data, BigramBackcopy):
            positions = data.copy_positions(inputs)
            correct += (logits.argmax(-1)[positions] == targets[positions]).sum().item()
            copies += positions.sum().item()
    model.train()
    result = {"val_loss": sum(losses) / len(losses)}
    if isinstance(data, BigramBackcopy):
        result["backcopy_accuracy"] = correct / max(1, copies)
    return result


def optimizer_for(model: GPT, schedule: Schedule) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings only, as nanoGPT."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in parameters if p.dim() >= 2], "weight_decay": schedule.weight_decay},
        {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=schedule.learning_rate, betas=(schedule.beta1, schedule.beta2))


LOG_COLUMNS = ("step", "tokens", "train_loss", "val_loss", "backcopy_accuracy", "learning_rate", "seconds")


def _batch_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The data of a step depends on (seed, step, rank) only, so a resumed run draws what the
    uninterrupted one drew without saving any generator state."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 1_009 + rank)


def _distributed(gpus: int) -> tuple[int, int, torch.device]:
    """(rank, world size, device): under torchrun one GPU per process with DDP, else the one device of
    a job granted `gpus` cards (devices.device: the CPU with 0)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0, 1, device(gpus, "the training run")
    dist.init_process_group("nccl")
    local = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    return dist.get_rank(), dist.get_world_size(), torch.device("cuda", local)


def train(model_config: GPTConfig, schedule: Schedule, data, folder: Path, stop_after: int | None = None, gpus: int = 0) -> list[dict]:
    """Train into `folder` (checkpoint.pt while running; model.safetensors, config.json and log.csv at the end).

    Resumes from folder/checkpoint.pt when present. `stop_after` ends the process's work after
    that many steps as a kill would (tests use it); the checkpoint then holds the last save.
    Under torchrun the micro-batches of a step are shared among the processes (DDP); rank 0
    evaluates, logs and saves.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint_path = folder / "checkpoint.pt"
    rank, world, device = _distributed(gpus)
    if schedule.gradient_accumulation % world:
        raise ValueError(f"gradient_accumulation {schedule.gradient_accumulation} is not a multiple of the {world} processes")
    torch.manual_seed(schedule.seed)
    model = GPT(model_config).to(device)
    optimizer = optimizer_for(model, schedule)
    step, seconds, rows = 0, 0.0, []
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, weights_only=True, map_location=device)
        if state["model_config"] != model_config.to_dict():
            raise ValueError(f"{checkpoint_path} was written for another model ({state['model_config']}); delete it to start over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, seconds, rows = state["step"], state["seconds"], state["rows"]
    trained = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(model, device_ids=[device.index])
    validation = validation_batches(data, schedule, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=schedule.precision == "bfloat16")
    model.train()
    micro_steps = schedule.gradient_accumulation // world
    tokens_per_step = schedule.batch_size * schedule.gradient_accumulation * data.length
    progress = tqdm(
        range(step, schedule.steps),
        initial=step,
        total=schedule.steps,
        desc=model_config.attention,
        unit="step",
        disable=rank > 0,
        mininterval=0.1 if sys.stderr.isatty() else 10,
    )  # a log file gets a line per 10 s
    started = time.perf_counter() - seconds
    for step in progress:
        if stop_after is not None and step >= stop_after:
            return rows
        learning_rate = schedule.learning_rate_at(step)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        generator = _batch_generator(schedule.seed, step, rank)
        train_loss = torch.zeros((), device=device)  # a tensor: no device sync per micro-batch
        for micro in range(micro_steps):
            inputs, targets, mask = (t if t is None else t.to(device) for t in data.batch(schedule.batch_size, generator))
            if world > 1:  # all-reduce the gradients once per step, on the last micro-batch
                trained.require_backward_grad_sync = micro == micro_steps - 1
            with autocast:
                _, loss = trained(inputs, targets, mask)
            (loss / micro_steps).backward()
            train_loss += loss.detach() / micro_steps
        torch.nn.utils.clip_grad_norm_(model.parameters(), schedule.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        if rank > 0:
            continue
        if done % schedule.eval_interval == 0 or done == schedule.steps:
            row = {
                "step": done,
                "tokens": done * tokens_per_step,
                "train_loss": train_loss.item(),
                **evaluate(model, validation, data),
                "learning_rate": learning_rate,
                "seconds": time.perf_counter() - started,
            }
            rows.append(row)
            _write_log(folder / "log.csv", rows)  # rewritten whole at each evaluation: follow it while it trains
            progress.set_postfix(val_loss=f"{row['val_loss']:.3f}")
        if done % schedule.checkpoint_interval == 0 and done < schedule.steps:
            _save_checkpoint(checkpoint_path, model, optimizer, model_config, done, time.perf_counter() - started, rows)
    if rank == 0:
        _save_result(folder, model, model_config, schedule, rows)
        checkpoint_path.unlink(missing_ok=True)
    return rows


def _save_checkpoint(path, model, optimizer, model_config, step, seconds, rows) -> None:
    with atomic_file(path) as scratch:
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "model_config": model_config.to_dict(),
                "step": step,
                "seconds": seconds,
                "rows": rows,
            },
            scratch,
        )


def _write_log(path: Path, rows) -> None:
    with atomic_file(path) as scratch, open(scratch, "w", newline="") as handle:
        writer = csv.DictWriter(handle, LOG_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _save_result(folder: Path, model, model_config, schedule, rows) -> None:
    from safetensors.torch import save_model

    with atomic_file(folder / "model.safetensors") as scratch:
        save_model(model, str(scratch))  # handles the tied embedding
    with atomic_file(folder / "config.json") as scratch:
        write_json(
            scratch,
            {
                "model": model_config.to_dict(),
                "schedule": schedule.__dict__,
                "extra_parameters": model.extra_parameters(),
                "parameters": sum(p.numel() for p in model.parameters()),
            },
        )
    _write_log(folder / "log.csv", rows)


def load_trained(folder: Path) -> GPT:
    """A trained variant from its folder (safetensors weights and config.json)."""
    import json

    from safetensors.torch import load_model

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    model = GPT(GPTConfig(**config["model"]))
    load_model(model, str(folder / "model.safetensors"))
    return model.eval()


def schedule(task: dict, seed: int) -> Schedule:
    """The schedule of a training.tasks entry for one seed."""
    return Schedule(**task["schedule"], seed=seed)
