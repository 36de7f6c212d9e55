"""The eager backend: the references themselves. It takes every input."""
from ._backend import register
from .attention import window_attention_reference
from .box_bias import box_bias_reference
from .box_refine import box_refine_reference
from .cross_attention import box_bias_attention_reference, masked_attention_reference
from .linear import linear_reference
from .norm import add_layer_norm_reference
from .repmixer import repmixer_block_dwconv_reference, repmixer_dwconv_reference
from .upsample import mask_product_reference, masks_to_binary_reference, upsample_nearest_add_reference

register("repmixer_dwconv", "eager", repmixer_dwconv_reference)
register("repmixer_block_dwconv", "eager", repmixer_block_dwconv_reference)
register("window_attention", "eager", window_attention_reference)
register("box_bias_attention", "eager", box_bias_attention_reference)
register("masked_attention", "eager", masked_attention_reference)
register("upsample_nearest_add", "eager", upsample_nearest_add_reference)
register("mask_product", "eager", mask_product_reference)
register("masks_to_binary", "eager", masks_to_binary_reference)
register("add_layer_norm", "eager", add_layer_norm_reference)
register("linear", "eager", linear_reference)
register("box_bias", "eager", box_bias_reference)
register("box_refine", "eager", box_refine_reference)
