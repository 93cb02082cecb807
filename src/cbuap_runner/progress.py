"""Progress bars that stay quiet when output is not a terminal."""

from __future__ import annotations

import sys
from typing import Iterable, Optional, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
_MODE = {"value": "auto"}


def set_progress_mode(mode: str) -> None:
    """`auto` shows bars on a terminal only; `on` and `off` force them."""
    _MODE["value"] = mode


def progress_enabled() -> bool:
    mode = _MODE["value"]
    return mode == "on" or (mode == "auto" and sys.stderr.isatty())


def progress_bar(items: Iterable[T], desc: str = "", total: Optional[int] = None, enabled: Optional[bool] = None):
    """Wrap `items` in a tqdm bar when progress is enabled."""
    show = progress_enabled() if enabled is None else enabled
    return tqdm(items, desc=desc, total=total, disable=not show, leave=False, dynamic_ncols=True)
