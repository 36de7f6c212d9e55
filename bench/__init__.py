"""sam3lt benchmark suite: per-op microbenchmarks, per-layer breakdown and end-to-end runs against HF transformers.

Run it from a source checkout (this folder is not installed with the package)::

    sam3lt bench [--quick] [--out DIR]          # the CLI subcommand (loads this folder)
    python -m bench [--quick] [--out DIR]       # the same, from the repository root

Modules: :mod:`.suite` (arguments, orchestration, progress bar), :mod:`.common` (device, timers, ceilings,
memory, environment), :mod:`.ops` (one module per op family), :mod:`.layers` (per-component breakdown),
:mod:`.e2e` (latency, throughput, prompts per image, peak memory), :mod:`.compiled` (HF ``torch.compile``),
:mod:`.report` (JSON, markdown, PNG), :mod:`.goals` (the fast path's goals, met or not, from a run's results). ``gpu_check.sh`` is the one device script; ``update_readme.py`` puts
the committed summaries into the README; ``cpu_vs_hf.py`` is the older single CPU comparison.
"""
