#pragma once
// Outputs of the CPU kernels. A large fresh tensor is backed by memory that the OS maps on first
// touch, one 4 KiB page fault at a time, which can be slower than the kernels that fill it.
// Asking for transparent huge pages before the first touch (Linux's THP "madvise"
// mode, the default of many distributions) makes that one fault per 2 MiB. torch does the same
// for every allocation when THP_MEM_ALLOC_ENABLE=1 is set; this asks only for our outputs.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cstdint>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace fastar {

inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
  if (t.nbytes() < 4 * kHugePage) return;  // small tensors come from reused heap memory
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (begin + t.nbytes()) & ~(kHugePage - 1);
  if (end > first) madvise(reinterpret_cast<void*>(first), end - first, MADV_HUGEPAGE);  // a hint
#endif
}

inline at::Tensor empty_output(at::IntArrayRef shape, const at::TensorOptions& options) {
  at::Tensor t = at::empty(shape, options);
  advise_huge_pages(t);
  return t;
}

}  // namespace fastar
