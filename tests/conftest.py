import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """The SLURM tests first: under pytest-xdist (.ci/run) their group is then the first one handed out, so its
    minutes of waiting on the cluster overlap the rest of the suite instead of ending it."""
    items.sort(key=lambda item: item.get_closest_marker("slurm") is None)  # stable: otherwise collection order


def pytest_configure(config):
    """xdist's --dist loadgroup (.ci/run) hands each xdist_group to one worker by a suffix on the node IDs, which
    pytest 9.2 no longer lets it write (pytest-dev/pytest-xdist#1386): the groups then silently split, and the
    SLURM tests start two clusters at once. Stop with the fix instead."""
    if getattr(config.option, "dist", "no") == "loadgroup" and not hasattr(config, "workerinput"):
        from packaging.version import Version  # a dependency of pytest

        if Version(pytest.__version__) >= Version("9.2"):
            raise pytest.UsageError(
                f"--dist loadgroup does not group tests under pytest {pytest.__version__}: "
                "pip install -e '.[test]' (pytest<9.2), or run without -n"
            )


def _need_c_kernels():
    """Without a C compiler a test of the fused C kernels is skipped with the reason, except under CI (CI set),
    where it fails (tests/needs.py)."""
    from needs import missing

    from dssbt import fused

    if fused.load() is None:
        missing(f"no fused C kernels on this machine: {fused.error()}")


@pytest.fixture(params=["c", "torch"])
def kernels(request):
    """Each test using it runs twice: under the fused C kernels (dssbt.fused) and under torch ops."""
    from dssbt import fused

    if request.param == "c":
        _need_c_kernels()
    with fused.kernels(request.param):
        yield request.param


@pytest.fixture
def c_kernels():
    """A test of the fused C kernels themselves, run under them."""
    from dssbt import fused

    _need_c_kernels()
    with fused.kernels("c"):
        yield "c"
