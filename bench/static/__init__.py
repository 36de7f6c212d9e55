"""Static audit of every kernel for a GPU target, without a GPU (``python -m bench.static --arch 90``).

Triton kernels are compiled ahead of time through a stand-in driver at the launches the S0 model really makes
(recorded from fake-CUDA forwards, :mod:`.shapes`); CUDA kernels (``csrc/*.cu``) with ``nvcc -Xptxas -v``. Each
binary's ptxas report (registers, spills) and SASS (tensor-core, ``ldmatrix``, ``cp.async`` counts) becomes one
row per launch with its occupancy and waves at the real grid (:mod:`.metrics`). Exit status 1 on a launch-limit
violation or a spill in a kernel the model runs that the allowlist (``allowlist.json``, with reasons) does not
cover, so CI stays green on known problems and fails on new ones. An entry, for a spill someone has to fix:

    {"arch": 90, "backend": "triton", "kernel": "_attn_kernel", "kind": "spill",
     "match": {"HAS_BIAS": true, "BLOCK_M": 64}, "max_spill_bytes": 328, "reason": "why, and who fixes it"}

``match`` picks configs (Triton constexprs, or ``{"instantiation": ...}`` for CUDA); spilling more than
``max_spill_bytes`` is new again. Entries that no longer match anything are reported as stale (remove them).
The list is empty at present: the box-bias spill it held (328 B on sm_90, 540 B on sm_80) was fixed in 975f456.
"""
