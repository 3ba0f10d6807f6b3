"""Resume state of a training job: everything needed to continue after the last completed epoch.

Stored as plain tensors, numbers, strings, lists and dicts and read with ``torch.load(weights_only=True)``, so a
file planted in a results folder cannot run code. A state file belongs to exactly one job (its arguments, as a
canonical JSON string): a file of another job, a truncated file or a foreign one is reported and ignored, and
training starts over.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .io import atomic_path

FORMAT = "dssbt-train-state"


@dataclass
class ResumeState:
    """Progress of one job after ``epoch`` completed epochs."""

    job: str  # canonical JSON of the job's arguments
    epoch: int = 0
    bad_epochs: int = 0  # epochs since the best validation accuracy (early stopping)
    elapsed: float = 0.0  # seconds of training so far
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"val_accuracy": -1.0, "epoch": 0, "state": None})
    model: dict[str, torch.Tensor] | None = None
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    shuffle_rng: torch.Tensor | None = None
    torch_rng: torch.Tensor | None = None
    cuda_rng: list[torch.Tensor] | None = None
    scaler: dict[str, Any] | None = None  # the gradient scaler of optim.amp = fp16 (its scale and growth tracker)
    # in-training reduction (optim.reduce_during): the model's per-layer orders after the last reduction (None: as
    # built), so a resumed job rebuilds the model at that size before loading it; and one record per reduction
    layer_orders: list[int] | None = None
    reductions: list[dict[str, Any]] = field(default_factory=list)

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically and durably: a kill or a failed write (a full disk) leaves the previous state file as
        it was. A failed write raises OSError naming ``path`` (with the errno of the cause, e.g. ENOSPC)."""
        # Serialised in memory first: the file write is then one plain write whose OSError keeps its errno (torch's
        # file writer turns a full disk into a RuntimeError without it); the state is small next to the data.
        buf = io.BytesIO()
        torch.save({"format": FORMAT, **asdict(self)}, buf)
        try:
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as fh:
                    fh.write(buf.getbuffer())
                    fh.flush()
                    os.fsync(fh.fileno())  # on disk before the rename: a crash never leaves a renamed empty file
        except OSError as e:
            kept = "the previous state file is unchanged" if Path(path).exists() else "no state file was kept"
            raise OSError(
                e.errno,
                f"could not write the resume state {path} after epoch {self.epoch} "
                f"({e.strerror or e}); {kept}: free space and rerun to continue from it",
            ) from e

    @classmethod
    def load(cls, path: str | os.PathLike, job: str, log: Callable[[str], None] = print) -> ResumeState | None:
        """The state saved at ``path`` if it exists, is readable and belongs to ``job``; else None (and why, logged)."""
        path = Path(path)
        if not path.exists():
            return None
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, foreign, or holding objects that are not plain data
            log(
                f"warning: ignoring {path}: not a readable resume state ({type(e).__name__}: {str(e)[:200]}); "
                "training starts over"
            )
            return None
        if not isinstance(d, dict) or d.pop("format", None) != FORMAT:
            log(f"warning: ignoring {path}: not a dssbt resume state; training starts over")
            return None
        if d.get("job") != job:
            log(f"ignoring {path}: it belongs to a job with other arguments")
            return None
        try:
            return cls(**d)
        except TypeError as e:
            log(f"warning: ignoring {path}: {e}; training starts over")
            return None
