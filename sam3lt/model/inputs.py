"""Value checks of the integer inputs: token ids, attention-mask values, box labels, image sizes.

Each failure is a ``ValueError`` (``TypeError`` for a wrong dtype) that names the argument and the valid range,
instead of an ``IndexError`` from inside an embedding, or a silently wrong result.

Reading a tensor's values on the host is a device sync for a CUDA tensor, so the value checks follow one rule
(:func:`host_readable`):

- CPU tensors are always checked: no sync.
- Tensors on a GPU are checked when the model validates its inputs (``model.validate_inputs``, True in eager
  mode, as for the NaN check of ``pixel_values``): one sync per check.
- They are not checked on the fast path (:func:`sam3lt.optimize` sets ``validate_inputs = False``), nor while a
  CUDA graph is captured or ``torch.compile`` traces. There an out-of-range id is left to the embedding kernel's
  own device-side bounds assert; a ``torch._assert_async`` of ours would say no more and, like it, leave the CUDA
  context unusable, so we do not add one.

Shape and dtype checks read only metadata and are done by the callers, always.
"""
from __future__ import annotations

import numbers

import torch

BOX_PADDING_LABEL = -10  # HF: boxes labelled -10 are padding
BOX_LABELS = {1: "positive", 0: "negative", BOX_PADDING_LABEL: "padding"}
_INDEX_DTYPES = (torch.int64, torch.int32)  # what nn.Embedding takes


def host_readable(x: torch.Tensor, validate: bool = True) -> bool:
    """Whether a value check may read ``x`` on the host now (the rule in the module docstring)."""
    if isinstance(x, torch._subclasses.FakeTensor) or torch.compiler.is_compiling():
        return False
    if x.device.type == "cpu":
        return True
    if not validate or x.device.type == "meta":
        return False
    return not (x.is_cuda and torch.cuda.is_current_stream_capturing())


def _check_values(name: str, x: torch.Tensor, allowed, rule: str, validate: bool) -> None:
    """Raise ``ValueError("<name>: <rule>, got <value> at [i, j]")`` if ``allowed(x)`` is False anywhere; one
    read of a bool (one sync on a GPU), and only where :func:`host_readable` allows it."""
    if x.numel() == 0 or not host_readable(x, validate):
        return
    bad = ~allowed(x)
    if bool(bad.any()):
        index = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name}: {rule}, got {x[index].item()} at {list(index)}")


def check_token_ids(input_ids: torch.Tensor, vocab_size: int, validate: bool = True) -> None:
    """``input_ids``: int64/int32 ids in ``[0, vocab_size - 1]``."""
    if input_ids.dtype not in _INDEX_DTYPES:
        raise TypeError(f"input_ids: expected integer token ids (torch.int64 or torch.int32), got dtype "
                        f"{input_ids.dtype}")
    _check_values("input_ids", input_ids, lambda t: (t >= 0) & (t < vocab_size),
                  f"token ids must be in [0, {vocab_size - 1}] (the vocabulary has {vocab_size} tokens)", validate)


def check_attention_mask(attention_mask: torch.Tensor | None, validate: bool = True) -> None:
    """``attention_mask``: bool, or numbers that are all 0 (padding) or 1 (token)."""
    if attention_mask is None or attention_mask.dtype == torch.bool:
        return
    if attention_mask.is_complex():
        raise TypeError(f"attention_mask: expected a bool or integer mask, got dtype {attention_mask.dtype}")
    _check_values("attention_mask", attention_mask, lambda t: (t == 0) | (t == 1),
                  "values must be 0 (padding) or 1 (token)", validate)


def check_box_labels(labels: torch.Tensor | None, validate: bool = True) -> None:
    """``input_boxes_labels``: 1 (positive), 0 (negative) or -10 (padding)."""
    if labels is None:
        return
    if labels.is_complex():
        raise TypeError(f"input_boxes_labels: expected integer labels, got dtype {labels.dtype}")
    _check_values("input_boxes_labels", labels, lambda t: (t == 1) | (t == 0) | (t == BOX_PADDING_LABEL),
                  _label_range(), validate)


def check_label_list(name: str, labels) -> list[int]:
    """A list of box labels given as Python numbers (processor input): checked, as ints."""
    for j, label in enumerate(labels):
        if not isinstance(label, numbers.Integral) or int(label) not in BOX_LABELS:
            raise ValueError(f"{name}[{j}]: {_label_range()}, got {label!r}")
    return [int(v) for v in labels]


def _label_range() -> str:
    return "labels must be " + ", ".join(f"{v} ({name})" for v, name in BOX_LABELS.items())


def check_size(name: str, size) -> tuple[int, int]:
    """One image size (height, width), Python numbers, an array or a tensor: positive whole numbers, as an int
    pair."""
    if isinstance(size, torch.Tensor) or hasattr(size, "__array__"):
        size = size.tolist()
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        raise ValueError(f"{name}: expected a (height, width) pair, got {size!r}")
    if not all(_positive_whole(v) for v in size):
        raise ValueError(f"{name}: height and width must be positive whole numbers (pixels), got {tuple(size)}")
    return int(size[0]), int(size[1])


def check_sizes(name: str, sizes) -> list[tuple[int, int]]:
    """One (height, width) per image (a list or a (B, 2) tensor): :func:`check_size` each."""
    return [check_size(f"{name}[{i}]", size) for i, size in enumerate(sizes)]


def _positive_whole(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return value >= 1 and float(value).is_integer()  # NaN and inf are not
