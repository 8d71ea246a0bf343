#include "cpu/dispatch.h"

#include <ATen/Version.h>

#include <string>

namespace torch_manualbp::cpu {
namespace {

SimdLevel level_from_aten() {
  const std::string capability = at::get_cpu_capability();
  if (capability.rfind("AVX512", 0) == 0) return SimdLevel::AVX512;
  if (capability.rfind("AVX2", 0) == 0) return SimdLevel::AVX2;
  return SimdLevel::DEFAULT;
}

SimdLevel highest_compiled(SimdLevel wanted) {
#if !defined(TORCH_MANUALBP_HAVE_AVX512)
  if (wanted == SimdLevel::AVX512) wanted = SimdLevel::AVX2;
#endif
#if !defined(TORCH_MANUALBP_HAVE_AVX2)
  if (wanted == SimdLevel::AVX2) wanted = SimdLevel::DEFAULT;
#endif
  return wanted;
}

}  // namespace

SimdLevel simd_level() {
  static const SimdLevel level = highest_compiled(level_from_aten());
  return level;
}

const char* simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::AVX512:
      return "AVX512";
    case SimdLevel::AVX2:
      return "AVX2";
    default:
      return "DEFAULT";
  }
}

}  // namespace torch_manualbp::cpu
