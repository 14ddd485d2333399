"""``--config FILE``: a command's options from a YAML file; flags on the command line win.

Keys are the long option names without dashes (``data``, ``shots``, ``output-dir`` or
``output_dir``); ``hp`` and ``describe`` may be mappings (``hp: {lr: 0.01}``). An unknown key is
an error, so a typo cannot silently fall back to a default.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from adapt.errors import AdaptError

COMMANDS = ("retrain", "pretrain")  # the commands that take --config


def add_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.yaml", default=None,
                        help="read options from a YAML file (keys = long option names, e.g. 'data: elpv', "
                             "'shots: 16', 'hp: {C: 0.5}'); command-line flags override it")


def apply(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """If ``argv`` names a command with ``--config FILE``, make the file's values that command's defaults."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS or "--config" not in argv and not any(a.startswith("--config=") for a in argv):
        return
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    path = _config_path(argv)
    values = _read(path)
    by_dest = {a.dest: a for a in sub._actions if a.option_strings and a.dest not in ("help", "config")}
    defaults = {}
    for key, value in values.items():
        dest = str(key).replace("-", "_")
        action = by_dest.get(dest)
        if action is None:
            raise AdaptError(f"{path}: unknown option '{key}' for adapt {command} (see adapt {command} --help)")
        if isinstance(value, dict):  # hp: {lr: 0.01} -> ["lr=0.01"]
            value = [f"{k}={v}" for k, v in value.items()]
        if isinstance(action, argparse._AppendAction) and not isinstance(value, list):
            value = [value]
        if isinstance(value, list) and not isinstance(action, argparse._AppendAction) and action.nargs is None:
            value = ",".join(str(v) for v in value)  # e.g. data: [synthetic, elpv] -> "synthetic,elpv"
        if action.type is not None and not isinstance(value, list) and value is not None:
            try:
                value = action.type(value) if not isinstance(value, bool) else value
            except (TypeError, ValueError) as exc:
                raise AdaptError(f"{path}: option '{key}': {exc}") from exc
        if action.choices is not None and value not in action.choices and not isinstance(value, list):
            raise AdaptError(f"{path}: option '{key}' must be one of {', '.join(map(str, action.choices))}, got {value!r}")
        action.required = False
        defaults[dest] = value
    sub.set_defaults(**defaults)


def _config_path(argv: list[str]) -> Path:
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return Path(a.split("=", 1)[1])
        if a == "--config" and i + 1 < len(argv):
            return Path(argv[i + 1])
    raise AdaptError("--config needs a file")


def _read(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.expanduser().read_text())
    except OSError as exc:
        raise AdaptError(f"--config {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise AdaptError(f"--config {path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise AdaptError(f"--config {path}: expected a mapping of option names to values")
    return data
