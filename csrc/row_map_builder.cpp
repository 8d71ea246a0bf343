#include "row_map_builder.h"

#include <ATen/ATen.h>

namespace torch_manualbp {
namespace {

// Leading dims of an expanded view with size-1 dims dropped and mergeable neighbours merged.
bool coalesce_leading(const at::Tensor& expanded, cpu::RowMap& map) {
  const int64_t lead = expanded.dim() - 1;
  int64_t sizes[64];
  int64_t strides[64];
  int64_t n = 0;
  for (int64_t d = 0; d < lead; ++d) {
    const int64_t size = expanded.size(d);
    const int64_t stride = expanded.stride(d);
    if (size == 1) continue;
    if (n > 0 && strides[n - 1] == stride * size) {
      sizes[n - 1] *= size;
      strides[n - 1] = stride;
      continue;
    }
    if (n == 64) return false;
    sizes[n] = size;
    strides[n] = stride;
    ++n;
  }
  if (n > cpu::RowMap::kMaxDims) return false;
  map.ndim = n;
  for (int64_t d = 0; d < n; ++d) {
    map.sizes[d] = sizes[d];
    map.strides[d] = strides[d];
  }
  return true;
}

}  // namespace

cpu::RowMap make_row_map(const at::Tensor& t, at::IntArrayRef shape, at::Tensor& keep_alive) {
  cpu::RowMap map;
  at::Tensor expanded = t.expand(shape);
  const int64_t last_stride = shape.empty() ? 1 : expanded.stride(-1);
  const bool readable = shape.empty() || shape.back() <= 1 || last_stride == 0 || last_stride == 1;
  if (!readable || !coalesce_leading(expanded, map)) {
    keep_alive = t.contiguous();
    expanded = keep_alive.expand(shape);
    if (!coalesce_leading(expanded, map)) {
      keep_alive = expanded.contiguous();
      expanded = keep_alive;
      coalesce_leading(expanded, map);
    }
  } else {
    keep_alive = t;
  }
  map.data = expanded.data_ptr();
  map.col_stride = (shape.empty() || shape.back() <= 1) ? 1 : expanded.stride(-1);
  return map;
}

}  // namespace torch_manualbp
