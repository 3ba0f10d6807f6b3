"""Training curves where users look: an optional TensorBoard logger per training job (``dssbt train --tensorboard``).

Off by default and an extra (``pip install -e '.[log]'``, the tensorboard package): this module imports nothing
heavy; ``TensorBoardLogger`` imports torch's tensorboard writer when it is built, and fails there, before training
starts, naming the extra when it is missing. No tracking server is needed: the event files land under the job's
folder, and ``tensorboard --logdir <a parent>`` shows every job below it (the workflow gives each job
``tensorboard/<task>/seed<s>/<run>/``, so one ``tensorboard --logdir tensorboard`` shows a whole grid, also while
it runs: each epoch's points are flushed to disk when the epoch ends).

Scalars, step = epoch (0 = before any update), the values of ``history.csv`` (stored as float32 by TensorBoard):

    train/loss, train/accuracy, val/loss, val/accuracy   per epoch (no train values at epoch 0)
    lr/lr, lr/ssm_lr                                     learning rates at the end of the epoch
    time/epoch_s, time/elapsed_s                         the epoch's seconds, seconds since the job started
    model/states                                         the model's states, where in-training reduction is on
    test/accuracy, test/loss                             epoch 0: test accuracy before training; at the end, at
                                                         the best epoch: the metrics of the chosen checkpoint

A killed job resumed (``train_state.pt``) writes a new event file in the same folder from the next epoch on; if it
was killed after an epoch's points were written and before its state was saved, that epoch is trained again and
its points written again with the same values (resume is exact), except its times.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Protocol

EXTRA = "pip install -e '.[log]'"


class MissingExtra(ValueError):
    """An optional feature asked for without its extra installed (a ValueError: the CLI reports it and exits 2)."""


class EpochLogger(Protocol):
    """What ``train.train`` calls: ``epoch`` after every history row (the list so far, the last row new; row 0 =
    before training), ``end`` with the metrics once they are written."""

    def epoch(self, history: list[dict[str, float]]) -> None: ...

    def end(self, metrics: dict[str, Any]) -> None: ...


class TensorBoardLogger:
    """TensorBoard event files of one training job under ``log_dir`` (see the module docstring for the tags).

    Raises ``MissingExtra`` naming ``pip install -e '.[log]'`` when the tensorboard package is not installed. The
    folder and its event file are created at the first write. Use as a context manager, or call ``close``."""

    def __init__(self, log_dir: str | os.PathLike) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise MissingExtra(
                f"--tensorboard needs the tensorboard package (the 'log' extra): {EXTRA} ({e})"
            ) from None
        self.log_dir = Path(log_dir)
        self._writer_class = SummaryWriter
        self._writer = None

    def _scalars(self, step: int, values: dict[str, float]) -> None:
        if self._writer is None:
            self._writer = self._writer_class(log_dir=str(self.log_dir))
        for tag, value in values.items():
            if value is not None and not math.isnan(value):
                self._writer.add_scalar(tag, value, step)
        self._writer.flush()  # watched while the job runs: every epoch on disk when it ends

    def epoch(self, history: list[dict[str, float]]) -> None:
        row = history[-1]
        values = {
            "train/loss": row["train_loss"],
            "train/accuracy": row["train_accuracy"],
            "val/loss": row["val_loss"],
            "val/accuracy": row["val_accuracy"],
            "test/accuracy": row["test_accuracy"],
            "lr/lr": row["lr"],
            "lr/ssm_lr": row["ssm_lr"],
            "time/elapsed_s": row["seconds"],
            "time/epoch_s": row["seconds"] - history[-2]["seconds"] if len(history) > 1 else None,
            "model/states": row.get("states"),
        }
        self._scalars(int(row["epoch"]), values)

    def end(self, metrics: dict[str, Any]) -> None:
        test = {"test/accuracy": metrics["accuracy"]["test"], "test/loss": metrics["loss"]["test"]}
        self._scalars(int(metrics["best_epoch"]), test)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
