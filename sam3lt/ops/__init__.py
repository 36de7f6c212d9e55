"""The op families behind the model, each with an eager reference (the spec) and faster backends.

One module per family (``sam3lt/ops/<family>.py``, with ``kernels/<family>.py``, ``csrc/<family>.cu`` and
``csrc/cpu/<kernel>.cpp`` where it has them): the public functions, their argument checks, the eager references and the registration of the
backends. The model calls only these functions; backend choice lives in :mod:`sam3lt.ops._backend`.
"""
from ._backend import (BACKENDS, BackendUnavailable, explain, get_backend, register, select, set_backend,
                       set_missing_check, use_backend)
from ._tuning import autotune, clear_tuning, tuned_choices
from .box_bias import box_bias, box_bias_reference
from .box_refine import box_refine, box_refine_reference
from .conv import (conv1x1, conv1x1_reference, conv3x3, conv3x3_reference, conv_patch, conv_patch_reference,
                   conv_transpose2x2, conv_transpose2x2_reference)
from .cross_attention import (box_bias_attention, box_bias_attention_reference, masked_attention,
                              masked_attention_reference)
from .layer_norm import add_layer_norm, add_layer_norm_module, add_layer_norm_reference
from .linear import linear, linear_reference
from .repmixer import (repmixer_block_dwconv, repmixer_block_dwconv_reference, repmixer_dwconv,
                       repmixer_dwconv_reference)
from .rope import rope_qkv, rope_qkv_reference
from .upsample import (mask_product, mask_product_reference, masks_to_binary, masks_to_binary_reference,
                       upsample_nearest_add, upsample_nearest_add_reference)
from .window_attention import apply_rope, rotate_pairwise, window_attention, window_attention_reference

__all__ = [
    "autotune", "clear_tuning", "tuned_choices",
    "BACKENDS", "BackendUnavailable", "explain", "set_missing_check", "get_backend", "register", "select", "set_backend", "use_backend",
    "apply_rope", "rotate_pairwise", "window_attention", "window_attention_reference",
    "box_bias_attention", "box_bias_attention_reference", "masked_attention", "masked_attention_reference",
    "repmixer_dwconv", "repmixer_dwconv_reference", "repmixer_block_dwconv", "repmixer_block_dwconv_reference",
    "mask_product", "mask_product_reference", "masks_to_binary", "masks_to_binary_reference",
    "upsample_nearest_add", "upsample_nearest_add_reference",
    "add_layer_norm", "add_layer_norm_module", "add_layer_norm_reference",
    "linear", "linear_reference",
    "box_bias", "box_bias_reference",
    "box_refine", "box_refine_reference",
    "conv1x1", "conv1x1_reference", "conv3x3", "conv3x3_reference", "conv_patch", "conv_patch_reference",
    "conv_transpose2x2", "conv_transpose2x2_reference",
    "rope_qkv", "rope_qkv_reference",
]
