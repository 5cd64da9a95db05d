"""Memory planned before loading: the plan against a measured peak, a job too large for its device
refused with the numbers, and device_map auto never spilling onto the CPU or disk."""

import json
import subprocess
import sys

import pytest
from conftest import REPO
from planted import LABELS
from systematic_outliers import memory, passes
from systematic_outliers.models import SourceError

ENTRY = {"dtype": "float32", "trust_remote_code": False}

# One pass of T tokens through a tiny model whose memory is its attention (8 heads × T²), measured as the
# growth of the process's peak resident memory over the pass (VmHWM, reset before it; in a child process).
MEASURE = """
import json, sys
sys.path[:0] = ["tests", "workflow/scripts"]
from pathlib import Path
import torch, transformers
from conftest import save_with_architecture, tiny_model
from planted import LABELS
from safetensors.torch import save_file
from systematic_outliers import memory, passes
tokens, dtype, folder = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
model = tiny_model("llama", max_position_embeddings=4096, hidden_size=64, num_attention_heads=8, num_key_value_heads=8)
save_with_architecture(model, folder / "model")
save_file({"input_ids": torch.randint(0, 96, (1, tokens))}, folder / "input_ids.safetensors")
transformers.AutoTokenizer.from_pretrained = lambda *args, **kwargs: LABELS
model, _ = passes.load("tiny", {"dtype": dtype, "trust_remote_code": False}, folder / "model", tokens=tokens)
def kib(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))
with torch.no_grad():
    model(torch.zeros(1, 8, dtype=torch.long))  # warm: kernels and the allocator's first pages
open("/proc/self/clear_refs", "w").write("5")  # the peak from here on: loading may have peaked higher
before = kib("VmRSS")
passes.corpus_statistics(model, LABELS, folder, folder / "stats")
grown = (kib("VmHWM") - before) * 1024
plan = memory.plan(folder / "model", dtype, tokens)
print(json.dumps({"measured": grown, "planned": plan.total - plan.weights}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_plan_is_within_a_factor_of_two_of_the_measured_peak(tmp_path, dtype):
    done = subprocess.run([sys.executable, "-c", MEASURE, "2048", dtype, str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["measured"] > 100 * 2**20  # the pass did allocate its attention
    assert 0.5 < result["planned"] / result["measured"] < 2, result


def test_a_job_too_large_for_its_device_is_refused_with_the_numbers(tiny_model_dir, monkeypatch):
    _, folder = tiny_model_dir("llama")
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", lambda *args, **kwargs: LABELS)
    needed = memory.plan(folder, "float32", tokens=128, cached_windows=10)
    assert needed.attention == 4 * 128 * 128 * 12 and needed.caches == 10 * memory.REPLAY_STARTS * 128 * 32 * 4
    monkeypatch.setattr(passes, "free_memory", lambda device: needed.total - 1)
    with pytest.raises(SourceError) as error:
        passes.load("tiny", ENTRY, folder, tokens=128, cached_windows=10)
    assert str(error.value) == (
        f"models.tiny: needs {needed} but {memory.readable(needed.total - 1)} is free on cpu; "
        "ask for more GPUs (models.tiny.gpus with device_map: auto), use a shorter window_length or a smaller models.tiny.dtype"
    )
    assert str(needed) == (
        f"{needed.total / 2**20:.1f} MiB (weights {needed.weights / 2**20:.1f} MiB, attention 0.8 MiB, logits {needed.logits / 2**20:.1f} MiB, "
        f"activations {needed.activations / 2**20:.1f} MiB, replay caches 0.5 MiB)"
    )
    assert memory.readable(3 * 2**30) == "3.00 GiB"
    monkeypatch.setattr(passes, "free_memory", lambda device: needed.total)
    passes.load("tiny", ENTRY, folder, tokens=128, cached_windows=10)  # it fits exactly


def test_device_map_auto_never_offloads(tiny_model_dir, monkeypatch):
    """accelerate puts what does not fit max_memory on the disk: the load refuses instead."""
    _, folder = tiny_model_dir("llama")
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", lambda *args, **kwargs: LABELS)
    monkeypatch.setattr(passes, "check_fits", lambda *args: {"cpu": 20_000})  # room for the embeddings, not the layers
    with pytest.raises(
        SourceError, match=r"^models.tiny: device_map auto would put \d+ modules? \(.+\) on disk: it needs [\d.]+ MiB \(weights"
    ):
        passes.load("tiny", {**ENTRY, "device_map": "auto"}, folder)


def test_a_model_spread_over_cards_keeps_room_for_its_working_set_on_each(tiny_model_dir, monkeypatch):
    """device_map auto over two (faked) cards: each keeps the non-weight part free, the weights get the
    rest; a card too small for the working set refuses the job even when the sum would do."""
    import torch

    _, folder = tiny_model_dir("llama")
    needed = memory.plan(folder, "float32", tokens=128)
    working = needed.total - needed.weights
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    free = {0: working + needed.weights // 2 + 1, 1: working + needed.weights // 2 + 1}
    monkeypatch.setattr(passes, "free_memory", lambda card: free[card.index])
    assert passes.check_fits("tiny", needed, torch.device("cuda", 0), spread=True) == {0: free[0] - working, 1: free[1] - working}
    free[1] = working - 1  # the second card cannot hold a layer's attention
    with pytest.raises(SourceError, match=r"^models.tiny: needs .* is free on 2 visible cards; ask for more GPUs"):
        passes.check_fits("tiny", needed, torch.device("cuda", 0), spread=True)


def test_the_quantizations_copy_of_the_weights_is_counted_on_the_host(tiny_model_dir, monkeypatch):
    """Rule quantization keeps the full-precision weights in host memory: on the CPU they count against
    the same memory as the model; on a GPU they are checked against the host's, not the card's."""
    import torch

    _, folder = tiny_model_dir("llama")
    plain, copied = memory.plan(folder, "float32", tokens=128), memory.plan(folder, "float32", tokens=128, host_copy=True)
    assert copied.host_copy == copied.weights and copied.total == plain.total + plain.weights
    assert "weights copied to the host" in str(copied)
    monkeypatch.setattr(passes, "free_memory", lambda device: plain.total)  # room for the model, not for its copy
    with pytest.raises(SourceError, match=r"^models.tiny: needs .* is free on cpu"):
        passes.check_fits("tiny", copied, torch.device("cpu"))
    free = {"cuda": plain.total, "cpu": plain.weights - 1}  # the card holds the job; the host cannot hold the copy
    monkeypatch.setattr(passes, "free_memory", lambda device: free[device.type])
    with pytest.raises(SourceError, match=r"^models.tiny: rule quantization keeps the full-precision weights in host memory"):
        passes.check_fits("tiny", copied, torch.device("cuda", 0))
    free["cpu"] = plain.weights
    assert passes.check_fits("tiny", copied, torch.device("cuda", 0)) == {0: plain.weights}
