// What a backward op returns for an output its output_mask does not ask for.
#pragma once

#include <ATen/ATen.h>

namespace torch_manualbp {

// An empty tensor of its own, never shared: the outputs of an op must not alias one another (opcheck).
inline at::Tensor unrequested_output(const at::Tensor& like) {
  return at::empty({0}, like.options());
}

}  // namespace torch_manualbp
