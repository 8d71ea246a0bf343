#include "huge_pages.h"

#include <ATen/ATen.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace torch_manualbp {

at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
  const uintptr_t bytes = static_cast<uintptr_t>(out.nbytes());
  if (out.is_cpu() && bytes >= kHugePage) {
    const uintptr_t begin = reinterpret_cast<uintptr_t>(out.data_ptr());
    const uintptr_t aligned_begin = (begin + kHugePage - 1) & ~(kHugePage - 1);
    const uintptr_t aligned_end = (begin + bytes) & ~(kHugePage - 1);
    if (aligned_end > aligned_begin) {
      // Advice only: a refusal (no THP in this kernel) leaves ordinary pages, which are just as correct.
      (void)madvise(reinterpret_cast<void*>(aligned_begin), aligned_end - aligned_begin, MADV_HUGEPAGE);
    }
  }
#endif
  return out;
}

}  // namespace torch_manualbp
