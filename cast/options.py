"""Helpers for command-line options that mirror keys of ``params.yaml``.

DVC's dictionary unpacking (``${pretrain}`` in a ``cmd``) and the Snakemake
helper ``options()`` in ``workflow/rules/common.smk`` both turn a parameter
group into ``--key value`` pairs with the key spelled as in ``params.yaml``
(underscores). Every option is therefore registered with underscores and,
for people typing commands, with dashes as well.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup, name: str, **kwargs: Any) -> None:
    """Add ``--name_with_underscores`` and its ``--name-with-dashes`` alias.

    A ``bool`` default becomes ``--name`` / ``--no-name`` (``argparse.BooleanOptionalAction``),
    which is the form DVC writes with ``parsing.bool: boolean_optional``.
    """
    flags = [f"--{name}"]
    dashed = f"--{name.replace('_', '-')}"
    if dashed not in flags:
        flags.append(dashed)
    if isinstance(kwargs.get("default"), bool) and "action" not in kwargs:
        kwargs["action"] = argparse.BooleanOptionalAction
    parser.add_argument(*flags, dest=name, **kwargs)
