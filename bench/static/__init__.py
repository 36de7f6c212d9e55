"""Static audit of every kernel for a GPU target, without a GPU (``python -m bench.static --arch 90``).

Triton kernels are compiled ahead of time through a stand-in driver at the launches the S0 model really makes
(recorded from fake-CUDA forwards, :mod:`.shapes`); CUDA kernels (``csrc/*.cu``) with ``nvcc -Xptxas -v``. Each
binary's ptxas report (registers, spills) and SASS (tensor-core, ``ldmatrix``, ``cp.async`` counts) becomes one
row per launch with its occupancy and waves at the real grid (:mod:`.metrics`). Exit status 1 on a launch-limit
violation or a spill in a kernel the model runs that the allowlist (``allowlist.json``, with reasons) does not
cover, so CI stays green on known problems and fails on new ones.
"""
