"""Training: the testbed's sequences follow its rules, and a killed run resumes to the same result."""

import csv
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO
from systematic_outliers.gpt2 import GPTConfig
from systematic_outliers.tasks import BOS, BigramBackcopy, TextWindows
from systematic_outliers.training import Schedule, load_trained, train

TINY = GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=1, n_embd=16, tie_weights=False, attention="context_scale")


def schedule(**overrides):
    return Schedule(
        **{
            **dict(
                steps=300,
                batch_size=8,
                learning_rate=3e-3,
                min_learning_rate=3e-4,
                warmup_steps=20,
                decay_steps=300,
                weight_decay=0.01,
                eval_interval=20,
                eval_batches=2,
                checkpoint_interval=50,
            ),
            **overrides,
        }
    )


def test_backcopy_sequences_copy_after_triggers_and_follow_the_table_elsewhere():
    task = BigramBackcopy(vocab_size=64, length=64, triggers=3)
    tokens = task.sequences(200, torch.Generator().manual_seed(0))
    assert torch.all(tokens[:, 0] == BOS) and torch.all(tokens[:, 1:] != BOS)
    after_trigger = task.is_trigger[tokens[:, 2:-1]]
    assert after_trigger.sum() > 500  # triggers are common enough to learn from
    assert torch.equal(tokens[:, 3:][after_trigger], tokens[:, 1:-2][after_trigger])  # the copy
    ordinary = ~task.is_trigger[tokens[:, 1:-1]]
    ordinary[:, 0] |= True  # position 1 never copies
    pairs = torch.stack([tokens[:, 1:-1][ordinary], tokens[:, 2:][ordinary]], dim=1)
    assert torch.all(task.table[pairs[:, 0], pairs[:, 1]] > 0)  # every other step is a bigram the table allows
    # … drawn with the table's probabilities: each (previous, next) frequency within 5 standard errors
    tokens = task.sequences(4000, torch.Generator().manual_seed(1))
    previous, following = tokens[:, 2:-1].flatten(), tokens[:, 3:].flatten()
    drawn = ~task.is_trigger[previous]
    counts = torch.zeros(64, 64).index_put_((previous[drawn], following[drawn]), torch.ones(int(drawn.sum())), accumulate=True)
    seen = counts.sum(1, keepdim=True)
    rows = seen.squeeze(1) > 0
    error = (task.table * (1 - task.table) / seen.clamp_min(1)).sqrt()
    assert rows.sum() == 64 - 1 - 3 and torch.all((counts / seen.clamp_min(1) - task.table)[rows].abs() <= 5 * error[rows] + 1e-6)
    inputs, targets, mask = task.batch(4, torch.Generator().manual_seed(0))
    assert not mask[:, 0].any() and mask[:, 1:].all() and torch.equal(inputs[:, 1:], targets[:, :-1])


@pytest.mark.parametrize("count, seed", [(32, 0), (32, 7), (1, 20_000), (200, 1)])
def test_backcopy_sequences_are_torch_multinomials_draws_per_position_bit_for_bit(count, seed):
    """The sampler draws every exponential at once; the data must be what one multinomial call per position draws."""
    task = BigramBackcopy(vocab_size=64, length=64, triggers=3)
    generator = torch.Generator().manual_seed(seed)
    expected = torch.empty(count, 65, dtype=torch.long)
    expected[:, 0] = BOS
    expected[:, 1] = torch.randint(1, 64, (count,), generator=generator)
    for t in range(1, 64):
        drawn = torch.multinomial(task.table[expected[:, t]], 1, generator=generator).squeeze(1)
        expected[:, t + 1] = torch.where(task.is_trigger[expected[:, t]] & (t >= 2), expected[:, t - 1], drawn)
    assert torch.equal(task.sequences(count, torch.Generator().manual_seed(seed)), expected)


def test_text_windows_refuse_a_text_too_short_for_them():
    with pytest.raises(ValueError, match="the text has 10 training and 5 validation tokens; windows of 16 need more"):
        TextWindows(torch.arange(10), torch.arange(5), 16)


def _train_in_a_child(folder):
    code = (
        "import sys; sys.path.insert(0, 'workflow/scripts'); sys.path.insert(0, 'tests');"
        "from test_training import TINY, schedule; from systematic_outliers.tasks import BigramBackcopy; from systematic_outliers.training import train;"
        f"train(TINY, schedule(steps=800, decay_steps=800), BigramBackcopy(length=32), {str(folder)!r})"
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_killed_run_resumes_from_its_checkpoint_to_the_uninterrupted_result(tmp_path):
    killed = tmp_path / "killed"
    child = _train_in_a_child(killed)
    try:
        deadline = time.time() + 120
        while not (killed / "checkpoint.pt").exists():
            assert child.poll() is None and time.time() < deadline, "the child ended before its first checkpoint"
            time.sleep(0.01)
        time.sleep(0.2)  # somewhere past the checkpoint, mid-run
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert not (killed / "model.safetensors").exists()
    stopped_at = torch.load(killed / "checkpoint.pt", weights_only=True)["step"]
    assert 0 < stopped_at < 800

    long = schedule(steps=800, decay_steps=800)
    resumed_rows = train(TINY, long, BigramBackcopy(length=32), killed)
    straight_rows = train(TINY, long, BigramBackcopy(length=32), tmp_path / "straight")
    resumed, straight = load_trained(killed), load_trained(tmp_path / "straight")
    for (name, a), (_, b) in zip(resumed.state_dict().items(), straight.state_dict().items()):
        assert torch.equal(a, b), name

    def without_time(rows):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    assert without_time(resumed_rows) == without_time(straight_rows)
    assert not (killed / "checkpoint.pt").exists()
    with open(killed / "log.csv") as handle:
        logged = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in logged] == list(range(20, 801, 20))


def test_the_papers_precision_and_accumulation_resume_to_the_uninterrupted_weights(tmp_path):
    """config/paper.yaml trains in bfloat16 autocast with gradient accumulation: stopped after a
    checkpoint (as a kill leaves it) and resumed, the run ends with the uninterrupted run's weights."""
    paper_like = schedule(steps=40, decay_steps=40, precision="bfloat16", gradient_accumulation=3, checkpoint_interval=15, eval_interval=10)
    data = BigramBackcopy(length=32)
    train(TINY, paper_like, data, tmp_path / "killed", stop_after=22)
    assert torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["step"] == 15
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    resumed_rows = train(TINY, paper_like, data, tmp_path / "killed")
    straight_rows = train(TINY, paper_like, data, tmp_path / "straight")
    resumed, straight = load_trained(tmp_path / "killed"), load_trained(tmp_path / "straight")
    for (name, a), (_, b) in zip(resumed.state_dict().items(), straight.state_dict().items()):
        assert torch.equal(a, b), name
    assert [row["val_loss"] for row in resumed_rows] == [row["val_loss"] for row in straight_rows]
    # and bfloat16 did train: the loss fell, and the float32 run of the same schedule differs from it
    assert straight_rows[-1]["val_loss"] < straight_rows[0]["val_loss"]
    full = train(
        TINY,
        schedule(steps=40, decay_steps=40, gradient_accumulation=3, checkpoint_interval=15, eval_interval=10),
        data,
        tmp_path / "float32",
    )
    assert full[-1]["val_loss"] != straight_rows[-1]["val_loss"]


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    train(TINY, schedule(steps=60, checkpoint_interval=50), BigramBackcopy(length=32), tmp_path, stop_after=55)
    other = GPTConfig(**{**TINY.to_dict(), "attention": "default"})
    with pytest.raises(ValueError, match="checkpoint.pt was written for another model"):
        train(other, schedule(steps=60), BigramBackcopy(length=32), tmp_path)


def test_torchruns_output_lands_in_the_rule_log(tmp_path, monkeypatch):
    """A multi-GPU task runs under torchrun; what its processes print (here: that this machine has
    no NCCL to start them with) goes to the rule's log, not past it. Without the GPUs it asks for, it
    stops before torchrun with one line in the log."""
    import runpy
    import types

    from systematic_outliers import devices

    log = tmp_path / "train.log"
    task = {
        "data": {"kind": "bigram_backcopy", "length": 16, "vocab_size": 16, "triggers": 2, "task_seed": 0},
        "model": {"n_layer": 1, "n_head": 1, "n_embd": 16},
        "gpus": 2,
        "schedule": {
            "steps": 2,
            "batch_size": 2,
            "learning_rate": 1e-3,
            "min_learning_rate": 1e-4,
            "warmup_steps": 1,
            "decay_steps": 2,
            "weight_decay": 0.0,
            "eval_interval": 1,
            "eval_batches": 1,
            "checkpoint_interval": 2,
        },
    }
    job = types.SimpleNamespace(
        log=[str(log)],
        threads=1,
        params=types.SimpleNamespace(task=task),
        input=types.SimpleNamespace(data=[]),
        output=types.SimpleNamespace(model=str(tmp_path / "run" / "model.safetensors")),
        wildcards=types.SimpleNamespace(task="multi", variant="default", seed="0"),
        resources=types.SimpleNamespace(gpu=2),
    )
    script = str(REPO / "workflow" / "scripts" / "train_variant.py")
    with pytest.raises(SystemExit):
        runpy.run_path(script, init_globals={"snakemake": job})
    assert log.read_text().startswith("error: training.tasks.multi asks for 2 GPUs but torch sees none")
    monkeypatch.setattr(devices, "device", lambda gpus, who: None)  # as if the cards were there
    with pytest.raises(subprocess.CalledProcessError):
        runpy.run_path(script, init_globals={"snakemake": job})
    text = log.read_text()
    assert "torch.distributed" in text and ("NCCL" in text or "nccl" in text), text[-2000:]
