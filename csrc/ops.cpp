// Every fastar op schema, in one place. Kernels register per device in cpu/ and cuda/;
// fake (meta) kernels and autograd are registered from Python, one module per op family
// (fastar/ops/<family>.py).

#include <torch/library.h>

TORCH_LIBRARY(fastar, m) {
  // tanh(a) * sigmoid(b) with (a, b) the channel halves of x + cond.
  // x: (N, 2C, *); cond: broadcastable to x, or None. Returns (N, C, *).
  m.def("gated_activation(Tensor x, Tensor? cond=None) -> Tensor");
  // Gradient with respect to z = x + cond, shape (N, 2C, *) (cond's gradient is its sum-to-size).
  m.def("gated_activation_backward(Tensor grad_out, Tensor x, Tensor? cond=None) -> Tensor");

  // log P(x) under PixelCNN++'s discretized logistic mixture. x: integer (B, C, *S), C in {1, 3};
  // params: (B, P, *S), P = 3K (C = 1) or 10K (C = 3). Returns (B, *S).
  m.def("dmol_log_prob(Tensor x, Tensor params, int num_bins=256) -> Tensor");
  // Gradient of grad_out * log P with respect to params, (B, P, *S). It recomputes log P in
  // float32 rather than taking the forward's output, which may be rounded to float16/bfloat16.
  m.def("dmol_log_prob_backward(Tensor grad_out, Tensor x, Tensor params, int num_bins) -> Tensor");
  // log_prob and, per position, its gradient with respect to that position's params, in one
  // pass: ((B, *S), (B, P, *S)). CPU only: where the math is compute-bound, training evaluates
  // each term once instead of once in the forward and again in the backward.
  m.def("dmol_log_prob_with_grad(Tensor x, Tensor params, int num_bins=256) -> (Tensor, Tensor)");
}
