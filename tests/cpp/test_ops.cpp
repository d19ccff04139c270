// Calls fastar's ops from C++ through the torch dispatcher, as a libtorch user would, and
// checks their values against ATen compositions. Run by ctest.

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <optional>

namespace {

int failures = 0;

void expect_close(const at::Tensor& actual, const at::Tensor& expected, const char* what) {
  if (!at::allclose(actual, expected, 1e-12, 1e-14)) {
    std::fprintf(stderr, "FAIL %s: max abs difference %g\n", what,
                 (actual - expected).abs().max().item<double>());
    ++failures;
  } else {
    std::printf("ok   %s\n", what);
  }
}

void test_gated_activation() {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("fastar::gated_activation", "")
                .typed<at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&)>();
  const auto x = at::randn({3, 8, 5, 7}, at::kDouble);
  const auto cond = at::randn({3, 8, 1, 1}, at::kDouble);
  const auto z = x + cond;
  const auto expected = at::tanh(z.narrow(1, 0, 4)) * at::sigmoid(z.narrow(1, 4, 4));
  expect_close(op.call(x, cond), expected, "gated_activation with cond");
  expect_close(op.call(x, std::nullopt),
               at::tanh(x.narrow(1, 0, 4)) * at::sigmoid(x.narrow(1, 4, 4)),
               "gated_activation without cond");
  bool raised = false;
  try {
    op.call(at::randn({3, 7, 5}, at::kDouble), std::nullopt);
  } catch (const c10::Error&) {
    raised = true;
  }
  if (!raised) {
    std::fprintf(stderr, "FAIL gated_activation accepted an odd channel count\n");
    ++failures;
  }
}

}  // namespace

int main() {
  at::manual_seed(0);
  test_gated_activation();
  return failures == 0 ? 0 : 1;
}
