"""Progress bars where a person watches, and none in the built book.

Every long loop in ``dpnb`` and in the chapters iterates through :func:`progress`. Where the
bar appears depends on where the code runs:

* in ``jupyter lab`` (a kernel with ``ipywidgets``): one widget bar per loop, updated in place;
* in a terminal: tqdm's text bar on stderr;
* when ``dpnb book`` executes a chapter it sets ``DPNB_PROGRESS=0`` for the kernel: no bar at
  all, because papermill would store every redraw of a text bar as an output block of the
  page. ``dpnb book`` prints its own line per chapter instead.

``DPNB_PROGRESS=0`` (or ``false``/``off``) turns bars off anywhere, ``1`` forces them on.

Example::

    >>> sum(progress(range(4), desc="demo", enable=False))  # a caller's progress=False
    6
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["ENV", "enabled", "progress"]

#: The environment variable that switches bars on (``1``) or off (``0``).
ENV = "DPNB_PROGRESS"


def enabled() -> bool:
    """Whether progress bars are shown: off when ``DPNB_PROGRESS`` is 0/false/off/no."""
    return os.environ.get(ENV, "1").strip().lower() not in {"0", "false", "off", "no"}


def _in_kernel() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ip = shell.get_ipython()  # type: ignore[attr-defined]
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def _bar_class() -> Any:
    if _in_kernel():
        try:
            import ipywidgets  # noqa: F401  (the widget bar needs it)
            from tqdm.notebook import tqdm as bar

            return bar
        except ImportError:
            pass
    from tqdm import tqdm as bar

    return bar


def progress(iterable: Iterable[T], *, desc: str = "", total: int | None = None, leave: bool = True,
             mininterval: float = 0.5, enable: bool = True, **kwargs: Any) -> Iterator[T] | Any:
    """``iterable`` wrapped in a progress bar where one should show (see the module text).

    ``enable=False`` (e.g. a caller's ``progress=False``) or ``DPNB_PROGRESS=0`` returns the
    iterable itself. Otherwise the result is a tqdm object: iterate it, and call its
    ``set_postfix`` to show running numbers.
    """
    if not (enable and enabled()):
        return _Silent(iterable)
    return _bar_class()(iterable, desc=desc, total=total, leave=leave, mininterval=mininterval,
                        file=sys.stderr, **kwargs)


class _Silent:
    """The iterable, with the few tqdm methods callers use turned into no-ops."""

    def __init__(self, iterable: Iterable[Any]) -> None:
        self._iterable = iterable

    def __iter__(self) -> Iterator[Any]:
        return iter(self._iterable)

    def __len__(self) -> int:
        return len(self._iterable)  # type: ignore[arg-type]

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        pass

    def update(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass
