"""The ``detbatch`` command line: parse flags into a config, call one library function, print.

One module per group of commands (``detect``, ``evaluate``: evaluate, filter, report; ``train``: train,
export, models; ``datasets``: synth, prepare, convert, split; ``serve``), each an ``add_X(sub)`` that
declares the command's flags and a ``_run_X(args)`` that builds its config with
:func:`~detbatch.cli.common.load_job_config` and calls the library; ``main`` turns a
:class:`~detbatch.errors.DetbatchError` into one line and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from detbatch.cli.common import load_job_config
from detbatch.cli.datasets import add_convert, add_prepare, add_split, add_synth
from detbatch.cli.detect import DETECT_FLAGS, add_detect
from detbatch.cli.evaluate import EVALUATE_FLAGS, add_evaluate, add_filter, add_report
from detbatch.cli.serve import SERVE_FLAGS, add_serve
from detbatch.cli.train import TRAIN_FLAGS, add_export, add_models, add_train
from detbatch.errors import DetbatchError, RunFailed

__all__ = ["DETECT_FLAGS", "EVALUATE_FLAGS", "SERVE_FLAGS", "TRAIN_FLAGS", "build_parser", "load_job_config", "main"]

COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    add_detect,
    add_evaluate,
    add_filter,
    add_report,
    add_train,
    add_synth,
    add_prepare,
    add_convert,
    add_split,
    add_models,
    add_export,
    add_serve,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detbatch", description="Object detection at cluster scale on Ray.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser

# Loggers that stay at INFO under -v, because their DEBUG lines hold credentials.
QUIET_LOGGERS = ("botocore", "aiobotocore", "boto3", "s3transfer", "urllib3")

def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # At DEBUG the AWS clients log every signed request, session token included: -v is for detbatch.
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.getLogger(name).level, logging.INFO))
    try:
        return args.run(args)
    except RunFailed as e:  # the run started and stopped; its message says how to resume
        print(f"detbatch {args.command}: error: {e}", file=sys.stderr)
        return 1
    except DetbatchError as e:  # bad input, config or storage: the message names the value and the fix
        print(f"detbatch {args.command}: error: {e}", file=sys.stderr)
        return 2
    # Anything else is a bug: it propagates, with its traceback.

if __name__ == "__main__":
    raise SystemExit(main())
