"""``steward proxy --config FILE``: a deployment's flags in one YAML file.

The file is a mapping whose keys are the long flag names without the dashes
(``oidc-issuer`` or ``oidc_issuer``) and whose values are what the flag takes:
a string or number, ``true`` for a switch (``false`` leaves it off), a list
for a flag that may repeat (``policy``, ``identity-group``). :func:`expand`
turns the file into flags placed before the command line's own, so a flag
given on the command line wins: for a repeatable flag the command line's
values replace the file's rather than adding to them.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """The config file cannot be read, or names something that is not a flag."""


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Long option name (without dashes) -> its action."""
    options = {}
    for action in parser._actions:  # argparse has no public listing
        for option in action.option_strings:
            if option.startswith("--") and option not in ("--help", "--config"):
                options[option[2:]] = action
    return options


def _given(argv: Sequence[str], action: argparse.Action) -> bool:
    return any(
        token == option or token.startswith(option + "=")
        for token in argv
        for option in action.option_strings
    )


def config_path(argv: Sequence[str]) -> str | None:
    """The value of ``--config`` in ``argv``, if given."""
    for index, token in enumerate(argv):
        if token == "--config" and index + 1 < len(argv):
            return argv[index + 1]
        if token.startswith("--config="):
            return token.split("=", 1)[1]
    return None


def flags_from(document: Any, parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """The flags a config document stands for, leaving out those ``argv`` gives."""
    if document is None:
        return []
    if not isinstance(document, Mapping):
        raise ConfigError("the config file must be a mapping of flag names to values")
    options = _options(parser)
    flags: list[str] = []
    for key, value in document.items():
        name = str(key).replace("_", "-")
        action = options.get(name)
        if action is None:
            raise ConfigError(f"{key}: not a flag of steward proxy")
        if _given(argv, action):
            continue  # the command line wins
        option = f"--{name}"
        if action.nargs == 0:  # a switch
            if not isinstance(value, bool):
                raise ConfigError(f"{key}: expected true or false")
            if value:
                flags.append(option)
            continue
        values = value if isinstance(value, list) else [value]
        if len(values) > 1 and not isinstance(action, argparse._AppendAction):
            raise ConfigError(f"{key}: takes one value")
        for item in values:
            if isinstance(item, Mapping | list) or item is None or isinstance(item, bool):
                raise ConfigError(f"{key}: expected a string or a number")
            flags += [option, str(item)]
    return flags


def expand(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """``argv`` with the config file's flags in front of the command line's own."""
    path = config_path(argv)
    if path is None:
        return list(argv)
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror or exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: not YAML: {exc}") from None
    try:
        return flags_from(document, parser, argv) + list(argv)
    except ConfigError as exc:
        raise ConfigError(f"--config {path}: {exc}") from None
