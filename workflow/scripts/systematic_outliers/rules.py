"""Glue between Snakemake's `script:` directive and the package."""

from __future__ import annotations

import logging
import sys
import traceback

from .config import UserError


def run_rule(snakemake, main) -> None:
    """Run `main(snakemake)` with its output in the rule's log.

    Problems the user can fix (bad config, unreachable source) end as one line on
    the console and in the log, and exit non-zero; anything else is a bug and keeps
    its traceback in the log.
    """
    console, console_out = sys.stderr, sys.stdout
    with open(snakemake.log[0], "w") as log:
        sys.stdout = sys.stderr = log
        logging.basicConfig(stream=log, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)
        try:
            main(snakemake)
        except UserError as error:
            print(f"error: {error}", file=log)
            print(f"error: {error}", file=console)
            sys.exit(1)
        except BaseException:
            traceback.print_exc(file=log)
            raise
        finally:
            log.flush()
            sys.stdout, sys.stderr = console_out, console
