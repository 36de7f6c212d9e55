"""CPU end-to-end speed: sam3lt (eager backend) vs HF transformers' Sam3LiteTextModel, same weights, fp32,
side by side in one run, at a reduced image size (CPU-sized: the ViT dominates either way).

    python bench/cpu_vs_hf.py [--image-size 504] [--reps 5] [--threads N] [--out bench/results] [--name cpu_vs_hf]

Writes ``<name>.json`` and ``<name>.md`` under ``--out``. At 504² the 36×36 ViT grid is not a multiple of the
24-token window (windows are padded, HF also projects the padded tokens); at 672² (48×48) nothing is padded. Timings are medians of ``--reps`` calls after
one warm-up, interleaved (HF, sam3lt, HF, ...) so that machine noise hits both alike. Both wall time and
process CPU time (all threads) are recorded: on a shared machine CPU time is the steadier measure of work done.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from cpu_models import interleaved  # noqa: E402


def _commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       cwd=Path(__file__).parent, stderr=subprocess.DEVNULL).strip()
    except Exception:
        return "unknown"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=504, help="multiple of 14 (504 -> 36x36 ViT grid)")
    parser.add_argument("--text", default="s0", help="text encoder preset: s0, s1 or l")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--name", default="cpu_vs_hf", help="results file stem under --out")
    args = parser.parse_args(argv)

    import transformers
    from transformers import Sam3LiteTextConfig as HFConfig, Sam3LiteTextModel as HFModel

    import sam3lt

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    config = sam3lt.Sam3LiteTextConfig.from_preset(args.text)
    config.vision_config.backbone_config.image_size = args.image_size
    config = sam3lt.Sam3LiteTextConfig.from_dict(config.to_dict())  # re-derive feature sizes
    hf_config = HFConfig(**{k: v for k, v in config.to_dict().items() if k != "architectures"})
    hf_config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    hf = HFModel(hf_config).eval()
    ours = sam3lt.from_transformers(hf)

    pixels = torch.randn(1, 3, args.image_size, args.image_size)
    ids = torch.randint(1, 49000, (1, 32))
    ids[0, 7] = 49407
    mask = torch.zeros(1, 32, dtype=torch.long)
    mask[0, :8] = 1
    kwargs = dict(pixel_values=pixels, input_ids=ids, attention_mask=mask)

    runners = {"hf_eager": lambda: hf(**kwargs), "sam3lt_eager": lambda: ours(**kwargs)}
    with sam3lt.use_backend("eager"):
        times, cpu_times = interleaved(runners, args.reps)
    med = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
    cpu_med = {name: statistics.median(ts) * 1e3 for name, ts in cpu_times.items()}
    result = {
        "benchmark": "cpu_vs_hf", "device": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(), "python": sys.version.split()[0], "torch": torch.__version__,
        "transformers": transformers.__version__, "sam3lt": sam3lt.__version__, "commit": _commit(),
        "settings": {"dtype": "float32", "image_size": args.image_size, "text": args.text, "prompts": 1,
                     "seq_len": 32, "reps": args.reps, "backend": "eager"},
        "median_ms": med, "all_ms": {k: [t * 1e3 for t in v] for k, v in times.items()},
        "median_cpu_ms": cpu_med, "all_cpu_ms": {k: [t * 1e3 for t in v] for k, v in cpu_times.items()},
        "speedup_sam3lt_vs_hf": med["hf_eager"] / med["sam3lt_eager"],
        "cpu_time_ratio_hf_over_sam3lt": cpu_med["hf_eager"] / cpu_med["sam3lt_eager"],
        # each rep times both models back to back: the median of the per-rep ratios is the least noisy figure
        "median_paired_ratio": statistics.median(h / o for h, o in zip(times["hf_eager"], times["sam3lt_eager"])),
        "load_average_1min": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d"),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    (out / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(r: dict) -> str:
    s = r["settings"]
    return (f"CPU, fp32, {s['image_size']}² image, {s['text'].upper()} text encoder, one {s['seq_len']}-token prompt, "
            f"{r['cpu_threads']} threads; torch {r['torch']}, transformers {r['transformers']}, commit {r['commit']}, "
            f"median of {s['reps']}.\n\n"
            "| model | wall time (ms) | CPU time, all threads (ms) |\n|---|---|---|\n"
            f"| HF transformers eager | {r['median_ms']['hf_eager']:.0f} | {r['median_cpu_ms']['hf_eager']:.0f} |\n"
            f"| sam3lt eager | {r['median_ms']['sam3lt_eager']:.0f} | {r['median_cpu_ms']['sam3lt_eager']:.0f} |\n"
            f"| **HF / sam3lt** | **{r['speedup_sam3lt_vs_hf']:.2f}×** | **{r['cpu_time_ratio_hf_over_sam3lt']:.2f}×** |\n"
            f"\nMedian of the per-rep wall-time ratios (both models timed back to back in each rep): "
            f"**{r['median_paired_ratio']:.2f}×**.\n"
            f"\n1-minute load average at the end of the run: {r['load_average_1min']:.1f} (machine has "
            f"{os.cpu_count()} cores; a load above that means other work shared the CPU).\n")


if __name__ == "__main__":
    main()
