"""How many kernels each fast-path stage launches: the torch ops (views excluded) one replay of each stage runs.

In a CUDA graph every kernel still costs a few microseconds of GPU time however small it is, so for the
launch-bound stages (text, heads) the count is the number to drive down. Counted on the CPU with a dispatch
mode (no GPU needed); the backend is whatever ``auto`` picks on the device counted on (eager on the CPU, where
e.g. the box-bias MLPs are ~30 ops per decoder layer instead of one Triton launch).

    python -m bench.launches [--layers N] [--image-size S] [--prompts N] [--triton]

The ViT is reduced to ``--layers`` layers (default 2) to keep the CPU run short; the heads and the text encoder
are the real S0 ones (their op count does not depend on the image size).
"""
from __future__ import annotations

import argparse
import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sam3lt.testing import fake_cuda

# aten ops that only make views or metadata (no kernel)
VIEW_OPS = ("view", "expand", "unsqueeze", "permute", "transpose", "slice", "select", "split", "unbind", "t.default",
            "alias", "squeeze", "_unsafe_view", "as_strided", "detach", "chunk", "unflatten", "reshape", "flatten",
            "prim.")  # prim.* ops are metadata queries (prim.device), not kernels


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))

    def kernels(self) -> int:
        return sum(n for op, n in self.counts.items() if not any(v in op for v in VIEW_OPS))


def count(layers: int = 2, image_size: int = 336, prompts: int = 1, triton: bool = False) -> dict[str, dict]:
    """Kernels per stage. ``triton``: on fake CUDA tensors with every op on the Triton backend (what a GPU runs
    when the tuner picks Triton everywhere: each sam3lt op is then one launch); else eager on the CPU."""
    import contextlib

    import sam3lt
    from sam3lt.model.common import clear_constant_caches

    config = sam3lt.Sam3LiteTextConfig()
    vit = config.vision_config.backbone_config
    vit.image_size, vit.num_hidden_layers, vit.global_attn_indexes = image_size, layers, [layers - 1]
    torch.manual_seed(0)
    model = sam3lt.Sam3LiteTextModel(config)
    device, mode, scope = "cpu", None, contextlib.nullcontext()
    if triton:
        from torch._subclasses.fake_tensor import FakeTensorMode

        clear_constant_caches()  # fake tensors must not stay in the process-wide caches
        mode = FakeTensorMode()
        model, device = fake_cuda(model.to(torch.bfloat16).fold_batchnorm(), mode), "cuda"
        scope = contextlib.ExitStack()
        scope.enter_context(mode)
        scope.enter_context(sam3lt.use_backend("triton"))
    out = {}
    with scope, torch.inference_mode():
        fast = sam3lt.optimize(model, dtype=torch.bfloat16 if triton else torch.float32, cuda_graphs=False,
                               prompt_buckets=(prompts,))
        fast(pixel_values=torch.randn(1, 3, image_size, image_size, device=device),
             input_ids=torch.randint(1, 1000, (prompts, 32), device=device))
        for name, stage in (("vision", fast._vision[1]), ("text", fast._text[prompts]),
                            ("heads", fast._heads[(1, prompts)])):
            with OpCounter() as counter:
                stage.run()
            out[name] = {"kernels": counter.kernels(), "all_ops": sum(counter.counts.values()),
                         "top": counter.counts.most_common(12)}
    if triton:
        clear_constant_caches()
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=2, help="ViT layers (the real model has 32)")
    p.add_argument("--image-size", type=int, default=336)
    p.add_argument("--prompts", type=int, default=1)
    p.add_argument("--triton", action="store_true",
                   help="count on fake CUDA tensors with every op on the Triton backend (one launch per sam3lt op)")
    args = p.parse_args(argv)
    result = count(args.layers, args.image_size, args.prompts, args.triton)
    where = "fake CUDA, triton backend" if args.triton else "CPU, eager backend"
    print(f"| stage | kernels (non-view ops) | all ops |  (S0 heads and text; ViT with {args.layers} layers; {where})")
    print("|---|---|---|")
    for name, r in result.items():
        print(f"| {name} | {r['kernels']} | {r['all_ops']} |")
    print("\nmost frequent ops in the heads:", ", ".join(f"{op} ×{n}" for op, n in result["heads"]["top"]))


if __name__ == "__main__":
    main()
