"""What this machine can run: versions, the device, the CUDA extension's status, and for every op case of the
suite which backends the dispatch accepts (or why not). Prints JSON; writes it to ``--out`` if given.

    python -m bench.probe [--out FILE] [--size full|cpu|tiny]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def probe(size: str | None = None) -> dict:
    import torch

    from .common import DTYPES, environment
    from .ops import _unavailable_reason, select_cases

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = size or ("full" if device.type == "cuda" else "tiny")
    out = {"env": environment(device), "size": size}
    try:
        from sam3lt import _ext

        ok, reason = _ext.status() if hasattr(_ext, "status") else (_ext.EXT is not None, _ext.IMPORT_ERROR)
        out["cuda_extension"] = {"usable": bool(ok), "reason": reason,
                                 "built_for_torch": getattr(_ext, "TORCH_VERSION", None),
                                 "archs": list(getattr(_ext, "ARCHS", ()) or ())}
    except Exception as err:  # an older tree without sam3lt._ext
        out["cuda_extension"] = {"usable": False, "reason": f"{type(err).__name__}: {err}"}
    try:
        from sam3lt.ops import _backend

        out["registered"] = {op: sorted(impls) for op, impls in _backend._REGISTRY.items()}
    except Exception as err:
        out["registered"] = f"{type(err).__name__}: {err}"
    cases = []
    for case in select_cases(size, quick=False):
        for dtype_name in ("float32", "bfloat16"):
            gen = torch.Generator(device=device).manual_seed(0)
            try:
                args = case.make(device, DTYPES[dtype_name], gen)
            except Exception as err:
                cases.append({"op": case.op, "case": case.name, "dtype": dtype_name, "error": str(err)[:200]})
                continue
            cases.append({"op": case.op, "case": case.name, "dtype": dtype_name,
                          "backends": {b: _unavailable_reason(case.op, b, args) or "ok"
                                       for b in ("eager", "triton", "cuda")}})
            del args
    out["cases"] = cases
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--size", default=None, choices=["full", "cpu", "tiny"])
    args = parser.parse_args(argv)
    result = probe(args.size)
    text = json.dumps(result, indent=1, default=str)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
