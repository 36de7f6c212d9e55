"""The cuda backend: ops of the compiled extension ``sam3lt._C`` (csrc/).

The extension is not built yet (CUDA-kernel issue), so nothing is registered and ``auto`` moves on to
Triton or eager; forcing ``cuda`` raises BackendUnavailable naming the missing implementation.
"""
