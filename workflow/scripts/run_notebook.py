"""Rules figure and gpt2_figure: run a figure notebook with papermill, keeping the executed copy."""

import os
from pathlib import Path

import papermill
from systematic_outliers.io import atomic_file
from systematic_outliers.readers import FigureDataError
from systematic_outliers.rules import run_rule


def main(snakemake):
    # the kernel is a new process: hand it the package beside this script in any environment
    package_dir = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [package_dir, os.environ.get("PYTHONPATH")]))
    # each notebook gets the parameters its parameters cell declares, out of what the rule offers
    declared = papermill.inspect_notebook(snakemake.input.notebook)
    parameters = {name: value for name, value in snakemake.params.notebook.items() if name in declared}
    try:
        with atomic_file(snakemake.output.notebook) as scratch:  # papermill saves as it goes: only a finished run lands
            papermill.execute_notebook(snakemake.input.notebook, scratch, parameters=parameters, progress_bar=False)
    except papermill.PapermillExecutionError as error:
        if error.ename == FigureDataError.__name__:  # broken or empty statistics: the user's to fix
            raise FigureDataError(error.evalue) from None
        raise


run_rule(snakemake, main)
