"""The planted model (planted.planted_model) with its trigger moved: the outlier at the first token and at the
delimiters '.' and '\\n' of every window and of the prompt (the positions claim's positive control), or at one
ordinary token in the middle of each window (its negative control).

The trigger is the marker channel of the embedding (planted.EMBED_CHANNEL), which the planted MLP turns into the
massive activation: giving the delimiters' embeddings the marker makes them outliers wherever they stand. Windows
of 128 tokens, at most three outliers each: the paper's rule (max |h| > 1000 × the window's mean |h|) needs the
outliers to be fewer than tokens × channels / 1000 (4.1 here); at 48 tokens it admits one."""

import torch
from planted import EMBED_CHANNEL, MASSIVE_TOKEN, planted_model
from safetensors.torch import save_file

PERIOD, NEWLINE = 8, 2  # token ids that planted.LABELS decodes as '.' and '\n'
LENGTH = 128
# window: {position: delimiter}, besides the trigger at position 0
DELIMITERS = {0: {30: PERIOD, 70: NEWLINE}, 1: {50: PERIOD}, 2: {20: PERIOD, 100: PERIOD}}
MIDDLE = 40  # the negative control's trigger: an ordinary token in the middle of each window
PROMPT = [MASSIVE_TOKEN, 5, PERIOD, 30, NEWLINE, 17]  # outliers at 0, 2 and 4
ORDINARY_PROMPT = [5, 17, MASSIVE_TOKEN, 30, 9, 17]  # the control's prompt: the trigger at position 2 only


def delimiter_model():
    """The planted model whose '.' and '\\n' carry the trigger's marker."""
    model = planted_model()
    with torch.no_grad():
        model.model.embed_tokens.weight[[PERIOD, NEWLINE], EMBED_CHANNEL] = model.model.embed_tokens.weight[MASSIVE_TOKEN, EMBED_CHANNEL]
    return model


def _ordinary(count, seed):
    ids = torch.randint(3, 60, (count, LENGTH), generator=torch.Generator().manual_seed(seed))
    ids[ids == PERIOD] = 9  # no delimiter but those placed
    return ids


def delimiter_windows(folder):
    """The trigger at position 0 and the delimiters of DELIMITERS, nothing else that carries the marker."""
    ids = _ordinary(len(DELIMITERS), 3)
    ids[:, 0] = MASSIVE_TOKEN
    for window, placed in DELIMITERS.items():
        for position, token in placed.items():
            ids[window, position] = token
    save_file({"input_ids": ids}, folder / "input_ids.safetensors")
    return ids


def middle_windows(folder):
    """The negative control's windows: an ordinary first token, the trigger at MIDDLE, no marked delimiter."""
    ids = _ordinary(3, 4)
    ids[:, MIDDLE] = MASSIVE_TOKEN
    save_file({"input_ids": ids}, folder / "input_ids.safetensors")
    return ids
