"""Files on disk, written once and whole: atomic saves, the feature cache folder, hub weights.

Every file ``dpnb`` writes (results CSVs, checkpoints, cached tensors) goes through
:func:`atomic_save`: the content is written to a temporary file beside the target and renamed
over it, so a run that stops half-way never leaves a truncated file that a later run would
trust. Loading uses ``torch.load(..., weights_only=True)``: no code in a file runs.

Example::

    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = save_tensors({"x": torch.arange(3)}, Path(d) / "t.pt")
    ...     load_tensors(p)["x"].tolist(), sorted(f.name for f in Path(d).iterdir())
    ([0, 1, 2], ['t.pt'])
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dpnb.params import Unavailable

__all__ = ["atomic_save", "save_tensors", "load_tensors", "save_csv", "cache_dir", "hub_state_dict",
           "WeightsUnavailable"]


class WeightsUnavailable(Unavailable):
    """Pretrained weights are neither in ``$TORCH_HOME`` nor downloadable; the message says what to do."""


def atomic_save(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_tensors(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj)`` to ``path``, atomically."""
    import torch

    return atomic_save(path, lambda tmp: torch.save(obj, tmp))


def load_tensors(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def save_csv(frame: Any, path: str | os.PathLike[str]) -> Path:
    """A pandas frame to ``path`` as CSV without the index, atomically."""
    return atomic_save(path, lambda tmp: frame.to_csv(tmp, index=False))


def cache_dir() -> Path:
    """``$DPNB_CACHE``, else ``$XDG_CACHE_HOME/dpnb``, else ``~/.cache/dpnb``."""
    if os.environ.get("DPNB_CACHE"):
        return Path(os.environ["DPNB_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dpnb"


def hub_state_dict(url: str, *, what: str, fallback: str) -> dict[str, Any]:
    """The state dict at ``url`` from ``$TORCH_HOME/hub/checkpoints`` or a download, else one-line error.

    ``what`` names the weights and ``fallback`` says what the reader can do instead, both for
    the message of :class:`dpnb.params.Unavailable` (``dpnb.features.WeightsUnavailable``).
    """
    import torch

    file = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if file.is_file():
        return load_tensors(file)
    try:
        # torch.hub announces "Downloading: ..." (on stdout) before trying; keep that for real downloads only
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, check_hash=True,
                                                      weights_only=True)
    except Exception as e:  # URLError, HTTPError, ssl errors, hash mismatch ...
        raise WeightsUnavailable(
            f"{what} are not in {file.parent} and could not be downloaded ({type(e).__name__}); "
            f"put {file.name} there (or set TORCH_HOME), {fallback}") from None
