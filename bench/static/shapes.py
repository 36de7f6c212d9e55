"""The launches the S0 model really makes, recorded from fake-CUDA bf16 forwards (no GPU, no kernel runs).

Every Triton launcher's ``launch`` is replaced by a recorder while the model runs on fake CUDA tensors with the
triton backend forced, so each record holds the kernel, its grid and the exact arguments and config the launcher
picked at that shape. The op calls (name and argument metadata) are recorded too: the CUDA kernels' grids are
derived from them (:mod:`.cuda_audit`). The ViT keeps two layers, one windowed and one global: every layer of a
kind launches the same shapes.
"""
from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass, field

import torch

IMAGE_SIZE = 1008
SEQ_LEN = 32
# (images, prompts): the model takes one image with any number of prompts, or equal batch sizes
SCENARIOS = ((1, 1), (1, 4), (1, 16), (1, 64), (8, 8))
PADDED = "980² (padded windows)"  # the model at another image size: the ViT's 24×24 windows over a 70×70 grid


def meta(a):
    if isinstance(a, torch.Tensor):
        return ("tensor", tuple(a.shape), tuple(a.stride()), str(a.dtype).removeprefix("torch."))
    if isinstance(a, (list, tuple)):
        return tuple(meta(x) for x in a)
    return a


@dataclass
class Launch:
    kernel: str
    family: str
    grid: tuple
    args: tuple          # meta() of each positional argument
    kwargs: dict         # constexprs and launch options
    scenarios: set = field(default_factory=set)
    model_runs: bool = True
    count: int = 0       # launches over the recorded forwards

    def key(self) -> tuple:
        return (self.kernel, self.grid, self.args, tuple(sorted(self.kwargs.items())))


def device_properties(arch):
    """What a launcher may ask of torch.cuda about the target card (e.g. the SM count for its grid), without one."""
    import types

    return types.SimpleNamespace(name=arch.card, major=arch.cc // 10, minor=arch.cc % 10,
                                 multi_processor_count=arch.sms, warp_size=32,
                                 max_threads_per_multi_processor=arch.max_threads_per_sm,
                                 regs_per_multiprocessor=arch.regs_per_sm,
                                 shared_memory_per_block_optin=arch.smem_per_block,
                                 shared_memory_per_multiprocessor=arch.smem_per_sm)


class Recorder:
    def __init__(self, arch):
        self.arch = arch  # the card the launchers are told they run on (grids may depend on its SM count)
        self.launches: dict[tuple, Launch] = {}
        self.ops: dict[tuple, dict] = {}
        self.kernels: dict[str, object] = {}
        self.scenario = ""

    def launch_fn(self, family: str):
        def record(kernel, grid, *args, **kwargs):
            rec = Launch(kernel.__name__, family, tuple(int(g) for g in grid), tuple(meta(a) for a in args),
                         dict(kwargs))
            rec = self.launches.setdefault(rec.key(), rec)
            rec.scenarios.add(self.scenario)
            rec.count += 1
            self.kernels[kernel.__name__] = kernel
        return record

    @contextlib.contextmanager
    def patched(self):
        """Launchers record instead of launching; op calls are recorded at the dispatch."""
        import sam3lt.kernels
        from sam3lt.ops import _backend

        modules = [importlib.import_module(f"sam3lt.kernels.{f}") for f in sam3lt.kernels.FAMILIES]
        saved = [(m, m.launch) for m in modules]
        select = _backend.select

        def recording_select(op, backend, *args):
            entry = self.ops.setdefault((op, meta(args)), {"op": op, "args": meta(args), "scenarios": set()})
            entry["scenarios"].add(self.scenario)
            return select(op, backend, *args)

        props = device_properties(self.arch)
        cuda_api = (torch.cuda.get_device_properties, torch.cuda.get_device_capability)
        for m in modules:
            m.launch = self.launch_fn(m.__name__.rsplit(".", 1)[-1])
        _backend.select = recording_select
        torch.cuda.get_device_properties = lambda device=None: props
        torch.cuda.get_device_capability = lambda device=None: (props.major, props.minor)
        try:
            yield self
        finally:
            for m, fn in saved:
                m.launch = fn
            _backend.select = select
            torch.cuda.get_device_properties, torch.cuda.get_device_capability = cuda_api


def s0_model():
    import sam3lt

    config = sam3lt.Sam3LiteTextConfig.from_preset("s0")
    vit = config.vision_config.backbone_config
    assert vit.image_size == IMAGE_SIZE, vit.image_size
    vit.num_hidden_layers, vit.global_attn_indexes = 2, [1]
    torch.manual_seed(0)
    return sam3lt.Sam3LiteTextModel(config)


def record_model(arch, scenarios=SCENARIOS) -> Recorder:
    """Launches and op calls of bf16 forwards of the S0 model at 1008² for each (images, prompts), as the
    launchers would make them on ``arch``'s card."""
    import sam3lt
    from sam3lt.model.common import clear_constant_caches
    from sam3lt.testing import fake_cuda
    from torch._subclasses.fake_tensor import FakeTensorMode

    rec = Recorder(arch)
    clear_constant_caches()  # fake tensors must not stay in the process-wide caches
    mode = FakeTensorMode()
    model = fake_cuda(s0_model().to(torch.bfloat16).fold_batchnorm(), mode)
    model.validate_inputs = False  # value checks read tensor data, which fake tensors do not have
    try:
        with rec.patched(), mode, sam3lt.use_backend("triton"), torch.inference_mode():
            for images, prompts in scenarios:
                rec.scenario = f"{images}x{prompts}"
                model(pixel_values=torch.empty(images, 3, IMAGE_SIZE, IMAGE_SIZE, device="cuda",
                                               dtype=torch.bfloat16),
                      input_ids=torch.ones(prompts, SEQ_LEN, dtype=torch.long, device="cuda"))
    finally:
        clear_constant_caches()
    return rec


def record_extras(rec: Recorder) -> None:
    """Launchers the forward does not call, at the shapes they serve: post-processing (masks_to_binary, run by
    the processor on the 288² mask logits for a 1080p image), the unfused RepMixer convolution (S0 runs
    the fused block kernel), the rope_qkv op on token sequences (the model's attention runs the same kernel on
    the token grid) at the ViT's global shape, and windowed attention over a grid that is not a multiple of the
    window (the model on a 980² image: 70² tokens, padded windows and their rotated pad table; counted as run by
    the model, as post-processing is), so that their configs are audited too."""
    from sam3lt.kernels import repmixer, upsample, window_attention

    try:
        from sam3lt.kernels import rope
    except ImportError:  # an older checkout without the family
        rope = None

    def e(*shape, dtype=torch.bfloat16):
        return torch.empty(*shape, dtype=dtype)

    before = set(rec.launches)
    with rec.patched():
        rec.scenario = "post-processing"
        upsample.masks_to_binary(e(200, 288, 288), (1080, 1920), 0.5)
        rec.scenario = "not run by S0"
        repmixer.repmixer_dwconv(e(1, SEQ_LEN, 512), e(512, 11), e(512), True)
        if rope is not None:
            grid = (IMAGE_SIZE // 14) ** 2
            rope.rope_qkv(e(1, grid, 3072), e(grid, 64, dtype=torch.float32), e(grid, 64, dtype=torch.float32), 16)
        rec.scenario = PADDED
        window_attention.window_attention(e(1, 70, 70, 3072), e(576, 64, dtype=torch.float32),
                                          e(576, 64, dtype=torch.float32), 16, 24, e(3072))
    for key in set(rec.launches) - before:
        rec.launches[key].model_runs = rec.launches[key].scenarios <= {"post-processing", PADDED}


def all_kernels() -> list[str]:
    """Names of every @triton.jit kernel in sam3lt.kernels (helpers called from kernels are JIT functions too)."""
    import sam3lt.kernels
    from triton.runtime.jit import JITFunction

    names = []
    for family in sam3lt.kernels.FAMILIES:
        module = importlib.import_module(f"sam3lt.kernels.{family}")
        names += [n for n, v in vars(module).items() if isinstance(v, JITFunction) and n.endswith("_kernel")]
    return names
