"""The GPU path without a GPU: every kernel compiles to an sm_90 cubin at the model's shapes (shared memory within
the H100/H200 limit) and the sam3lt:: triton_ops trace into kernel launches. See tests/_gpu_compile_check.py."""
import json
import os
import subprocess
import sys

import pytest

from _interp import MODE


def _nvidia_backend_reason():
    if MODE == "no-triton":
        return "triton is not installed"
    try:
        from triton.backends import backends
    except ImportError as exc:
        return f"triton backends unavailable ({exc})"
    if "nvidia" not in backends:
        return "this triton has no NVIDIA backend"
    return None


@pytest.mark.skipif(_nvidia_backend_reason() is not None, reason=str(_nvidia_backend_reason()))
def test_kernels_compile_for_sm90_and_ops_trace():
    script = os.path.join(os.path.dirname(__file__), "_gpu_compile_check.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, script, "90"], capture_output=True, text=True, env=env, timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no report (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report = json.loads(lines[-1])
    assert not report["failures"], "\n".join(report["failures"]) + "\n" + proc.stderr[-3000:]
    assert proc.returncode == 0
    kernels = {c["kernel"] for c in report["compiled"]}
    assert kernels == {"_dwconv_kernel", "_window_attn_kernel", "_attn_kernel", "_nearest_add_kernel",
                       "_mask_product_kernel", "_masks_to_binary_kernel", "_add_ln_kernel", "_linear_kernel",
                       "_box_bias_kernel", "_box_refine_kernel", "_rope_qkv_kernel"}, kernels
