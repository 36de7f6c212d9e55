"""ptxas ``-v`` and SASS parsing, occupancy, waves and the roofline-share estimate (pure functions, unit-tested)."""
from __future__ import annotations

import math
import re
import subprocess

from .arch import Arch

# SASS opcode prefixes counted per kernel: tensor cores (mma.sync = HMMA, wgmma = HGMMA), ldmatrix (LDSM),
# cp.async (LDGSTS), TMA (UTMALDG), local memory (LDL/STL: spills or stack), global/shared loads, barriers, exp2
COUNTED = {"HMMA": "hmma", "HGMMA": "wgmma", "LDSM": "ldsm", "LDGSTS": "ldgsts", "UTMALDG": "tma", "LDL": "ldl",
           "STL": "stl", "LDG": "ldg", "LDS": "lds", "STS": "sts", "BAR": "bar", "MUFU.EX2": "ex2"}
_ENTRY = re.compile(r"Compiling entry function '([^']+)'")
_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")
_SASS_FN = re.compile(r"^\s*Function : (\S+)")
_SASS_OP = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")


def parse_ptxas(log: str) -> dict[str, dict]:
    """Per entry function: registers, spill stores/loads and stack frame (bytes), static shared memory."""
    out: dict[str, dict] = {}
    name = None
    for line in log.splitlines():
        m = _ENTRY.search(line)
        if m:
            name = m.group(1)
            out[name] = {"regs": 0, "spill_stores": 0, "spill_loads": 0, "stack": 0, "static_smem": 0}
            continue
        if name is None:
            continue
        m = _PROPS.search(line)
        if m:
            out[name].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = _USED.search(line)
        if m:
            out[name]["regs"] = int(m.group(1))
            s = _SMEM.search(line)
            out[name]["static_smem"] = int(s.group(1)) if s else 0
    return out


def parse_sass(text: str) -> dict[str, dict[str, int]]:
    """Per function in ``cuobjdump -sass`` output: counts of the opcodes in :data:`COUNTED`."""
    out: dict[str, dict[str, int]] = {}
    counts = None
    for line in text.splitlines():
        m = _SASS_FN.match(line)
        if m:
            counts = out.setdefault(m.group(1), {v: 0 for v in COUNTED.values()})
            continue
        m = _SASS_OP.search(line) if counts is not None else None
        if m:
            op = m.group(1)
            for prefix, key in COUNTED.items():
                if op == prefix or op.startswith(prefix + "."):
                    counts[key] += 1
                    break
    return out


def sass_of(cubin_path: str, cuobjdump: str) -> dict[str, dict[str, int]]:
    text = subprocess.run([cuobjdump, "-sass", cubin_path], capture_output=True, text=True, check=True).stdout
    return parse_sass(text)


def occupancy(arch: Arch, regs: int, threads: int, smem: int) -> tuple[int, str]:
    """(resident CTAs per SM, the limiting resource); 0 means the block cannot launch at all."""
    warps = math.ceil(threads / 32)
    regs_per_warp = math.ceil(max(regs, 1) * 32 / 256) * 256  # allocated per warp in units of 256
    # registers are split over the SM's 4 sub-partitions: whole warps per partition
    warps_by_regs = (arch.regs_per_sm // 4 // regs_per_warp) * 4
    limits = {  # on a tie the first is named
        "threads": arch.max_threads_per_sm // threads if threads else 0,
        "registers": warps_by_regs // warps if warps else 0,
        "shared memory": arch.smem_per_sm // (smem + arch.smem_reserved_per_cta),
        "CTA slots": arch.max_ctas_per_sm,
    }
    if regs > arch.max_regs_per_thread or smem > arch.smem_per_block or threads > 1024:
        return 0, "launch limit"
    name = min(limits, key=limits.get)
    return limits[name], name


def waves(arch: Arch, ctas: int, per_sm: int) -> float:
    return ctas / (per_sm * arch.sms) if per_sm else math.inf


def wave_efficiency(arch: Arch, ctas: int, per_sm: int) -> float:
    """Share of the SM slots busy over the launch, equal CTA durations assumed (a 1.24-wave grid: 0.62)."""
    if not per_sm or not ctas:
        return 0.0
    slots = per_sm * arch.sms
    return ctas / (math.ceil(ctas / slots) * slots)


def roofline_estimate(arch: Arch, counts: dict[str, int], ctas: int, per_sm: int, spills: int,
                      head_dim: int | None = None) -> dict:
    """An *estimate*, not a measurement: an upper bound on the share of the bf16 tensor-core peak, the product of
    the grid's wave efficiency, the tensor-core path (wgmma 1.0; mma.sync 0.6 of sm_90's peak, 1.0 on sm_80),
    operand pipelining (cp.async/TMA 1.0, synchronous loads 0.7), spills (0.8) and, for attention (exp2 in
    the SASS, head dim d), exp throughput: MMA time over exp time per score, min(1, 64·d / MMA flops per clock
    per SM), perfect overlap assumed. Kernels without tensor cores are memory-bound: only the grid factor."""
    eff = wave_efficiency(arch, ctas, per_sm)
    factors = {"grid": round(eff, 3)}
    if counts.get("wgmma"):
        factors["tensor path"] = 1.0
    elif counts.get("hmma"):
        factors["tensor path"] = 0.6 if arch.cc >= 90 else 1.0
    else:
        return {"bound": "memory", "share_est": None, "factors": factors}
    factors["pipelining"] = 1.0 if (counts.get("ldgsts") or counts.get("tma")) else 0.7
    factors["spills"] = 0.8 if spills else 1.0
    if head_dim and counts.get("ex2"):
        factors["exp"] = round(min(1.0, 4 * head_dim * arch.ex2_per_clk / arch.mma_flops_per_clk), 3)
    return {"bound": "compute", "share_est": round(math.prod(factors.values()), 3), "factors": factors}
