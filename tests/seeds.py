"""The one place the tests' randomness comes from.

``SAM3LT_TEST_SEED`` (default 0) shifts every seed of the suite: random inputs, model initialisations and the
emulator's thread orders. Each test gets its own seed, ``BASE`` plus a hash of its id, so tests don't share a
stream and a test's inputs don't depend on which others ran; tests/conftest.py seeds torch with it before each
test and prints it, with the command to rerun, when the test fails.
"""
import os
import zlib

import torch

BASE = int(os.environ.get("SAM3LT_TEST_SEED", "0"))


def for_test(nodeid: str) -> int:
    """The seed of one test (its pytest node id)."""
    return (BASE + zlib.crc32(nodeid.encode())) % 2**32


def gen(offset: int = 0) -> torch.Generator:
    """A CPU generator for a fixed stream of a test or module (``offset`` tells streams apart)."""
    return torch.Generator().manual_seed(BASE + offset)


def gen_for(request) -> torch.Generator:
    """A CPU generator seeded for the running test."""
    return torch.Generator().manual_seed(for_test(request.node.nodeid))
