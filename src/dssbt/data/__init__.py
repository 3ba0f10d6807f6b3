"""The data stage: readers of the six Long Range Arena tasks, offline generators, and ``prepare``.

Real LRA data (``source = "lra"``) and the embedded offline tasks (``source = "embedded"``) go through the SAME
readers: the generators write the official file formats (ListOps TSV, Pathfinder PNG + metadata, CIFAR-10 python
pickles). Every task ends in the prepared form of :mod:`dssbt.data.prepared`.

Each reader has options that read the real data exactly as the S4 reference (state-spaces/s4) does -- ``eos``
(ListOps, Text, Retrieval), ``normalise`` (Image), ``split`` (Image, Pathfinder, Path-X), ``pixels`` (Pathfinder,
Path-X) -- set by ``workflow/presets/lra.yaml``; their defaults keep dssbt's own choices (the embedded tasks).

Modules: ``tasks`` (the task registry: every task declared once; ``docs/adding-a-task.md``), ``download`` (resumable, verified downloads; selective archive extraction, all tasks of an archive in one
pass), ``listops``, ``text``, ``retrieval``, ``image``, ``pathfinder`` (one reader per task), ``generate`` (the
embedded generators), ``prepare`` (dispatch by task, through the registry), ``cli`` (the ``download``, ``extract``, ``generate`` and
``prepare`` subcommands).
"""

from . import tasks
from .common import DataError
from .prepare import prepare_task


def __getattr__(name: str):
    """``LRA_TASKS``, ``EMBEDDED_TASKS``: read from the task registry when asked for (see :mod:`.prepare`)."""
    if name in ("LRA_TASKS", "EMBEDDED_TASKS"):
        from . import prepare

        return getattr(prepare, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DataError", "EMBEDDED_TASKS", "LRA_TASKS", "prepare_task", "tasks"]
