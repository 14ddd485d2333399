"""The ``adapt`` command line: one sub-module per command.

Each command module exposes ``register(subparsers)`` that adds its parser and sets
``func`` to a handler taking the parsed namespace. Handlers import heavy libraries (torch,
open_clip, Lightning, MLflow) inside themselves, so ``adapt --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from adapt import __version__
from adapt.errors import AdaptError

logger = logging.getLogger("adapt")

# Command modules, in the order `adapt --help` lists them.
COMMANDS = ("demo", "pretrain", "retrain", "eval", "export", "serve", "classify", "models")

DESCRIPTION = """\
Few-shot adaptation of CLIP models to industrial inspection.

Typical flow: `adapt retrain --data DIR --method linear --shots 16` adapts a backbone on a few
labelled images per class and writes model.onnx + metrics; `adapt serve --model ...` serves it
over gRPC; `adapt classify --server HOST:PORT PATH...` is the factory client.
Run `adapt COMMAND --help` for the options of each command.
"""


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error (the usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="adapt", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"adapt {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging: -v our debug messages (e.g. connection retries), -vv also third-party libraries")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"adapt.cli.{name}").register(sub)
    return parser


class _QuietBelowWarning(logging.Filter):
    """Drops third-party records below WARNING (Lightning sets its own loggers to INFO when it is
    imported, after this configuration, so their levels alone can't keep them quiet)."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith(self.prefixes)


NOISY = ("lightning", "mlflow", "alembic", "urllib3", "onnxscript", "onnx_ir", "torch.onnx", "httpx")
_QUIET = _QuietBelowWarning(NOISY)  # one instance: adding it again (main() called twice) is a no-op


def _configure_logging(verbose: int, quiet: bool) -> None:
    """Our own loggers at INFO (WARNING with -q, DEBUG with -v); third-party libraries only warn, unless -vv.
    The one place the process's logging and warning filters are set (the CLI entry)."""
    import warnings

    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")  # else MLflow installs its own INFO handler
    logging.basicConfig(level=level if verbose > 1 else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for ours in ("adapt", "services"):
        logging.getLogger(ours).setLevel(level)
    if verbose < 2:
        # Lightning's start-up lines ("GPU available", tips) come through these loggers to a handler
        # that Lightning attaches on import; their levels are not reset by that import.
        for noisy in (*NOISY, "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        for handler in logging.getLogger().handlers:
            handler.addFilter(_QUIET)
    # Lightning 2.6 on torch 2.14 warns about its own use of a deprecated torch pytree API.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=Warning)


def main(argv: list[str] | None = None) -> int:
    from adapt.cli import config_file

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        config_file.apply(parser, argv)
    except AdaptError as exc:
        print(f"adapt: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _configure_logging(args.verbose, args.quiet)
    from adapt.pipelines.default_backbone import building_announced

    def announce(message: str) -> None:  # a command that needs a default backbone not built yet builds it, saying so
        print(f"adapt {args.command}: {message}", file=sys.stderr, flush=True)

    try:
        with building_announced(announce):
            result = args.func(args)
    except AdaptError as exc:
        print(f"adapt {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"adapt {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
