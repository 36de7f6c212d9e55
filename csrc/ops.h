// The one list of the extension's ops: name and schema (the arguments of the public sam3lt.ops function).
// ops.cpp (torch.ops.sam3lt_C.*: CUDA and Meta) and emu/emu_ops.cpp (torch.ops.sam3lt_emu.*: the CPU
// emulation used by the tests) both register from it. Each op NAME has, in its family's header,
// host::NAME(cudaStream_t, args...) (checks, parameters, launch) and host::NAME_meta(args...) (shape only).
#pragma once

#include <utility>

#include "cross_attention.h"
#include "repmixer.h"
#include "upsample.h"
#include "window_attention.h"

#define SAM3LT_OPS(X)                                                                                         \
  X(repmixer_dwconv, "(Tensor x, Tensor weight, Tensor bias, bool residual) -> Tensor")                     \
  X(window_attention, "(Tensor qkv, Tensor cos, Tensor sin, int num_heads, int window_size, Tensor? pad_value) -> Tensor") \
  X(box_bias_attention, "(Tensor q, Tensor k, Tensor v, Tensor bias_y, Tensor bias_x) -> Tensor")            \
  X(masked_attention, "(Tensor q, Tensor k, Tensor v, Tensor? key_padding_mask) -> Tensor")                 \
  X(upsample_nearest_add, "(Tensor x, Tensor skip) -> Tensor")                                             \
  X(masks_to_binary, "(Tensor mask_logits, int[] size, float threshold) -> Tensor")

namespace sam3lt {

// The first argument of every op is a tensor: it names the device (and so the stream) of the call.
template <typename... Rest>
const at::Tensor& first_tensor(const at::Tensor& t, const Rest&...) {
  return t;
}

// Bind<&host::NAME, Policy>::call(args...) is the operator implementation of NAME: it calls
// host::NAME(stream, args...) through Policy::run(fn, first tensor), where the policy supplies the stream
// (the current CUDA stream in ops.cpp; none, with guard-byte checks, in the emulation).
template <auto F, typename Policy>
struct Bind;
template <typename... A, at::Tensor (*F)(cudaStream_t, A...), typename Policy>
struct Bind<F, Policy> {
  static at::Tensor call(A... a) {
    return Policy::run([&](cudaStream_t stream) { return F(stream, a...); }, first_tensor(a...));
  }
};

}  // namespace sam3lt
