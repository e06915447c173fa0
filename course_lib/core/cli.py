"""The course's command lines share one ``--help`` layout: the description as written, every option's default.

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
from pathlib import Path


def shown_default(value: object) -> str:
    """A default as one would type it on the command line: lists and tuples space-separated, the empty
    string as ``""``, an absolute path inside the current folder relative to it."""
    if isinstance(value, list | tuple):
        return " ".join(shown_default(v) for v in value)
    if value == "":
        return '""'
    if isinstance(value, str) and os.path.isabs(value):
        with contextlib.suppress(ValueError):  # not below the current folder (or another drive)
            return str(Path(value).relative_to(Path.cwd()))
    return str(value)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks (a module docstring) and ends each option's help with
    ``(default: ...)``, options without help included. Left out: on/off flags, options whose default
    is ``None`` (not set), required positionals, and help that already says its default."""

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and _has_default_to_show(action):  # argparse prints nothing for an empty help
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if _has_default_to_show(action) and "default" not in text:
            text += " (default: %(default)s)"
        return text.replace("%(default)s", shown_default(action.default).replace("%", "%%"))


def _has_default_to_show(action: argparse.Action) -> bool:
    """Whether ``--help`` should name this action's default."""
    if action.default is None or action.default is argparse.SUPPRESS or action.help is argparse.SUPPRESS:
        return False
    if action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction):
        return False  # store_true / store_false switches: the default is "off"
    return bool(action.option_strings) or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)
