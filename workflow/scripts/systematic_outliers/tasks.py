"""The GPT-2 training tasks: their data and the config entries that build them.

- `BigramBackcopy` (Guo et al., arXiv 2410.13835): sequences start with BOS; each next token
  follows a fixed random bigram table, except that right after a trigger token it copies the
  token before the trigger. A softmax head that copies must do nothing at every other position,
  which it does by parking its attention on BOS: the mechanism the paper says outliers serve.
- `TextWindows`: random windows of a token stream, with a fixed validation set.

The training loop (training.py) takes any object with `batch`, `validation_batch` and `length`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from .gpt2 import GPTConfig
from .io import write_json

BOS = 0


class BigramBackcopy:
    """Bigram-Backcopy sequences over `vocab_size` tokens (0 is BOS), fixed by `task_seed`."""

    def __init__(self, vocab_size: int = 64, length: int = 64, triggers: int = 3, task_seed: int = 0):
        generator = torch.Generator().manual_seed(task_seed)
        self.vocab_size, self.length = vocab_size, length
        self.triggers = (torch.randperm(vocab_size - 1, generator=generator)[:triggers] + 1).tolist()
        # a dense random table: the previous token's value would spoil every bigram guess, so a
        # copy head must go dormant at non-trigger positions (with a sparse table it need not)
        self.table = torch.zeros(vocab_size, vocab_size)
        self.table[1:, 1:] = torch.rand(vocab_size - 1, vocab_size - 1, generator=generator) + 0.1
        self.table /= self.table.sum(dim=1, keepdim=True).clamp_min(1e-12)
        self.is_trigger = torch.zeros(vocab_size, dtype=torch.bool)
        self.is_trigger[self.triggers] = True

    def sequences(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """`count` sequences of length + 1 tokens, BOS first.

        Each next token is what `torch.multinomial(table[previous], 1)` draws: for one sample torch
        takes argmax(p / q) with q ~ Exp(1) per entry (the Gumbel-max trick). Here every q of the
        batch comes from one `exponential_` call, which consumes the generator exactly as the calls
        per position did, and the chain is walked in numpy: the same tokens, bit for bit (tested),
        where a loop of small torch calls cost a sixth of a training step."""
        import numpy as np

        tokens = torch.empty(count, self.length + 1, dtype=torch.long)
        tokens[:, 0] = BOS
        tokens[:, 1] = torch.randint(1, self.vocab_size, (count,), generator=generator)
        exponential = torch.empty(self.length - 1, count, self.vocab_size).exponential_(1, generator=generator).numpy()
        table, is_trigger, walked = self.table.numpy(), self.is_trigger.numpy(), tokens.numpy()  # walked shares tokens' memory
        for t in range(1, self.length):
            previous = walked[:, t]
            drawn = (table[previous] / exponential[t - 1]).argmax(axis=1)
            walked[:, t + 1] = np.where(is_trigger[previous] & (t >= 2), walked[:, t - 1], drawn)
        return tokens

    def batch(self, size: int, generator: torch.Generator):
        tokens = self.sequences(size, generator)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        loss_mask = torch.ones_like(inputs, dtype=torch.bool)
        loss_mask[:, 0] = False  # the first token after BOS is drawn uniformly: nothing to learn
        return inputs, targets, loss_mask

    validation_batch = batch  # fresh sequences from the validation generator

    def copy_positions(self, inputs: torch.Tensor) -> torch.Tensor:
        """Positions whose next token is a copy: a trigger with a real token before it."""
        positions = self.is_trigger.to(inputs.device)[inputs]
        positions[:, :2] = False
        return positions


class TextWindows:
    """Random windows of a token stream (the training split) and fixed ones of the validation split;
    the streams may be memory-mapped arrays of any size."""

    def __init__(self, train: torch.Tensor, validation: torch.Tensor, length: int):
        if len(train) <= length or len(validation) <= length:
            raise ValueError(f"the text has {len(train)} training and {len(validation)} validation tokens; windows of {length} need more")
        self.train, self.validation, self.length = train, validation, length

    def _windows(self, stream, size, generator):
        import numpy as np

        starts = torch.randint(0, len(stream) - self.length - 1, (size,), generator=generator)
        tokens = torch.from_numpy(np.stack([np.asarray(stream[s : s + self.length + 1], dtype=np.int64) for s in starts.tolist()]))
        return tokens[:, :-1], tokens[:, 1:], None

    def batch(self, size: int, generator: torch.Generator):
        return self._windows(self.train, size, generator)

    def validation_batch(self, size: int, generator: torch.Generator):
        return self._windows(self.validation, size, generator)


def prepare_text(data_config: dict, documents: list[str], separator: str, target: Path) -> dict:
    """Encode a corpus for a text task into folder `target`, document by document (nanoGPT's
    layout): train.bin and validation.bin hold the token ids (uint16 when they fit), the last
    validation_share of the documents being the validation split; vocabulary.json says how to
    read them and holds the encoded analysis prompt."""
    import numpy as np

    from .io import atomic_directory

    prompt = data_config["prompt"]
    if data_config["kind"] == "characters":
        characters = sorted(set().union(*map(set, documents), separator, prompt))
        index = {c: i for i, c in enumerate(characters)}

        def encode(text):
            return [index[c] for c in text]

        vocab_size, labels = len(characters), [c.replace("\n", "\\n") for c in prompt]
        vocabulary = {"kind": "characters", "characters": characters}
    else:
        from transformers import AutoTokenizer

        repository = data_config["tokenizer"].removeprefix("hf:")
        tokenizer = AutoTokenizer.from_pretrained(repository)

        def encode(text):
            return tokenizer(text, add_special_tokens=False).input_ids

        vocab_size = (len(tokenizer) + 63) // 64 * 64  # nanoGPT's padding, a multiple of 64
        labels = [tokenizer.decode([i]).replace("\n", "\\n") for i in encode(prompt)]
        vocabulary = {"kind": "tokens", "tokenizer": repository}
    dtype = np.uint16 if vocab_size <= 2**16 else np.uint32
    first_validation = int(len(documents) * (1 - data_config["validation_share"]))
    if not 0 < first_validation < len(documents):
        raise ValueError(f"{len(documents)} documents cannot be split with validation_share {data_config['validation_share']}")
    separator_ids = encode(separator)
    counts = {"train": 0, "validation": 0}
    with atomic_directory(target) as staging:
        with open(staging / "train.bin", "wb") as train, open(staging / "validation.bin", "wb") as validation:
            for number, document in enumerate(tqdm(documents, desc="documents", unit="doc", mininterval=10)):
                split = "train" if number < first_validation else "validation"
                ids = np.asarray(encode(document) + separator_ids, dtype=dtype)
                ids.tofile(train if split == "train" else validation)
                counts[split] += len(ids)
        vocabulary.update(
            vocab_size=vocab_size,
            dtype=np.dtype(dtype).name,
            prompt=prompt,
            prompt_ids=encode(prompt),
            prompt_tokens=labels,
            train_tokens=counts["train"],
            validation_tokens=counts["validation"],
        )
        write_json(staging / "vocabulary.json", vocabulary)
    return vocabulary


def load_task(task: dict, data_dir: Path | None = None):
    """(data, vocab_size, prompt ids, prompt labels) of a training.tasks entry."""
    data_config = task["data"]
    if data_config["kind"] == "bigram_backcopy":
        data = BigramBackcopy(data_config["vocab_size"], data_config["length"], data_config["triggers"], data_config["task_seed"])
        prompt = data.sequences(1, torch.Generator().manual_seed(20_000))[
            0, : min(16, data.length)
        ]  # a fixed sequence, short enough to label
        labels = ["BOS" if t == BOS else f"T{t}" if data.is_trigger[t] else str(int(t)) for t in prompt]
        return data, data.vocab_size, prompt.tolist(), labels
    import json

    import numpy as np

    vocabulary = json.loads((Path(data_dir) / "vocabulary.json").read_text())
    train, validation = (
        np.memmap(Path(data_dir) / f"{split}.bin", dtype=vocabulary["dtype"], mode="r") for split in ("train", "validation")
    )
    data = TextWindows(train, validation, data_config["length"])
    return data, vocabulary["vocab_size"], vocabulary["prompt_ids"], vocabulary["prompt_tokens"]


def model_config(task: dict, variant: str, vocab_size: int) -> GPTConfig:
    return GPTConfig(vocab_size=vocab_size, block_size=task["data"]["length"], attention=variant, **task["model"])
