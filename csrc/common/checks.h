#pragma once
// Input validation shared by every op's entry points (host only). Messages follow one form:
// "fastar::<op>: expected <what>, but got <what came>".

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>
#include <utility>
#include <vector>

namespace fastar {

// "float32", "int64", ...: the names users see in Python.
inline std::string dtype_name(c10::ScalarType t) {
  return std::string(c10::getDtypeNames(t).first);
}

inline void check_floating(const char* op, const char* arg, const at::Tensor& t) {
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16,
              "fastar::", op, ": expected ", arg,
              " to be a float32, float64, float16 or bfloat16 tensor, but got ", dtype_name(s));
}

inline void check_same_device_dtype(const char* op, const char* arg, const at::Tensor& t,
                                    const at::Tensor& like) {
  TORCH_CHECK(t.device() == like.device(), "fastar::", op, ": expected ", arg,
              " on the same device as x (", like.device(), "), but got ", t.device());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "fastar::", op, ": expected ", arg,
              " to have x's dtype (", dtype_name(like.scalar_type()), "), but got ",
              dtype_name(t.scalar_type()));
}

// What an op writes (`written`: name and tensor) shares no memory with what else it writes or
// with anything it reads (`inputs`). at::assert_no_overlap names the overlaps it can prove and
// gives up on views it cannot reason about (non-contiguous ones); sharing a storage at all is
// refused after it, so such a view cannot slip through.
inline void check_written_apart(const char* op,
                                const std::vector<std::pair<const char*, at::Tensor>>& written,
                                const std::vector<at::Tensor>& inputs) {
  for (size_t i = 0; i < written.size(); ++i) {
    const auto& [name, w] = written[i];
    at::assert_no_internal_overlap(w);
    for (size_t j = i + 1; j < written.size(); ++j) {
      at::assert_no_overlap(w, written[j].second);
      TORCH_CHECK(!w.is_alias_of(written[j].second), "fastar::", op, ": expected ", name,
                  " and ", written[j].first, " in separate memory, but they share a storage");
    }
    for (const at::Tensor& t : inputs) {
      at::assert_no_overlap(w, t);
      TORCH_CHECK(!w.is_alias_of(t), "fastar::", op, ": expected ", name,
                  " (written) to share no memory with an input, but an input is a view of it");
    }
  }
}

}  // namespace fastar
