#pragma once
// What every CPU launcher repeats, in one place: splitting a (rows, length) layout into pieces
// of one row for at::parallel_for, so an op's .cpp file is its math and its indexing. Empty
// inputs run nothing.

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace fastar {
namespace cpu {

// Calls fn(row, col, len) for the row segments of the flat range [0, rows * L) of a row-major
// (rows, L) matrix, in parallel tasks of about `grain` elements.
template <typename Fn>
void parallel_for_row_segments(int64_t rows, int64_t L, int64_t grain, const Fn& fn) {
  at::parallel_for(0, rows * L, grain, [&](int64_t begin, int64_t end) {
    int64_t row = begin / L, col = begin % L;
    while (begin < end) {
      const int64_t len = std::min(L - col, end - begin);
      fn(row, col, len);
      begin += len;
      ++row;
      col = 0;
    }
  });
}

// Calls fn(state, row, s0, len) for every block [s0, s0 + len) of at most `block` consecutive
// positions of one row of a (rows, S) layout, in parallel over blocks. Each task makes its
// own state (scratch buffers) once with make_state().
template <typename MakeState, typename Fn>
void parallel_for_row_blocks(int64_t rows, int64_t S, int64_t block, const MakeState& make_state,
                             const Fn& fn) {
  if (rows == 0 || S == 0) return;
  const int64_t per_row = (S + block - 1) / block;
  at::parallel_for(0, rows * per_row, 1, [&](int64_t begin, int64_t end) {
    auto state = make_state();
    for (int64_t i = begin; i < end; ++i) {
      const int64_t row = i / per_row, s0 = (i % per_row) * block;
      fn(state, row, s0, std::min(block, S - s0));
    }
  });
}

}  // namespace cpu
}  // namespace fastar
