"""``python -m bench``: the benchmark suite (same arguments as ``sam3lt bench``)."""
import sys

from .suite import main

sys.exit(main())
