"""Shared pytest fixtures; every test is seeded from tests/seeds.py and a failure prints its seed."""
import random

import pytest
import torch

import seeds


@pytest.fixture
def no_grad():
    """Run a test under torch.no_grad() without changing the process-wide grad mode for other test modules."""
    with torch.no_grad():
        yield


@pytest.fixture
def target(request, monkeypatch):
    """The backend a family test runs its case on (a param from ``_backends.targets``: triton, cuda or cuda-emu),
    made ready: the emulator built and standing in for sam3lt._C, its thread order seeded from the test id."""
    import _backends  # here, not at the top: the family test has imported _interp (how triton loads) by now

    return _backends.prepare(request.param, request, monkeypatch)


@pytest.fixture(autouse=True)
def _seeded(request):
    """torch's and Python's global generators seeded for this test (see tests/seeds.py)."""
    seed = seeds.for_test(request.node.nodeid)
    torch.manual_seed(seed)
    random.seed(seed)
    yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        report.sections.append(("seed", f"SAM3LT_TEST_SEED={seeds.BASE} (this test's seed "
                                        f"{seeds.for_test(item.nodeid)}); rerun: SAM3LT_TEST_SEED={seeds.BASE} "
                                        f"python -m pytest '{item.nodeid}'"))
    return report
