"""What "equal" means between two computations of one float result, for tests that compare them.

Float results are deterministic on one machine with the same thread count and kernels: a test that claims exact
equality runs both sides with the same torch threads (``same_threads`` in-process, ``--threads`` in a subprocess).
Across thread counts, processes with other settings, kernel choices or CPUs, a float32 sum is split another way and
its last bits differ (measured: 1 float32 ulp of a validation loss between 1 and 2 threads on an AVX-512 CPU). Such
a comparison is "equal up to rounding" and uses the tolerances below, never ``==``.
"""

from contextlib import contextmanager

import numpy as np
import torch

# float32's machine epsilon (2**-23): one ulp of a value in [1, 2)
F32_EPS = float(np.finfo(np.float32).eps)
# A mean cross-entropy over a split: each example's loss comes from float32 sums over at most a few hundred terms
# (channels, states, classes), and a batch's losses are summed in float32 before the float64 total; reassociating
# those sums moves the result by a few ulps per level. 64 ulps (7.6e-6 relative) is that bound with room, and still
# 1,000x below any change a training step makes to a validation loss.
LOSS_RTOL = 64 * F32_EPS


@contextmanager
def same_threads(n: int = 1):
    """Run the block with ``n`` torch threads (then restore): pass ``--threads n`` to the subprocess it is compared
    with, and the two sides compute with the same thread split."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


def assert_metrics_equal_up_to_rounding(got: dict, ref: dict, n_items: dict, splits=("val", "test")) -> None:
    """Two evaluations of one model computed with different thread counts (or kernels): losses within LOSS_RTOL;
    accuracies equal except where an item's two largest logits tie within rounding, which can flip at most a
    handful of the ``n_items[split]`` items (here: 1)."""
    for s in splits:
        assert abs(got["loss"][s] - ref["loss"][s]) <= LOSS_RTOL * abs(ref["loss"][s]), (s, got["loss"], ref["loss"])
        assert abs(got["accuracy"][s] - ref["accuracy"][s]) <= 1 / n_items[s] + 1e-12, (s, got, ref)


# Logits of one model from two implementations (onnxruntime against torch, the recurrent step against the FFT
# convolution) differ by about 1e-6 relative (test_deploy bounds it at 1e-5); a class "decided" by less than this
# may legitimately come out either way.
LOGIT_TIE_RTOL = 1e-4


def assert_same_class(predicted, logits_ref) -> None:
    """Classes predicted by another implementation (int or array (B,)) equal the argmax of the reference logits
    (..., classes), except where the reference's own top two tie within LOGIT_TIE_RTOL of its largest logit."""
    ref = np.asarray(logits_ref, dtype=np.float64).reshape(-1, np.shape(logits_ref)[-1])  # (B, classes)
    predicted = np.asarray(predicted, dtype=np.int64).reshape(-1)  # (B,)
    top = ref.max(-1)
    gap = top - ref[np.arange(len(ref)), predicted]  # 0 where the prediction is the reference's argmax
    tol = LOGIT_TIE_RTOL * np.maximum(1.0, np.abs(ref).max(-1))
    assert np.all(gap <= tol), (predicted, ref.argmax(-1), gap)
