"""What the tests that run the workflow share: the Snakemake command, a small corpus and a tiny
model for `path:` sources, and a tiny training task (test_workflow, test_finished_run, test_slurm,
test_paper_rehearsal)."""

import random
import shutil
import sys
from pathlib import Path

from conftest import REPO

SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--cores", "1"]

TINY_TASK = {
    "data": {"kind": "bigram_backcopy", "length": 16, "vocab_size": 16, "triggers": 2, "task_seed": 0},
    "model": {"n_layer": 1, "n_head": 1, "n_embd": 16},
    "schedule": {
        "steps": 4,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "min_learning_rate": 1e-4,
        "warmup_steps": 1,
        "decay_steps": 4,
        "weight_decay": 0.0,
        "eval_interval": 2,
        "eval_batches": 1,
        "checkpoint_interval": 4,
    },
    "seeds": [0],
}


def small_corpus(folder: Path) -> Path:
    """Four documents of 600 words drawn from a few, with delimiters: a corpus for `path:`."""
    folder.mkdir()
    words = "summer winter warm cold . the and of is , \n".split(" ")
    for number in range(4):
        rng = random.Random(number)
        (folder / f"doc{number}.txt").write_text(" ".join(rng.choice(words) for _ in range(600)))
    return folder


def path_model(folder: Path, model, tokenizer_dir: Path) -> Path:
    """A tiny random model saved for `path:`, with SmolLM2's tokenizer."""
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, folder / name)
    return folder
