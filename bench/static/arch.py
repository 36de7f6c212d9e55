"""Per-architecture launch limits and the card whose SM count gives the waves (occupancy calculator data)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Arch:
    cc: int
    card: str
    sms: int
    smem_per_sm: int      # bytes of shared memory per SM
    smem_per_block: int   # largest opt-in dynamic + static shared memory of one block
    regs_per_sm: int = 65536
    max_regs_per_thread: int = 255
    max_threads_per_sm: int = 2048
    max_ctas_per_sm: int = 32
    smem_reserved_per_cta: int = 1024  # the driver keeps 1 KiB per resident CTA (sm_80+)
    # dense bf16 tensor-core flops and MUFU exp2 per clock per SM (public peaks: 989 TFLOP/s on 132 SMs at
    # 1.83 GHz; 312 TFLOP/s on 108 SMs at 1.41 GHz): attention's exp work against its MMA work
    mma_flops_per_clk: int = 4096
    ex2_per_clk: int = 16


ARCHS = {
    90: Arch(90, "H200, 132 SMs", 132, 233472, 232448),
    80: Arch(80, "A100, 108 SMs", 108, 167936, 166912, mma_flops_per_clk=2048),
}


def get(cc: int) -> Arch:
    if cc not in ARCHS:
        raise ValueError(f"--arch: unsupported compute capability {cc}; expected one of {sorted(ARCHS)}")
    return ARCHS[cc]
