// Operator schemas of the native GRU (device-independent). The CPU kernels are registered behind
// the CPU dispatch key in gru_cpu.cpp; a CUDA implementation can register beside them behind the
// CUDA key without touching this file. Autograd for gru_layer is registered behind the Autograd
// key (gru_autograd.cpp), device independent.
#include <torch/library.h>

TORCH_LIBRARY(grutrain_native, m) {
  // One direction of one layer over a time-major sequence, for training: returns the output
  // [T, B, H], the last state [B, H] (its own tensor) and the workspace of gate values that
  // gru_layer_backward needs ([T, B, 4H] r|z|n|hn for reset="after", [T, B, 3H] r|z|n for
  // "before"). matmul_dtype=BFloat16 (float32 inputs only): matrix products take bfloat16
  // operands with float32 accumulation; state, gate arithmetic and sums stay float32, and where
  // the recurrent products are bfloat16 (H >= 64 by default) the workspace is bfloat16 too.
  m.def(
      "gru_layer(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "str reset=\"after\", ScalarType? matmul_dtype=None) -> (Tensor out, Tensor h_n, Tensor workspace)");
  // The same forward keeping nothing for backward (no-grad inference). No autograd formula.
  m.def(
      "gru_layer_inference(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "str reset=\"after\", ScalarType? matmul_dtype=None) -> (Tensor out, Tensor h_n)");
  // Backward through time. grad_out / grad_h_n may be None (zero). output_mask selects which of
  // (dx, dh0, dw_ih, dw_hh, db_ih, db_hh) are computed; the others are returned as None.
  m.def(
      "gru_layer_backward(Tensor? grad_out, Tensor? grad_h_n, Tensor x, Tensor h0, Tensor w_ih, "
      "Tensor w_hh, Tensor out, Tensor workspace, str reset=\"after\", ScalarType? matmul_dtype=None, "
      "bool[6] output_mask=[True, True, True, True, True, True]) -> "
      "(Tensor dx, Tensor dh0, Tensor dw_ih, Tensor dw_hh, Tensor db_ih, Tensor db_hh)");
  // One step (generation), no grad: x [B, I], h [B, H] -> h' [B, H].
  m.def(
      "gru_cell(Tensor x, Tensor h, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "str reset=\"after\") -> Tensor");
  // Generation's whole step for a unidirectional stack (no grad): x int64 ids [B] with embedding
  // [V, E] (else features [B, I]), h [L, B, H], weights w_ih, w_hh, b_ih, b_hh per layer ->
  // (head_w h' + head_b [B, O], or the last layer's h' [B, H] without head_w; h_n [L, B, H]).
  m.def(
      "gru_stack_step(Tensor x, Tensor h, Tensor?[] weights, Tensor? embedding=None, Tensor? head_w=None, "
      "Tensor? head_b=None, str reset=\"after\") -> (Tensor out, Tensor h_n)");
}
