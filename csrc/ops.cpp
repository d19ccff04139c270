// Every fastar op schema, in one place. Kernels register per device in cpu/ and cuda/;
// fake (meta) kernels and autograd are registered from Python, one module per op family
// (fastar/ops/<family>.py).

#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

TORCH_LIBRARY(fastar, m) {
  // tanh(a) * sigmoid(b) with (a, b) the channel halves of x + cond.
  // x: (N, 2C, *); cond: broadcastable to x, or None. Returns (N, C, *).
  m.def("gated_activation(Tensor x, Tensor? cond=None) -> Tensor");
  // Gradient with respect to z = x + cond, shape (N, 2C, *) (cond's gradient is its sum-to-size).
  m.def("gated_activation_backward(Tensor grad_out, Tensor x, Tensor? cond=None) -> Tensor");

  // log P(x) under PixelCNN++'s discretized logistic mixture. x: integer (B, C, *S), C in {1, 3};
  // params: (B, P, *S), P = 3K (C = 1) or 10K (C = 3). Returns (B, *S).
  m.def("dmol_log_prob(Tensor x, Tensor params, int num_bins=256, bool check_values=True) -> Tensor");
  // Gradient of grad_out * log P with respect to params, (B, P, *S). It recomputes log P in
  // float32 rather than taking the forward's output, which may be rounded to float16/bfloat16.
  m.def("dmol_log_prob_backward(Tensor grad_out, Tensor x, Tensor params, int num_bins) -> Tensor");
  // log_prob and, per position, its gradient with respect to that position's params, in one
  // pass: ((B, *S), (B, P, *S)). CPU only: where the math is compute-bound, training evaluates
  // each term once instead of once in the forward and again in the backward.
  m.def("dmol_log_prob_with_grad(Tensor x, Tensor params, int num_bins=256, "
        "bool check_values=True) -> (Tensor, Tensor)");

  // x (B, in) times (weight * mask)^T plus bias, for a staircase mask described by blocks:
  // triples (row_end, dense_end, end) of consecutive row blocks from row 0, the mask one in
  // columns [0, dense_end) and zero from end on (MADE's masks with sorted hidden units).
  m.def("masked_linear(Tensor x, Tensor weight, Tensor mask, Tensor? bias, int[] blocks) -> Tensor");
  // (grad_x, grad_weight (zero where the mask is zero), grad_bias) of masked_linear.
  m.def("masked_linear_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor mask, "
        "int[] blocks) -> (Tensor, Tensor, Tensor)");

  // relu(x) weight^T + bias for x (M, in), weight (out, in): a 1x1 convolution of channels-last
  // pixels that begins with a ReLU (PixelCNN's blocks and heads), without writing relu(x).
  m.def("relu_linear(Tensor x, Tensor weight, Tensor? bias=None) -> Tensor");
  // (grad_x, grad_weight, grad_bias) of relu_linear; output_mask says which to compute (the
  // others come back undefined, None in Python).
  m.def("relu_linear_backward(Tensor grad_out, Tensor x, Tensor weight, bool[3] output_mask) "
        "-> (Tensor, Tensor, Tensor)");

  // WaveNet's cached generation loop: steps t = start .. end - 1 of the sequences x (B, T) in one
  // call, each step reading the ring buffers (B, sum of dilation * (k - 1), R) of the block
  // inputs it needs and pushing its own (times before 0 are silence, never read from them), so a
  // call continues where the last one stopped. Positions t < num_given keep x's value; the
  // others are drawn by inverse CDF from u[:, t] (float64, as fastar.sampling.categorical).
  // Returns log p(x_t | x_<t) for start <= t < end, (B, end - start). weights: the packed
  // weights in the order and layout of csrc/common/wavenet.h (enum Weight); num_mixtures = 0:
  // softmax head, otherwise a one-channel discretized logistic mixture of that many components.
  m.def(
      "wavenet_generate(Tensor(a!) x, Tensor(b!) buffers, Tensor u, int start, int end, "
      "int num_given, Tensor[] weights, int[] dilations, int num_mixtures=0, "
      "Tensor? global_bias=None, Tensor? local=None, Tensor? local_weight=None) -> Tensor");

  // Gated PixelCNN's cached generation loop: positions start .. end - 1 of the images x
  // (B, C, H, W) in raster order, channels last, in one call, each layer's caches in state
  // (B, state size), cleared at start = 0, so a call continues where the last one stopped
  // (fastar.ops.gated_pixelcnn.state_size). Positions < num_given keep x's value; the
  // others are drawn by inverse CDF from u[:, position] (float64, (B, C * H * W)). Returns log p
  // of those values, (B, end - start). weights: per layer v_w, v_b, link_w, link_b, h_w, h_b,
  // out_w, out_b, then head_w1, head_b1, head_w2, head_b2 (fastar/ops/gated_pixelcnn.py packs
  // them); layer_args: (kernel_size, residual) per layer; cond_bias (B, layers, 2, 2 channels):
  // the condition's vertical and horizontal gate biases, or None.
  m.def(
      "gated_pixelcnn_generate(Tensor(a!) x, Tensor(b!) state, Tensor u, int start, int end, "
      "int num_given, "
      "Tensor[] weights, int[] layer_args, int num_values, Tensor? cond_bias=None) -> Tensor");

  // PixelCNN's cached generation loop, with the same contract as gated_pixelcnn_generate's
  // (x, state, u, start, end, num_given, the returned log p). weights: the first masked
  // convolution and its bias, per residual block its 1x1 in, masked convolution and 1x1 out
  // with their biases, then the head's two 1x1 layers (fastar/ops/pixelcnn.py packs them);
  // kernel_sizes: the first convolution's, then each block's.
  m.def(
      "pixelcnn_generate(Tensor(a!) x, Tensor(b!) state, Tensor u, int start, int end, "
      "int num_given, Tensor[] weights, int[] kernel_sizes, int num_values) -> Tensor");

  // The Row LSTM's recurrence (PixelRNN, section 3.1): from its input-to-state gates x
  // (B, 4h, H, W), row by row, z_i = x_i + bias + conv1d(h_{i-1}, weight) (weight (4h, h, k);
  // tap t at column j reads column j + t - left, zeros outside: left = k / 2 centres an odd
  // kernel, left = k - 1 reads only columns <= j, as the Diagonal BiLSTM's skewed columns do),
  // then the LSTM cell (csrc/common/lstm.h, gates laid out by colour group: groups 1 or 3).
  // Returns h, c (B, h, H, W), the gates' pre-activations z (B, 4h, H, W) and the states
  // h again in the working layout (H, W + k - 1, B, h: zero columns around, `left` before;
  // common/row_lstm_loop.h), which the backward reads; only h is differentiable
  // (fastar/ops/row_lstm.py). h is a tensor of its own: the caller may write it in place.
  m.def(
      "row_lstm(Tensor x, Tensor weight, Tensor bias, int groups, int left) -> "
      "(Tensor, Tensor, Tensor, Tensor)");
  // (grad_x, grad_weight, grad_bias) of row_lstm from the gradient of h and its outputs c, z
  // and states.
  m.def(
      "row_lstm_backward(Tensor grad_h, Tensor c, Tensor z, Tensor states, Tensor weight, "
      "int groups, int left) -> (Tensor, Tensor, Tensor)");
}

// Ops with no derivative: the generation loops draw integers, and dmol_log_prob_with_grad
// returns a gradient (dmol_log_prob's autograd uses it). Their Autograd kernel makes a backward
// pass through them raise, naming the op (the default fallback only warned, and let the pass
// run with no gradient for what came in).
TORCH_LIBRARY_IMPL(fastar, Autograd, m) {
  for (const char* op : {"wavenet_generate", "gated_pixelcnn_generate", "pixelcnn_generate",
                         "dmol_log_prob_with_grad"})
    m.impl(op, torch::autograd::autogradNotImplementedFallback());
}
