"""The CPU benchmarks' model pair: HF transformers' ``Sam3LiteTextModel`` (random init) and sam3lt converted from
it (same weights), at the issue-14 size: 8 ViT layers (2 global), 336², one 16-token prompt, fp32."""
from __future__ import annotations

import os
from pathlib import Path

import torch

import sam3lt


def build_pair(image_size: int = 336, vit_layers: int = 8, text: str = "s0", seed: int = 0):
    """(hf, sam3lt model, config): HF random weights, sam3lt converted from them. ``vit_layers`` ViT layers, the
    global ones at every ``vit_layers // 2``-th (2 of 8, as SAM3's 4 of 32)."""
    from transformers import Sam3LiteTextConfig as HFConfig, Sam3LiteTextModel as HFModel

    config = sam3lt.Sam3LiteTextConfig.from_preset(text)
    vit = config.vision_config.backbone_config
    vit.image_size, vit.num_hidden_layers = image_size, vit_layers
    vit.global_attn_indexes = [i for i in range(vit_layers) if (i + 1) % max(1, vit_layers // 2) == 0]
    config = sam3lt.Sam3LiteTextConfig.from_dict(config.to_dict())  # re-derive the feature sizes
    hf_config = HFConfig(**{k: v for k, v in config.to_dict().items() if k != "architectures"})
    hf_config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    hf = HFModel(hf_config).eval()
    return hf, sam3lt.from_transformers(hf), config


def inputs(config, prompt_tokens: int = 16, seq_len: int = 32, seed: int = 0) -> dict:
    """One image and one prompt of ``prompt_tokens`` real tokens (EOT last), padded to ``seq_len``."""
    gen = torch.Generator().manual_seed(seed)
    size = config.image_size
    ids = torch.randint(1, 49000, (1, seq_len), generator=gen)
    ids[0, prompt_tokens - 1] = 49407
    ids[0, prompt_tokens:] = 0
    mask = torch.zeros(1, seq_len, dtype=torch.long)
    mask[0, :prompt_tokens] = 1
    return dict(pixel_values=torch.randn(1, 3, size, size, generator=gen), input_ids=ids, attention_mask=mask)


def machine() -> str:
    """The CPU model, its vector/matrix flags that matter for GEMMs, torch's CPU capability and the commit."""
    import subprocess

    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    try:
        commit = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True, stderr=subprocess.DEVNULL,
                                         cwd=Path(__file__).parent).strip()
    except Exception:
        commit = "unknown"
    caps = "".join(f", {k}={os.environ[k]}" for k in ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
                                                     "ATEN_CPU_CAPABILITY") if os.environ.get(k))
    return (f"{model}, {os.cpu_count()} cores, flags {' '.join(shown) or 'none of avx2/avx512'}, torch "
            f"{torch.__version__} (capability {torch.backends.cpu.get_cpu_capability()}{caps}), commit {commit}")


def add_args(parser, name: str) -> None:
    """The arguments the CPU benchmarks share."""
    parser.add_argument("--image-size", type=int, default=336)
    parser.add_argument("--vit-layers", type=int, default=8)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--name", default=name, help="results file stem under --out")


def interleaved(runners: dict, reps: int) -> tuple[dict, dict]:
    """Time each runner ``reps`` times after one warm-up, interleaved (a, b, a, b, ...) so that machine noise hits
    all alike: ({name: [wall s]}, {name: [process CPU s, all threads]})."""
    import time

    wall = {name: [] for name in runners}
    cpu = {name: [] for name in runners}
    for fn in runners.values():
        fn()
    for _ in range(reps):
        for name, fn in runners.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    return wall, cpu


def write(args, result: dict, md: str) -> dict:
    """``<name>.json`` and ``<name>.md`` under ``--out``; prints the markdown."""
    import json

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    (out / f"{args.name}.md").write_text(md)
    print(md)
    return result


def setup(args):
    """Threads and grad mode from ``args``, then (hf, sam3lt model, config, forward kwargs) at its size."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    hf, ours, config = build_pair(args.image_size, args.vit_layers)
    return hf, ours, config, inputs(config)
