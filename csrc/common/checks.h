#pragma once
// Input validation shared by every op's entry points (host only). Messages follow one form:
// "fastar::<op>: expected <what>, but got <what came>".

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

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

}  // namespace fastar
