// Builds a cpu::RowMap from a tensor and the shape it is broadcast to.
#pragma once

#include <ATen/core/Tensor.h>

#include "cpu/row_map.h"

namespace torch_manualbp {

// `t` expanded to `shape` (whose last dim is the row length) as a RowMap. `keep_alive` receives the
// tensor the map points into: `t` itself, or a contiguous copy when its strides cannot be read in place.
cpu::RowMap make_row_map(const at::Tensor& t, at::IntArrayRef shape, at::Tensor& keep_alive);

}  // namespace torch_manualbp
