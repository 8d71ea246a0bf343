// Large CPU outputs allocated so that they fault in transparent huge pages where the OS allows it.
//
// A fresh gradient of the logits' size (hundreds of MiB) costs as much in page faults as in arithmetic when
// it is faulted in 4 KiB at a time: one fault per page, each zeroing the page. With the kernel's THP mode
// "madvise" (the common default) only memory that asked for huge pages with madvise(MADV_HUGEPAGE) gets
// them; PyTorch asks for its own allocations only when THP_MEM_ALLOC_ENABLE=1 is set. The kernels' large
// outputs ask for themselves, whatever that setting, so that their cost does not depend on it.
#pragma once

#include <ATen/core/Tensor.h>

namespace torch_manualbp {

// at::empty(sizes, options), with madvise(MADV_HUGEPAGE) on the huge-page-aligned part of its storage for a
// CPU tensor of at least 2 MiB (a no-op elsewhere, and where madvise is unavailable or refused).
at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace torch_manualbp
