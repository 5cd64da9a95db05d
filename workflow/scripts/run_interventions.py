"""Rule interventions: ablate the outliers the statistics located, beside random controls, and read
the scaling factor, on the windows the statistics saw."""

from pathlib import Path

from safetensors.torch import load_file

from systematic_outliers import capture, choices, interventions, passes
from systematic_outliers.io import atomic_file, write_json
from systematic_outliers.readers import Evidence
from systematic_outliers.rules import run_rule


def main(snakemake):
    name, output = snakemake.wildcards.model, snakemake.output
    evidence = Evidence.load(name, snakemake.input.stats, snakemake.input.weights)
    activation = choices.activation_targets(evidence, choices.for_model(evidence))
    sink = choices.sink_targets(evidence)
    model, _ = passes.load(name, snakemake.params.entry, Path(snakemake.input.model), attention=True)
    if sink is None:
        reason = f"{evidence.manifest['model_type']} has no attention capture in the capture table"
    elif not capture.edits_attention(model):
        sink, reason = None, f"{model.config.model_type} runs attention code of its own: keys cannot be removed or head outputs read"
    else:
        reason = ""
    input_ids = load_file(Path(snakemake.input.windows) / "input_ids.safetensors")["input_ids"]
    losses, scaling, points, record = interventions.run(model, input_ids, activation.value, sink and sink.value,
                                                        snakemake.params.seeds, reason)
    record.update({
        "model": name, "windows": int(input_ids.shape[0]), "window_length": int(input_ids.shape[1]),
        "dtype": str(model.dtype).removeprefix("torch."), "device": str(model.device), "model_type": model.config.model_type,
        "seeds": snakemake.params.seeds,
        "activation": {"layer": activation.value.layer, "channels": activation.value.channels,
                       "tokens": activation.value.tokens, "why": activation.why, "found": activation.found},
        "sink": sink and {"first_layer": sink.value.first_layer, "keys": sink.value.keys, "why": sink.why, "found": sink.found},
        "columns": {"losses": interventions.LOSS_COLUMNS, "scaling": interventions.SCALING_COLUMNS},
    })
    for path, table in ((output.losses, losses), (output.scaling, scaling), (output.points, points)):
        with atomic_file(path) as scratch:
            table.to_parquet(scratch, index=False)
    with atomic_file(output.record) as scratch:
        write_json(scratch, record)
    print(losses.groupby(["intervention", "seed"]).loss.mean().to_string())


run_rule(snakemake, main)
