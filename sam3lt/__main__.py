"""``python -m sam3lt``: the ``sam3lt`` command line (see :mod:`sam3lt.cli`)."""
import sys

from .cli import main

sys.exit(main())
