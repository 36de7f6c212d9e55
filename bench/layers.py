"""Per-layer breakdown: each component of the model timed on its own, for every sam3lt backend and for HF
transformers' model carrying the same weights.

Method: one forward of each model (one image, one text prompt plus one box prompt, so that the geometry
encoder runs) with forward *pre*-hooks that capture the positional and keyword arguments of each component;
then each component is called directly with its captured inputs and timed (see ``bench.common.Timer``), row by
row with every implementation in turn so that machine noise hits them alike. The hooks are removed before
timing, so nothing else is measured. Components:

    vision backbone (ViT)   vision_encoder.backbone        DETR encoder    detr_encoder
    neck (FPN)              vision_encoder.neck            DETR decoder    detr_decoder
    text encoder            text_encoder                   scoring         dot_product_scoring
    geometry encoder        geometry_encoder               mask decoder    mask_decoder

plus post-processing (``post_process_instance_segmentation`` with every query kept — threshold below 0 —
and masks resized to a 1080×1920 image; reduced on the CPU), and the full forward. The sum of the components
is less than the full forward by the glue between them (box head, padding, concatenations).

HF's ``dot_product_scoring`` scores the queries of all decoder layers (6 × 200); sam3lt's scores the last
layer's only, which is all the outputs use. sam3lt's inputs are captured under the eager backend and
replayed under each backend.
"""
from __future__ import annotations

import contextlib
import functools

import torch

from .common import error_text, free_cuda, is_oom
from .models import TARGET_SIZES, make_inputs

COMPONENTS = [
    ("vision backbone", "vision_encoder.backbone"),
    ("neck", "vision_encoder.neck"),
    ("text encoder", "text_encoder"),
    ("geometry encoder", "geometry_encoder"),
    ("DETR encoder", "detr_encoder"),
    ("DETR decoder", "detr_decoder"),
    ("scoring", "dot_product_scoring"),
    ("mask decoder", "mask_decoder"),
]
POSTPROCESS, FULL = "post-processing", "full forward"
ROWS = [name for name, _ in COMPONENTS] + [POSTPROCESS, FULL]


def module_at(model: torch.nn.Module, path: str) -> torch.nn.Module:
    return functools.reduce(getattr, path.split("."), model)


@contextlib.contextmanager
def track_ops(stack: list[str], used: dict[str, set]):
    """While active, every ``sam3lt.ops`` dispatch adds its op name to ``used[path]`` for each component path on
    ``stack`` (and to ``used[""]``). Wraps the dispatch's ``select``; does nothing if the dispatch has none."""
    try:
        from sam3lt.ops import _backend
    except ImportError:  # pragma: no cover
        yield
        return
    original = getattr(_backend, "select", None)
    if original is None:
        yield
        return

    def select(op, backend, *args):
        for path in stack + [""]:
            used.setdefault(path, set()).add(op)
        return original(op, backend, *args)

    _backend.select = select
    try:
        yield
    finally:
        _backend.select = original


def capture(model: torch.nn.Module, inputs: dict, ops_used: dict | None = None):
    """(captured, outputs): the first (args, kwargs) each component was called with during one forward.

    With ``ops_used`` (a dict), also which ``sam3lt.ops`` ops each component dispatched: ``ops_used[path]``
    (``ops_used[""]`` for the whole forward; missing if the dispatch could not be watched).
    """
    captured: dict[str, tuple] = {}
    stack: list[str] = []
    handles = []
    for _, path in COMPONENTS:
        def pre(module, args, kwargs, _path=path):
            captured.setdefault(_path, (args, kwargs))
            stack.append(_path)

        def post(module, args, output, _path=path):
            if stack and stack[-1] == _path:
                stack.pop()

        mod = module_at(model, path)
        handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(mod.register_forward_hook(post))
    used: dict[str, set] = {}
    try:
        with torch.inference_mode(), (track_ops(stack, used) if ops_used is not None else contextlib.nullcontext()):
            outputs = model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    if ops_used is not None and used.get(""):  # the dispatch was watched: record every component, even op-free ones
        ops_used.update({path: sorted(used.get(path, ())) for _, path in COMPONENTS})
        ops_used[""] = sorted(used[""])
    return captured, outputs


def backend_registered(backend: str) -> str | None:
    """None if ``backend`` implements at least one op in this build, else why not."""
    try:
        from sam3lt.ops import _backend

        registry = _backend._REGISTRY
    except (ImportError, AttributeError):  # pragma: no cover
        return None
    if backend == "auto" or any(backend in impls for impls in registry.values()):
        return None
    return f"the {backend} backend registers no op in this build (sam3lt.ops has no {backend} implementation)"


def hf_postprocessor():
    from transformers import Sam3ImageProcessor

    return Sam3ImageProcessor()


def our_postprocessor():
    import sam3lt

    return sam3lt.Sam3LiteTextProcessor()


def count(ctx) -> int:
    return len(ctx.dtypes) * (len(COMPONENTS) + 2)


def _cast(models, dtype) -> None:
    for model in models:
        model.to(dtype)


def capture_hf(hf, config, ctx, dtype, record_error):
    """HF's captured inputs with a box prompt, or without one (recorded) if HF cannot run the box here."""
    try:
        return capture(hf, make_inputs(config, 1, 1, ctx.device, dtype, box=True)), True
    except Exception as err:
        record_error(err)
        return capture(hf, make_inputs(config, 1, 1, ctx.device, dtype, box=False)), False


SAME = "same as eager"


def time_component(ctx, base: dict, model, captured, backend: str | None, label: str, path: str,
                   ops_used: dict | None = None, why_missing: dict | None = None) -> dict:
    """Time one captured component of ``model`` (under ``backend`` for sam3lt; None for HF). A component that
    dispatches no ``sam3lt.ops`` op runs the same code under every backend: it is timed under eager only."""
    entry = {**base, "component": label, "module": path}
    if path not in captured:
        reason = (why_missing or {}).get(path, "not called in the captured forward")
        return {**entry, "status": "unavailable", "reason": reason}
    if ops_used is not None:
        entry["ops"] = ops_used.get(path)
        if backend not in (None, "eager") and path in ops_used and not ops_used[path]:
            return {**entry, "status": SAME, "reason": "this component calls no sam3lt.ops op: the same code runs "
                                                       "under every backend (see the eager column)"}
    args, kwargs = captured[path]
    module = module_at(model, path)
    return run_timed(ctx, entry, lambda: module(*args, **kwargs), backend)


def run_timed(ctx, entry: dict, fn, backend: str | None, budget_s: float | None = None) -> dict:
    """Time ``fn`` under inference mode (and ``use_backend(backend)``), filling status/reason/timing."""
    import sam3lt
    from sam3lt.ops import BackendUnavailable

    try:
        with torch.inference_mode(), (sam3lt.use_backend(backend) if backend else contextlib.nullcontext()):
            timing = ctx.timer.call(fn, budget_s)
        entry.update(status="ok", **timing.as_dict())
    except BackendUnavailable as err:
        entry.update(status="unavailable", reason=str(err))
    except Exception as err:
        entry.update(status="oom" if is_oom(err) else "error", reason=error_text(err))
        free_cuda()
    return entry


def run(ctx, record, hf, ours, config) -> None:
    target = TARGET_SIZES[ctx.size]
    hf_post, our_post = hf_postprocessor(), our_postprocessor()
    import sam3lt

    for dtype_name in ctx.dtypes:
        from .common import DTYPES

        dtype = DTYPES[dtype_name]
        _cast((hf, ours), dtype)
        base0 = {"section": "layers", "dtype": dtype_name}
        if ctx.out_of_time():
            for _ in range(len(COMPONENTS) + 2):
                ctx.tick("skipped")
            record({**base0, "impl": "all", "component": "all", "status": "skipped",
                    "reason": "time budget of the run exhausted"})
            continue
        errors = []
        try:
            (hf_cap, hf_out), hf_box = capture_hf(hf, config, ctx, dtype, errors.append)
        except Exception as err:
            hf_cap, hf_out, hf_box = None, None, False
            errors.append(err)
        why_missing = {}
        if hf_cap is None:
            record({**base0, "impl": "hf:eager", "component": "all", "status": "error",
                    "reason": f"HF forward: {error_text(errors[-1])}"})
        elif errors:  # HF could not take the box prompt here: both models run text only, geometry unmeasured
            why_missing["geometry_encoder"] = f"HF forward with a box prompt failed: {error_text(errors[0])}"
        inputs = make_inputs(config, 1, 1, ctx.device, dtype, box=hf_box or hf_cap is None)
        ops_used: dict = {}
        try:
            with sam3lt.use_backend("eager"):
                our_cap, our_out = capture(ours, inputs, ops_used)
        except Exception as err:
            our_cap, our_out = None, None
            record({**base0, "impl": "sam3lt:eager", "component": "all", "status": "error",
                    "reason": f"capturing the inputs: {error_text(err)}"})
        runs = [(f"sam3lt:{b}", ours, our_cap, our_out, b) for b in ctx.backends] + [
            ("hf:eager", hf, hf_cap, hf_out, None)]
        todo = []
        for impl, model, captured, outputs, backend in runs:
            if captured is None:
                continue
            base = {**base0, "impl": impl, "box_prompt": bool(hf_box)}
            missing = backend_registered(backend) if backend else None
            if missing is not None:
                record({**base, "component": "all", "status": "unavailable", "reason": missing})
                continue
            if backend is None:
                post = functools.partial(hf_post.post_process_instance_segmentation, outputs, -1.0, 0.5, [target])
            else:
                post = functools.partial(our_post.post_process_instance_segmentation, outputs, threshold=-1.0,
                                         mask_threshold=0.5, target_sizes=[target])
            todo.append((base, model, captured, backend, post))
        # Row by row, every implementation in turn: machine noise hits them alike.
        for label, path in COMPONENTS + [(POSTPROCESS, None), (FULL, None)]:
            ctx.tick(f"layers {label} {dtype_name}")
            for base, model, captured, backend, post in todo:
                if path is not None:
                    record(time_component(ctx, base, model, captured, backend, label, path,
                                          ops_used if backend else None, why_missing))
                elif label == POSTPROCESS:
                    record(run_timed(ctx, {**base, "component": label,
                                           "module": f"processor, {target[0]}×{target[1]}"}, post, backend))
                else:
                    record(run_timed(ctx, {**base, "component": label, "module": "forward"},
                                     functools.partial(model, **inputs), backend))
        hf_cap = hf_out = our_cap = our_out = todo = None
        free_cuda()
    _cast((hf, ours), torch.float32)
