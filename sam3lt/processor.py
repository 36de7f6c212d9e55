"""Pre- and post-processing for SAM3-LiteText, numerically the same as HF's ``Sam3Processor``.

HF's processor for ``sam3_lite_text`` is ``Sam3Processor`` = ``Sam3ImageProcessor`` (torchvision backend) +
``CLIPTokenizer``. :class:`Sam3LiteTextProcessor` reproduces it without ``transformers``:

* **images** – PIL images, numpy arrays (HWC, CHW or HW), torch tensors (CHW or HWC), or file paths; one image,
  a list, a nested list or a 4-D batch; uint8 or float. They are converted to RGB like HF (alpha composited on
  white, grayscale repeated), resized to ``size`` (1008×1008) with torchvision's antialiased resize *in the input
  dtype* (so uint8 images are rounded back to uint8 exactly as HF does), then ``(x - 255·mean) / (255·std)`` in
  float32 (HF's fused rescale + normalise). As in HF, float images are expected in [0, 255]: they are rescaled
  by 1/255 too. The maths runs on the input tensor's device, or on ``device`` when given.
* **text** – CLIP byte-level BPE done by the ``tokenizers`` library (vocabulary and merges from the checkpoint,
  or the bundled ``assets/bpe_simple_vocab_16e6.txt.gz``), by default padded to 32 tokens and never truncated, as
  ``Sam3Processor`` calls its tokenizer (``padding="max_length", max_length=32``); the call's ``padding``,
  ``max_length`` and ``truncation`` change that with transformers' meaning.
* **boxes** – pixel ``(x0, y0, x1, y1)`` per image, normalised by the original size and converted to
  ``(cx, cy, w, h)``; rows are padded with -10 and default labels are 1 (real) / -10 (padding), as in HF.
* **post-processing** – HF's scores (``sigmoid(logits) · sigmoid(presence)``), boxes and masks, on the outputs'
  device. Binary masks are returned as **bool** tensors (HF returns ``long``); the mask resize + sigmoid +
  threshold goes through :func:`sam3lt.ops.masks_to_binary` so the kernel backends accelerate it.

Where this module deliberately differs from HF (each a case where HF raises, silently does something odd, or
costs more):

* one prompt (a string or a 1-list) with N images or N rows of boxes is repeated to N rows (HF returns 1 row
  of ``input_ids``); N prompts need 1 or N images (HF does not check);
* a batch mixing prompts longer than 32 tokens is padded to its longest prompt (HF raises);
* ``padding``, ``max_length`` and ``truncation`` reach the tokenizer (HF drops them for text alone and raises
  with images); ``return_tensors=None`` returns tensors (HF: lists);
* a single 2-D (H, W) array is accepted as a grayscale image (HF raises);
* a box with other than 4 coordinates raises (HF pads it with -10 silently); box and label rows must have the same
  lengths row by row (HF compares only the largest row);
* with one image and N rows of boxes, every row is normalised by that image's size (HF normalises only row 0);
* in instance post-processing, an image with no kept instance gets masks of shape ``(0, H, W)`` at the target
  size (HF leaves ``(0, h, w)`` at the model's mask size); masks are bool, not long;
* ``target_sizes`` may be a (B, 2) tensor for masks too, and boxes may be arrays / tensors next to a list of
  prompts (HF raises in both cases).
"""
from __future__ import annotations

import functools
import gzip
import json
import numbers
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE
from torchvision.transforms.v2 import functional as tvF

from . import ops
from .model.inputs import check_label_list, check_size, check_sizes

__all__ = ["Sam3LiteTextProcessor", "ClipTokenizer", "ProcessorOutput", "DEFAULT_CHECKPOINT", "SAMPLE_IMAGE"]

DEFAULT_CHECKPOINT = "yonigozlan/sam3-litetext-s0"
ASSETS = Path(__file__).resolve().parent / "assets"
BUNDLED_BPE = ASSETS / "bpe_simple_vocab_16e6.txt.gz"
SAMPLE_IMAGE = ASSETS / "chelsea.jpg"  # scikit-image's "chelsea" (CC0), for offline demos

TEXT_MAX_LENGTH = 32  # Sam3Processor: tokenizer(text, padding="max_length", max_length=32)
CLIP_MODEL_MAX_LENGTH = 77  # CLIP's context length: the tokenizer_config "model_max_length" without a checkpoint
POINT_PAD_VALUE = -10  # Sam3Processor.point_pad_value: fills padded boxes and labels
IMAGE_SIZE = 1008

# PIL resampling codes (as saved in HF configs) -> torchvision modes, HF's pil_torch_interpolation_mapping.
_RESAMPLE = {
    0: tvF.InterpolationMode.NEAREST_EXACT,
    1: tvF.InterpolationMode.LANCZOS,
    2: tvF.InterpolationMode.BILINEAR,
    3: tvF.InterpolationMode.BICUBIC,
    4: tvF.InterpolationMode.BOX,
    5: tvF.InterpolationMode.HAMMING,
}

# Files of a checkpoint that describe the processor (what Sam3Processor.save_pretrained writes, old and new).
_PROCESSOR_FILES = ["processor_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json", "vocab.json", "merges.txt"]

# CLIPTokenizer's pre-tokenizer pattern (transformers/models/clip/tokenization_clip.py).
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


# ----------------------------------------------------------------------------------------------------- tokenizer
class ClipTokenizer:
    """CLIP byte-level BPE with ``Sam3Processor``'s padding: ``<|startoftext|> ... <|endoftext|>``, then padded to
    ``max_length`` (32) with the pad token; longer prompts are kept whole, never truncated.

    The BPE itself is the ``tokenizers`` library's; this class only sets it up the way transformers 5's
    ``CLIPTokenizer.__init__`` does. Like transformers 5, only the vocabulary and merges are taken from a
    checkpoint's ``tokenizer.json``; normaliser, pre-tokeniser and post-processor are always CLIP's.
    """

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]], *, bos_token="<|startoftext|>",
                 eos_token="<|endoftext|>", unk_token="<|endoftext|>", pad_token="<|endoftext|>",
                 padding_side="right", max_length=TEXT_MAX_LENGTH, model_max_length=CLIP_MODEL_MAX_LENGTH):
        for name, token in (("bos_token", bos_token), ("eos_token", eos_token), ("unk_token", unk_token),
                            ("pad_token", pad_token)):
            if token not in vocab:
                raise ValueError(f"{name}: {token!r} is not in the vocabulary")
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side: expected 'right' or 'left', got {padding_side!r}")
        tok = Tokenizer(BPE(vocab=dict(vocab), merges=list(merges), dropout=None, continuing_subword_prefix="",
                            end_of_word_suffix="</w>", fuse_unk=False, unk_token=unk_token))
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ])
        tok.decoder = decoders.ByteLevel()
        # transformers registers the special tokens as added tokens, so they are matched whole in raw text.
        specials = dict.fromkeys([bos_token, eos_token, unk_token, pad_token])
        tok.add_special_tokens([AddedToken(t, single_word=False, lstrip=False, rstrip=False, normalized=False,
                                           special=True) for t in specials])
        tok.post_processor = processors.RobertaProcessing((eos_token, vocab[eos_token]),
                                                          (bos_token, vocab[bos_token]),
                                                          trim_offsets=False, add_prefix_space=False)
        self.backend = tok
        self.special_tokens = {"bos_token": bos_token, "eos_token": eos_token, "unk_token": unk_token,
                               "pad_token": pad_token}
        self.pad_token_id = vocab[pad_token]
        self.padding_side = padding_side
        self.max_length = int(max_length)
        self.model_max_length = int(model_max_length)  # kept for save (transformers' tokenizer_config field)

    # --- constructors
    @classmethod
    def from_bundled(cls, **kwargs) -> "ClipTokenizer":
        """The standard CLIP vocabulary (49408 tokens) from ``assets/bpe_simple_vocab_16e6.txt.gz``."""
        vocab, merges = _bundled_vocab_merges()
        return cls(vocab, merges, **kwargs)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> "ClipTokenizer | None":
        """From a checkpoint folder (``tokenizer.json``, or ``vocab.json`` + ``merges.txt``; special tokens and
        padding side from ``tokenizer_config.json`` / ``special_tokens_map.json``). None if it has neither."""
        folder = Path(folder)
        if (folder / "tokenizer.json").is_file():
            model = _read_json(folder / "tokenizer.json").get("model", {})
            if model.get("type", "BPE") != "BPE" or "vocab" not in model:
                raise ValueError(f"{folder / 'tokenizer.json'}: expected a BPE tokenizer (CLIP), "
                                 f"got model type {model.get('type')!r}")
            vocab, merges = model["vocab"], [_merge_pair(m) for m in model.get("merges", [])]
        elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            vocab = _read_json(folder / "vocab.json")
            lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
            merges = [_merge_pair(line) for line in lines if line and not line.startswith("#version")]
        else:
            return None
        config = {}
        for name in ("tokenizer_config.json", "special_tokens_map.json"):  # the latter wins, as in transformers
            if (folder / name).is_file():
                config.update(_read_json(folder / name))
        kwargs = {key: _token_content(config[key]) for key in ("bos_token", "eos_token", "unk_token", "pad_token")
                  if config.get(key) is not None}
        if config.get("model_max_length") is not None:
            kwargs["model_max_length"] = config["model_max_length"]
        return cls(vocab, merges, padding_side=config.get("padding_side", "right"), **kwargs)

    # --- encoding
    def __call__(self, text: str | Sequence[str], padding: bool | str = "max_length", max_length: int | None = None,
                 truncation: bool | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenise prompts -> ``input_ids`` (B, L) long and ``attention_mask`` (B, L) long.

        ``padding``, ``max_length`` and ``truncation`` mean what they mean for transformers' tokenizers; the
        defaults are ``Sam3Processor``'s call (pad to ``max_length`` = :attr:`max_length`, 32, never truncate):

        * padding: "max_length" pads to ``max_length``; True / "longest" to the longest prompt; False /
          "do_not_pad" not at all (the prompts must then have one length, as for HF's tensors);
        * truncation: True / "longest_first" / "only_first" cut prompts longer than ``max_length`` to it, keeping
          the start and end tokens (``max_length`` ≥ 2); False / None / "do_not_truncate" keep them whole.

        A batch whose prompts are longer than ``max_length`` and not truncated is padded to its longest prompt
        (HF raises: its rows would have different lengths).
        """
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise ValueError("text: got an empty list of prompts")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text[{i}]: expected a string, got {type(t).__name__}")
        padding, truncate = _padding_strategy(padding), _truncation_strategy(truncation)
        if max_length is None:
            max_length = self.max_length
        if isinstance(max_length, bool) or not isinstance(max_length, numbers.Integral) or max_length < 1:
            raise ValueError(f"max_length: expected a positive integer, got {max_length!r}")
        if truncate and max_length < 2:
            raise ValueError(f"max_length: truncation keeps the start and end tokens, so max_length must be at "
                             f"least 2, got {max_length}")
        rows = [enc.ids for enc in self.backend.encode_batch(texts, add_special_tokens=True)]
        if truncate:  # as transformers: the prompt's own tokens are cut, the start and end tokens kept
            rows = [ids if len(ids) <= max_length else ids[:max_length - 1] + ids[-1:] for ids in rows]
        longest = max(len(ids) for ids in rows)
        if padding == "do_not_pad" and len({len(ids) for ids in rows}) > 1:
            raise ValueError(f"padding: with padding=False the prompts must have one length to form a tensor, got "
                             f"lengths {[len(ids) for ids in rows]}; pass padding=True or 'max_length'")
        length = max(max_length, longest) if padding == "max_length" else longest
        input_ids = torch.full((len(texts), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(texts), length), dtype=torch.long)
        for row, ids in enumerate(rows):
            n = len(ids)
            cols = slice(0, n) if self.padding_side == "right" else slice(length - n, length)
            input_ids[row, cols] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, cols] = 1
        return input_ids, attention_mask

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        # CLIP marks word ends with "</w>"; transformers' decode turns them into spaces the same way.
        text = self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return text.replace("</w>", " ").strip()

    def save(self, folder: str | os.PathLike) -> None:
        """Write ``tokenizer.json`` + ``tokenizer_config.json`` as transformers' ``CLIPTokenizer`` reads them."""
        folder = Path(folder)
        self.backend.save(str(folder / "tokenizer.json"))
        config = {**self.special_tokens, "tokenizer_class": "CLIPTokenizer", "processor_class": "Sam3Processor",
                  "padding_side": self.padding_side, "model_max_length": self.model_max_length}
        _write_json(folder / "tokenizer_config.json", config)


def _padding_strategy(padding) -> str:
    """transformers' ``padding`` values (also its ``PaddingStrategy``) -> "max_length", "longest" or "do_not_pad"."""
    if isinstance(padding, bool):
        return "longest" if padding else "do_not_pad"
    for strategy in ("max_length", "longest", "do_not_pad"):
        if isinstance(padding, str) and padding == strategy:
            return strategy
    raise ValueError(f"padding: expected True / 'longest', 'max_length' or False / 'do_not_pad', got {padding!r}")


def _truncation_strategy(truncation) -> bool:
    """transformers' ``truncation`` values for one sequence per prompt -> truncate or not."""
    if truncation in (None, False, "do_not_truncate"):
        return False
    if truncation in (True, "longest_first", "only_first"):
        return True
    raise ValueError(f"truncation: expected True / 'longest_first' / 'only_first' or False / 'do_not_truncate' "
                     f"(one sequence per prompt), got {truncation!r}")


def _merge_pair(merge) -> tuple[str, str]:
    # merges are "a b" strings (merges.txt, older tokenizer.json) or ["a", "b"] pairs (newer tokenizer.json)
    pair = merge.split(" ") if isinstance(merge, str) else list(merge)
    if len(pair) != 2:
        raise ValueError(f"merges: malformed merge rule {merge!r}")
    return pair[0], pair[1]


def _token_content(token) -> str:
    return token["content"] if isinstance(token, dict) else str(token)


@functools.lru_cache(maxsize=1)
def _bundled_vocab_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The standard CLIP vocab.json / merges.txt construction (OpenAI CLIP, open_clip, HF's CLIP files) from the
    16e6 BPE file: 256 byte symbols, the same with "</w>", one token per merge, then the two special tokens."""
    with gzip.open(BUNDLED_BPE, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [_merge_pair(line) for line in lines[1:49152 - 256 - 2 + 1]]  # line 0 is a header
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode character table."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


# ------------------------------------------------------------------------------------------------------- output
class ProcessorOutput(dict):
    """A dict of tensors with attribute access and ``.to(device, dtype)``, like HF's ``BatchFeature``."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device=None, dtype: torch.dtype | None = None) -> "ProcessorOutput":
        """Move every tensor to ``device``; cast only floating-point tensors to ``dtype`` (ids stay long)."""
        out = ProcessorOutput()
        for key, value in self.items():
            if isinstance(value, torch.Tensor):
                value = value.to(device=device, dtype=dtype if dtype is not None and value.is_floating_point()
                                 else None)
            out[key] = value
        return out


# ---------------------------------------------------------------------------------------------------- processor
class Sam3LiteTextProcessor:
    """SAM3-LiteText processor: images + text prompts (+ optional boxes) in, model inputs out; and HF's
    post-processing of the model outputs. Defaults are HF ``Sam3ImageProcessor``'s.

    Args:
        tokenizer: a :class:`ClipTokenizer`; default: the bundled CLIP vocabulary (works offline).
        size: model input size: an int, ``(height, width)`` or ``{"height": h, "width": w}``; 1008 by default.
            Use the model's ``config.image_size``.
        resample: PIL resampling code as in HF configs (2 = bilinear) or a torchvision ``InterpolationMode``.
        do_resize, do_rescale, rescale_factor, do_normalize, image_mean, image_std, do_convert_rgb: as in HF.
        text_max_length: prompts are padded to this many tokens (32, as in ``Sam3Processor``).
    """

    def __init__(self, tokenizer: ClipTokenizer | None = None, *, size: int | Sequence[int] | dict = IMAGE_SIZE,
                 resample: int | tvF.InterpolationMode = 2, do_resize: bool = True, do_rescale: bool = True,
                 rescale_factor: float = 1 / 255, do_normalize: bool = True,
                 image_mean: Sequence[float] = (0.5, 0.5, 0.5), image_std: Sequence[float] = (0.5, 0.5, 0.5),
                 do_convert_rgb: bool = True, text_max_length: int = TEXT_MAX_LENGTH):
        self.tokenizer = tokenizer if tokenizer is not None else ClipTokenizer.from_bundled()
        self.tokenizer.max_length = int(text_max_length)
        self.size = check_size("size", _parse_size(size))
        if isinstance(resample, tvF.InterpolationMode):
            self.resample = resample
        elif int(resample) in _RESAMPLE:
            self.resample = _RESAMPLE[int(resample)]
        else:
            raise ValueError(f"resample: unknown PIL resampling code {resample!r}")
        self.do_resize, self.do_rescale, self.do_normalize = bool(do_resize), bool(do_rescale), bool(do_normalize)
        self.do_convert_rgb = bool(do_convert_rgb)
        self.rescale_factor = float(rescale_factor)
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        # image-processor settings of a loaded checkpoint that sam3lt does not use (e.g. HF's mask_size):
        # save_pretrained writes them back, so that a folder keeps them through sam3lt
        self.extra_image_config: dict[str, Any] = {}

    # --- loading / saving
    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike = DEFAULT_CHECKPOINT, *, revision: str | None = None,
                        cache_dir: str | None = None, local_files_only: bool = False, token: str | bool | None = None,
                        **overrides) -> "Sam3LiteTextProcessor":
        """Load from a local checkpoint folder or a Hugging Face Hub repo id.

        Reads ``processor_config.json`` (transformers ≥ 5) or ``preprocessor_config.json`` (older) for the image
        settings and ``tokenizer.json`` or ``vocab.json`` + ``merges.txt`` for the vocabulary. ``overrides`` replace
        constructor arguments (e.g. ``size=model.config.image_size``).
        """
        folder = _resolve_folder(path_or_hub_id, revision=revision, cache_dir=cache_dir,
                                 local_files_only=local_files_only, token=token)
        image_config: dict[str, Any] = {}
        if (folder / "processor_config.json").is_file():
            image_config = _read_json(folder / "processor_config.json").get("image_processor", {})
        if not image_config and (folder / "preprocessor_config.json").is_file():
            image_config = _read_json(folder / "preprocessor_config.json")
        known = ("size", "resample", "do_resize", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
                 "image_std", "do_convert_rgb")
        kwargs = {key: image_config[key] for key in known if image_config.get(key) is not None}
        tokenizer = ClipTokenizer.from_folder(folder)
        if tokenizer is None:
            warnings.warn(f"{path_or_hub_id}: no tokenizer files found; using the bundled CLIP vocabulary",
                          stacklevel=2)
        kwargs.update(overrides)
        processor = cls(tokenizer=tokenizer, **kwargs)
        processor.extra_image_config = {key: value for key, value in image_config.items()
                                        if key not in known and key != "image_processor_type"}
        return processor

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write ``processor_config.json`` + tokenizer files in the layout transformers' ``Sam3Processor`` loads."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        resample = {mode: code for code, mode in _RESAMPLE.items()}[self.resample]
        image_processor = {
            "image_processor_type": "Sam3ImageProcessor", "do_convert_rgb": self.do_convert_rgb,
            "do_normalize": self.do_normalize, "do_rescale": self.do_rescale, "do_resize": self.do_resize,
            "image_mean": list(self.image_mean), "image_std": list(self.image_std), "resample": resample,
            "rescale_factor": self.rescale_factor, "size": {"height": self.size[0], "width": self.size[1]},
        }
        image_processor = {**self.extra_image_config, **image_processor}
        _write_json(folder / "processor_config.json",
                    {"image_processor": image_processor, "processor_class": "Sam3Processor",
                     "point_pad_value": POINT_PAD_VALUE, "target_size": self.size[0]})
        self.tokenizer.save(folder)

    # --- inputs
    def __call__(self, images=None, text: str | Sequence[str | None] | None = None, input_boxes=None,
                 input_boxes_labels=None, original_sizes=None, return_tensors: str | None = "pt",
                 device: str | torch.device | None = None, *, padding: bool | str = "max_length",
                 max_length: int | None = None, truncation: bool | str | None = None) -> ProcessorOutput:
        """Prepare model inputs.

        Args:
            images: one image, a list / nested list of images, or a 4-D batch (see the module docstring).
            text: a prompt or a list of prompts. One image with N prompts gives ``pixel_values`` of batch 1 and
                ``input_ids`` of batch N (the model encodes the image once); otherwise one prompt per image,
                or one prompt for all images (repeated).
            input_boxes: boxes in pixels, ``[row][box][x0, y0, x1, y1]`` (list, array or (B, N, 4) tensor), one
                row per prompt; a row may be None. Without ``text`` the prompt is ``"visual"`` as in HF.
            input_boxes_labels: ``[row][box]`` 1 (positive) / 0 (negative); default 1 for every given box.
            original_sizes: (B, 2) image sizes (height, width), needed for boxes when ``images`` is None.
            return_tensors: ``"pt"`` (torch tensors; None means the same) or ``"np"`` (numpy arrays).
            device: where to compute and return every tensor; default: the device of the input image tensors
                (CPU for PIL / numpy).
            padding, max_length, truncation: the tokenizer's, with transformers' meaning (see
                :meth:`ClipTokenizer.__call__`); by default prompts are padded to 32 tokens and never truncated,
                as ``Sam3Processor`` calls its tokenizer.

        Returns:
            :class:`ProcessorOutput` with ``pixel_values`` (B, 3, H, W) float32 and ``original_sizes`` (B, 2) long
            (given images), ``input_ids`` / ``attention_mask`` (N, L) long (given text or boxes), and
            ``input_boxes`` (N, M, 4) float32 cxcywh in [0, 1] / ``input_boxes_labels`` (N, M) long (given boxes).
        """
        if return_tensors not in ("pt", "np", None):
            raise ValueError(f"return_tensors: expected 'pt' (torch, also None) or 'np' (numpy), got "
                             f"{return_tensors!r}")
        if images is None and text is None and input_boxes is None:
            raise ValueError("images, text, input_boxes: give at least one of them")
        if input_boxes_labels is not None and input_boxes is None:
            raise ValueError("input_boxes_labels: given without input_boxes")
        out = ProcessorOutput()
        device = torch.device(device) if device is not None else None

        num_images = None
        if images is not None:
            out["pixel_values"], out["original_sizes"] = self.preprocess_images(images, device=device)
            device = out["pixel_values"].device
            num_images = len(out["pixel_values"])
        elif original_sizes is not None:
            sizes = torch.as_tensor(original_sizes).detach().cpu().to(torch.long)
            if sizes.ndim == 1:
                sizes = sizes[None]
            if sizes.ndim != 2 or sizes.shape[-1] != 2:
                raise ValueError(f"original_sizes: expected (B, 2) sizes (height, width), got shape "
                                 f"{tuple(sizes.shape)}")
            check_sizes("original_sizes", torch.as_tensor(original_sizes).reshape(sizes.shape))
            out["original_sizes"] = sizes
        elif input_boxes is not None:
            raise ValueError("input_boxes: boxes are in pixels, so images or original_sizes must be given too")
        device = device if device is not None else torch.device("cpu")

        box_rows = _box_rows(input_boxes) if input_boxes is not None else None
        prompts = _resolve_prompts(text, box_rows)
        if prompts is not None:
            input_ids, attention_mask = self.tokenizer(prompts, padding=padding, max_length=max_length,
                                                       truncation=truncation)
            num_rows = len(prompts)
            if num_rows == 1:  # one prompt for every image / row of boxes: repeat it (HF keeps a single row)
                num_rows = max(num_images or 1, len(box_rows or ()))
                input_ids, attention_mask = (t.expand(num_rows, -1).contiguous()
                                             for t in (input_ids, attention_mask))
            if num_images not in (None, 1, num_rows):
                raise ValueError(f"text: got {len(prompts)} prompts for {num_images} images; give one prompt per "
                                 "image, one prompt for all images, or one image for all prompts")
            out["input_ids"], out["attention_mask"] = input_ids, attention_mask

        if box_rows is not None:
            if len(box_rows) != len(out["input_ids"]):
                raise ValueError(f"input_boxes: got {len(box_rows)} rows of boxes for {len(out['input_ids'])} "
                                 "prompts / images; give one row of boxes per prompt")
            out["input_boxes"], out["input_boxes_labels"] = _boxes_to_tensors(
                box_rows, _label_rows(input_boxes_labels, box_rows), out["original_sizes"])
        out = out.to(device)
        if return_tensors == "np":
            return ProcessorOutput({key: value.cpu().numpy() if isinstance(value, torch.Tensor) else value
                                    for key, value in out.items()})
        return out

    def preprocess_images(self, images, device: str | torch.device | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images -> (``pixel_values`` (B, 3, H, W) float32, ``original_sizes`` (B, 2) long (height, width))."""
        chw = [_to_chw(image, self.do_convert_rgb) for image in _flatten_images(images)]
        if device is None:  # compute where the (first) tensor input lives: a CUDA tensor is processed on CUDA
            device = next((t.device for t in chw if t.device.type != "cpu"), torch.device("cpu"))
        chw = [t.to(device) for t in chw]
        original_sizes = torch.tensor([tuple(t.shape[-2:]) for t in chw], dtype=torch.long, device=device)
        # Same-shaped images are resized together, as HF groups them (per-image results are the same either way).
        groups: dict[tuple, list[int]] = {}
        for i, t in enumerate(chw):
            groups.setdefault((tuple(t.shape), t.dtype), []).append(i)
        processed: list[torch.Tensor | None] = [None] * len(chw)
        for indices in groups.values():
            batch = self._resize_rescale_normalize(torch.stack([chw[i] for i in indices]))
            for i, image in zip(indices, batch):
                processed[i] = image
        shapes = {tuple(p.shape) for p in processed}
        if len(shapes) != 1:
            raise ValueError(f"images: with do_resize=False all images must have the same size, got {sorted(shapes)}")
        return torch.stack(processed), original_sizes

    def _resize_rescale_normalize(self, batch: torch.Tensor) -> torch.Tensor:
        if self.do_resize:
            # In the input dtype, as HF: torchvision rounds uint8 results back to uint8.
            batch = tvF.resize(batch, list(self.size), interpolation=self.resample, antialias=True)
        if self.do_rescale and self.do_normalize:
            # HF fuses rescale into normalise: (x - mean/f) / (std/f) with f = rescale_factor, in float32.
            mean = torch.tensor(self.image_mean, device=batch.device) * (1.0 / self.rescale_factor)
            std = torch.tensor(self.image_std, device=batch.device) * (1.0 / self.rescale_factor)
            batch = tvF.normalize(batch.to(torch.float32), mean, std)
        elif self.do_normalize:
            batch = tvF.normalize(batch.to(torch.float32), list(self.image_mean), list(self.image_std))
        elif self.do_rescale:
            batch = batch * self.rescale_factor
        return batch.to(torch.float32)

    # --- post-processing (HF Sam3ImageProcessor.post_process_*)
    def post_process_object_detection(self, outputs, threshold: float = 0.3, target_sizes=None) -> list[dict]:
        """Per image: ``{"scores": (K,), "boxes": (K, 4) xyxy}`` for the queries whose score exceeds ``threshold``;
        boxes in pixels of ``target_sizes`` ((height, width) per image) if given, else normalised."""
        scores, boxes = self._scores_and_boxes(outputs, target_sizes)
        results = []
        for image_scores, image_boxes in zip(scores, boxes):
            keep = image_scores > threshold
            results.append({"scores": image_scores[keep], "boxes": image_boxes[keep]})
        return results

    def post_process_instance_segmentation(self, outputs, threshold: float = 0.3, mask_threshold: float = 0.5,
                                           target_sizes=None) -> list[dict]:
        """Per image: ``{"scores": (K,), "boxes": (K, 4) xyxy, "masks": (K, H, W) bool}`` for the kept queries.

        Masks are ``bilinear(sigmoid(mask_logits), (H, W)) > mask_threshold`` with (H, W) the target size, or
        the model's mask size when ``target_sizes`` is None (bool; HF returns the same values as long).
        """
        pred_masks = _field(outputs, "pred_masks")
        scores, boxes = self._scores_and_boxes(outputs, target_sizes)
        sizes = _sizes_list(target_sizes)
        results = []
        for i, (image_scores, image_boxes) in enumerate(zip(scores, boxes)):
            keep = image_scores > threshold
            size = sizes[i] if sizes is not None else tuple(pred_masks.shape[-2:])
            # Only the kept masks are upsampled (HF applies sigmoid to all of them first: same values).
            masks = ops.masks_to_binary(pred_masks[i][keep], size, mask_threshold)
            results.append({"scores": image_scores[keep], "boxes": image_boxes[keep], "masks": masks})
        return results

    def post_process_semantic_segmentation(self, outputs, target_sizes=None, threshold: float = 0.5,
                                           return_segmentation_scores: bool = False) -> list:
        """Per image: a (H, W) bool map ``bilinear(sigmoid(semantic_seg)) > threshold`` (HF: the same as long);
        with ``return_segmentation_scores`` a dict ``{"segmentation": (H, W) bool, "segmentation_scores":
        (1, H, W) probabilities}``."""
        semantic_logits = _field(outputs, "semantic_seg", required=False)
        if semantic_logits is None:
            raise ValueError("outputs: semantic_seg is missing; the model must return semantic segmentation logits")
        sizes = _sizes_list(target_sizes, len(semantic_logits))
        results = []
        for i, logits in enumerate(semantic_logits):  # logits: (1, h, w)
            size = sizes[i] if sizes is not None else tuple(logits.shape[-2:])
            segmentation = ops.masks_to_binary(logits, size, threshold)[0]
            if not return_segmentation_scores:
                results.append(segmentation)
                continue
            probs = logits.sigmoid()
            if sizes is not None:
                probs = torch.nn.functional.interpolate(probs[None], size=size, mode="bilinear",
                                                        align_corners=False)[0]
            results.append({"segmentation": segmentation, "segmentation_scores": probs})
        return results

    def _scores_and_boxes(self, outputs, target_sizes) -> tuple[torch.Tensor, torch.Tensor]:
        pred_logits = _field(outputs, "pred_logits")  # (B, Q)
        boxes = _field(outputs, "pred_boxes")  # (B, Q, 4) xyxy in [0, 1]
        presence_logits = _field(outputs, "presence_logits", required=False)  # (B, 1) or None
        scores = pred_logits.sigmoid()
        if presence_logits is not None:
            scores = scores * presence_logits.sigmoid()
        sizes = _sizes_list(target_sizes, len(pred_logits))
        if sizes is not None:
            # HF builds the (w, h, w, h) factors as an integer tensor and multiplies: the same here.
            hw = torch.tensor(sizes, dtype=torch.long)
            scale = torch.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], dim=1)
            boxes = boxes * scale[:, None, :].to(boxes.device)
        return scores, boxes


# --------------------------------------------------------------------------------------------------- image utils
def _parse_size(size) -> tuple[int, int]:
    if isinstance(size, dict):
        if "height" not in size or "width" not in size:
            raise ValueError(f"size: expected {{'height': h, 'width': w}}, got {size!r}")
        return int(size["height"]), int(size["width"])
    if isinstance(size, numbers.Integral):
        return int(size), int(size)
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return int(size[0]), int(size[1])
    raise ValueError(f"size: expected an int, (height, width) or {{'height', 'width'}}, got {size!r}")


def _is_image(x) -> bool:
    return isinstance(x, (Image.Image, np.ndarray, torch.Tensor, str, os.PathLike))


def _flatten_images(images) -> list:
    """One image, a list, a list of lists or 4-D batches -> a flat list of single images (HF's flattening)."""
    if isinstance(images, (list, tuple)):
        flat = []
        for item in images:
            if isinstance(item, (list, tuple)):
                flat.extend(_flatten_images(item) if item else [])
            elif isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim == 4:
                flat.extend(item)
            elif _is_image(item):
                flat.append(item)
            else:
                raise TypeError(f"images: expected PIL images, numpy arrays, torch tensors or paths, got "
                                f"{type(item).__name__} in the list")
        if not flat:
            raise ValueError("images: got an empty list")
        return flat
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        if len(images) == 0:
            raise ValueError("images: got an empty batch")
        return list(images)
    if not _is_image(images):
        raise TypeError(f"images: expected a PIL image, numpy array, torch tensor or path, got "
                        f"{type(images).__name__}")
    return [images]


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    # HF's convert_to_rgb: composite transparency onto white, otherwise a plain PIL conversion.
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Decode an image file to a (3, H, W) uint8 RGB tensor, EXIF orientation applied, with torchvision's
    decoder as HF does for paths (when torchcodec is absent); with PIL if this torchvision has no decoder."""
    try:
        from torchvision.io import ImageReadMode, decode_image
    except ImportError:  # torchvision has deprecated its decoders (0.29) and may drop them
        with Image.open(path) as image:
            return _to_chw(ImageOps.exif_transpose(image), do_convert_rgb=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_image(str(path), mode=ImageReadMode.RGB, apply_exif_orientation=True)


def _to_chw(image, do_convert_rgb: bool) -> torch.Tensor:
    """One image -> a channels-first tensor (C, H, W) in its own dtype, RGB if ``do_convert_rgb``."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, Image.Image):
        array = np.array(_pil_to_rgb(image) if do_convert_rgb else image)
        t = torch.from_numpy(array)
        return (t[None] if t.ndim == 2 else t.permute(2, 0, 1)).contiguous()
    if isinstance(image, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(image))
    elif isinstance(image, torch.Tensor):
        t = image
    else:
        raise TypeError(f"images: expected a PIL image, numpy array, torch tensor or path, got {type(image).__name__}")
    if t.ndim == 2:
        t = t[None]
    elif t.ndim != 3:
        raise ValueError(f"images: expected (H, W), (C, H, W) or (H, W, C) images, got shape {tuple(t.shape)}")
    elif t.shape[0] not in (1, 3, 4):  # HF's inference: channels first when the first dim could be channels
        if t.shape[-1] not in (1, 3, 4):
            raise ValueError(f"images: cannot find the channel axis of shape {tuple(t.shape)}; expected 1, 3 or 4 "
                             "channels first or last")
        t = t.permute(2, 0, 1)
    if do_convert_rgb:
        t = tvF.grayscale_to_rgb(t)
        if t.shape[0] == 4:  # HF: composite RGBA onto white, computed in float32
            if t.is_floating_point() and (t.min() < 0.0 or t.max() > 1.0):
                raise ValueError("images: a 4-channel float image must be in [0, 1] to be composited to RGB")
            dtype = t.dtype
            hwc = tvF.to_dtype(t.movedim(0, -1), torch.float32, scale=True)
            hwc = hwc[..., :3] * hwc[..., 3:] + (1 - hwc[..., 3:])
            t = tvF.to_dtype(hwc, dtype, scale=True).movedim(-1, 0)
    return t.contiguous()


# ------------------------------------------------------------------------------------------------ prompt utils
def _resolve_prompts(text, box_rows) -> list[str] | None:
    """HF's _resolve_text_prompts: no text with boxes -> "visual"; a None prompt with boxes -> "visual"."""
    if text is None:
        return ["visual"] if box_rows is not None else None
    if isinstance(text, str):
        return [text]
    if not isinstance(text, (list, tuple)):
        raise TypeError(f"text: expected a string or a list of strings, got {type(text).__name__}")
    if not text:
        raise ValueError("text: got an empty list of prompts")
    if box_rows is not None and len(text) != len(box_rows):
        raise ValueError(f"text: got {len(text)} prompts but {len(box_rows)} rows of input_boxes; give one row of "
                         "boxes per prompt")
    prompts = []
    for i, prompt in enumerate(text):
        if prompt is None:
            if box_rows is None or box_rows[i] is None:
                raise ValueError(f"text[{i}]: is None and has no boxes to prompt with")
            prompt = "visual"
        if not isinstance(prompt, str):
            raise TypeError(f"text[{i}]: expected a string, got {type(prompt).__name__}")
        prompts.append(prompt)
    return prompts


def _as_list(x):
    return x.detach().cpu().tolist() if isinstance(x, torch.Tensor) else x.tolist() if isinstance(x, np.ndarray) else x


def _box_rows(input_boxes) -> list[list[list[float]] | None]:
    if isinstance(input_boxes, (np.ndarray, torch.Tensor)):
        if input_boxes.ndim != 3 or input_boxes.shape[-1] != 4:
            raise ValueError(f"input_boxes: expected shape (rows, boxes, 4) in pixels (x0, y0, x1, y1), got "
                             f"{tuple(input_boxes.shape)}")
    rows = _as_list(input_boxes)
    if not isinstance(rows, (list, tuple)) or not rows:
        raise ValueError("input_boxes: expected a non-empty nested list [row][box][x0, y0, x1, y1]")
    out = []
    for i, row in enumerate(rows):
        row = _as_list(row)
        if row is None:
            out.append(None)
            continue
        if not isinstance(row, (list, tuple)):
            raise ValueError(f"input_boxes[{i}]: expected a list of boxes [box][x0, y0, x1, y1] (3 levels of "
                             f"nesting), got {type(row).__name__}")
        boxes = []
        for j, box in enumerate(row):
            box = _as_list(box)
            if not isinstance(box, (list, tuple)) or not all(isinstance(v, numbers.Real) for v in box):
                raise ValueError(f"input_boxes[{i}][{j}]: expected a box [x0, y0, x1, y1] of numbers (3 levels of "
                                 f"nesting: [row][box][coordinate]), got {box!r}")
            if len(box) != 4:
                raise ValueError(f"input_boxes[{i}][{j}]: a box has 4 coordinates (x0, y0, x1, y1), got {len(box)}")
            boxes.append([float(v) for v in box])
        out.append(boxes)
    return out


def _label_rows(input_boxes_labels, box_rows) -> list[list[int]]:
    if input_boxes_labels is None:  # HF: 1 for every given box
        return [[1] * len(row or []) for row in box_rows]
    if isinstance(input_boxes_labels, (np.ndarray, torch.Tensor)) and input_boxes_labels.ndim != 2:
        raise ValueError(f"input_boxes_labels: expected shape (rows, boxes), got {tuple(input_boxes_labels.shape)}")
    rows = _as_list(input_boxes_labels)
    if not isinstance(rows, (list, tuple)) or len(rows) != len(box_rows):
        raise ValueError(f"input_boxes_labels: expected {len(box_rows)} rows (one per row of input_boxes), got "
                         f"{len(rows) if isinstance(rows, (list, tuple)) else type(rows).__name__}")
    out = []
    for i, (labels, boxes) in enumerate(zip(rows, box_rows)):
        labels = [] if labels is None else _as_list(labels)
        if not isinstance(labels, (list, tuple)) or not all(isinstance(v, numbers.Integral) for v in labels):
            raise ValueError(f"input_boxes_labels[{i}]: expected a list of integer labels, got {labels!r}")
        if len(labels) != len(boxes or []):
            raise ValueError(f"input_boxes_labels[{i}]: {len(labels)} labels for {len(boxes or [])} boxes in "
                             f"input_boxes[{i}]")
        out.append(check_label_list(f"input_boxes_labels[{i}]", labels))
    return out


def _boxes_to_tensors(box_rows, label_rows, original_sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad rows with -10, normalise real boxes by their image's (height, width), then xyxy -> cxcywh (HF order)."""
    num_rows, num_boxes = len(box_rows), max(len(row or []) for row in box_rows)
    boxes = torch.full((num_rows, num_boxes, 4), float(POINT_PAD_VALUE), dtype=torch.float32)
    labels = torch.full((num_rows, num_boxes), POINT_PAD_VALUE, dtype=torch.long)
    for i, (row, row_labels) in enumerate(zip(box_rows, label_rows)):
        if row:
            boxes[i, : len(row)] = torch.tensor(row, dtype=torch.float32)
            labels[i, : len(row)] = torch.tensor(row_labels, dtype=torch.long)
    sizes = original_sizes.detach().cpu()
    if len(sizes) == 1:
        sizes = sizes.expand(num_rows, 2)
    elif len(sizes) != num_rows:
        raise ValueError(f"input_boxes: got {num_rows} rows of boxes for {len(sizes)} images")
    height, width = sizes[:, 0].to(torch.float32), sizes[:, 1].to(torch.float32)
    scale = torch.stack([width, height, width, height], dim=-1)[:, None, :]
    real = (boxes != POINT_PAD_VALUE).all(dim=-1, keepdim=True)  # HF leaves padding un-normalised
    boxes = torch.where(real, boxes / scale, boxes)
    x0, y0, x1, y1 = boxes.unbind(-1)
    boxes = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)
    return boxes, labels


# ----------------------------------------------------------------------------------------------- other helpers
def _field(outputs, name: str, required: bool = True):
    value = outputs.get(name) if isinstance(outputs, dict) else getattr(outputs, name, None)
    if value is None and required:
        raise ValueError(f"outputs: missing {name}")
    return value


def _sizes_list(target_sizes, batch_size: int | None = None) -> list[tuple[int, int]] | None:
    if target_sizes is None:
        return None
    sizes = _as_list(target_sizes)
    if not isinstance(sizes, (list, tuple)) or not all(isinstance(s, (list, tuple)) and len(s) == 2 for s in sizes):
        raise ValueError("target_sizes: expected one (height, width) per image")
    if batch_size is not None and len(sizes) != batch_size:
        raise ValueError(f"target_sizes: got {len(sizes)} sizes for a batch of {batch_size} images")
    return check_sizes("target_sizes", sizes)


def _resolve_folder(path_or_hub_id, *, revision, cache_dir, local_files_only, token) -> Path:
    if os.path.isdir(path_or_hub_id):
        return Path(path_or_hub_id)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(path_or_hub_id), allow_patterns=_PROCESSOR_FILES, revision=revision,
                                      cache_dir=cache_dir, local_files_only=local_files_only, token=token))
    except Exception as err:  # hub errors are many types; say plainly what failed
        raise OSError(f"path_or_hub_id: {path_or_hub_id!r} is not a local folder and could not be fetched from the "
                      f"Hugging Face Hub ({type(err).__name__}: {err})") from err


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
