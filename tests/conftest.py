"""Shared pytest fixtures."""
import pytest
import torch


@pytest.fixture
def no_grad():
    """Run a test under torch.no_grad() without changing the process-wide grad mode for other test modules."""
    with torch.no_grad():
        yield
