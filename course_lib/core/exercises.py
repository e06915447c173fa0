"""Checking exercise answers in a notebook cell. Defined in notebook 00_welcome.

    answer = None            # the learner replaces None with their answer
    check(answer, lambda a: a == 42, hint="six times seven")

prints whether the answer is right, or how to get there, and never raises: a notebook with
unanswered exercises still runs top to bottom.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def check(answer: Any, is_right: Callable[[Any], bool], hint: str = "") -> bool | None:
    """Print and return whether ``answer`` passes ``is_right``; ``None`` means not attempted yet.

    Defined in notebook 00_welcome.
    """
    if answer is None or answer is Ellipsis:
        print("Not attempted yet: replace the None above with your answer and run the cell again.")
        return None
    try:
        ok = bool(is_right(answer))
    except Exception as e:  # a wrong type of answer is feedback, not a crash
        print(f"Not yet: checking your answer raised {type(e).__name__}: {e}. {hint}".strip())
        return False
    print("Correct!" if ok else f"Not yet. {hint}".strip())
    return ok
