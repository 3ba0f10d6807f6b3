"""Mini-batches of a prepared split, decoded one batch at a time from the compact stored form."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .data.prepared import Split


def batches(split: Split, index: torch.Tensor, batch_size: int, device: torch.device) -> Iterator[tuple]:
    """Yield (x, lengths, y) for consecutive chunks of ``index``, each trimmed to its longest sequence.

    x: (b, L') int64 tokens | (b, L') float32 pixels | (b, 2, L') for two-document tasks; lengths (b,) | (b, 2).
    The split stays in its compact stored form; only the batch is decoded (``Split.batch_inputs``). On a CUDA
    device the decoded batch is put in pinned host memory and copied ``non_blocking``, so the copy overlaps the
    previous step's kernels (the host decodes batch i+1 while the GPU runs step i); on CPU the tensors are used as
    they are.
    """
    cuda = torch.device(device).type == "cuda"
    for i in range(0, len(index), batch_size):
        idx = index[i : i + batch_size].numpy()
        ln = torch.from_numpy(split.lengths[idx])
        L = int(ln.max())
        x = torch.from_numpy(np.ascontiguousarray(split.batch_inputs(idx, L)))
        y = torch.from_numpy(split.labels[idx])
        if cuda:
            yield tuple(t.pin_memory().to(device, non_blocking=True) for t in (x, ln, y))
        else:
            yield x.to(device), ln.to(device), y.to(device)
