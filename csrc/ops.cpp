// Every fastar op schema, in one place. Kernels register per device in cpu/ and cuda/;
// fake (meta) kernels and autograd are registered from Python (fastar/_registrations.py).

#include <torch/library.h>

TORCH_LIBRARY(fastar, m) {
  // tanh(a) * sigmoid(b) with (a, b) the channel halves of x + cond.
  // x: (N, 2C, *); cond: broadcastable to x, or None. Returns (N, C, *).
  m.def("gated_activation(Tensor x, Tensor? cond=None) -> Tensor");
  // Gradient with respect to z = x + cond, shape (N, 2C, *) (cond's gradient is its sum-to-size).
  m.def("gated_activation_backward(Tensor grad_out, Tensor x, Tensor? cond=None) -> Tensor");
}
