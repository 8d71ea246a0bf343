// Run-time choice of the SIMD level of the CPU kernels.
//
// Each csrc/cpu/*_kernel.cpp is compiled once per SIMD level (setup.py: DEFAULT, AVX2, AVX512 on x86-64)
// with CPU_CAPABILITY defined to the level's name, exactly as ATen compiles its own kernels, so that
// at::vec::Vectorized<T> is real SIMD code in the AVX2/AVX512 objects and a scalar loop in DEFAULT.
// Every object defines its kernel table in namespace torch_manualbp::cpu::<LEVEL>; the base code asks
// for a table here and gets the one of the level ATen itself runs at (at::get_cpu_capability(), which
// honours ATEN_CPU_CAPABILITY=default|avx2|avx512), capped by the levels this build compiled.
#pragma once

namespace torch_manualbp::cpu {

enum class SimdLevel { DEFAULT = 0, AVX2 = 1, AVX512 = 2 };

// The level whose kernels run in this process (chosen once, at first use).
SimdLevel simd_level();
const char* simd_level_name(SimdLevel level);

// Picks from the per-level tables the one for simd_level(); a level this build lacks is nullptr.
template <typename Table>
const Table& select_kernels(const Table* default_table, const Table* avx2_table, const Table* avx512_table) {
  const Table* by_level[] = {default_table, avx2_table, avx512_table};
  for (int level = static_cast<int>(simd_level()); level > 0; --level) {
    if (by_level[level] != nullptr) return *by_level[level];
  }
  return *default_table;
}

}  // namespace torch_manualbp::cpu

// Declares the per-level tables `name` of type `Type`, and `name##_for_this_cpu()` choosing among them.
#define TORCH_MANUALBP_DECLARE_KERNEL_TABLE(Type, name)       \
  namespace DEFAULT {                                         \
  extern const Type name;                                     \
  }                                                           \
  namespace AVX2 {                                            \
  extern const Type name;                                     \
  }                                                           \
  namespace AVX512 {                                          \
  extern const Type name;                                     \
  }                                                           \
  const Type& name##_for_this_cpu();

#if defined(TORCH_MANUALBP_HAVE_AVX2)
#define TORCH_MANUALBP_IF_AVX2(x) (x)
#else
#define TORCH_MANUALBP_IF_AVX2(x) nullptr
#endif
#if defined(TORCH_MANUALBP_HAVE_AVX512)
#define TORCH_MANUALBP_IF_AVX512(x) (x)
#else
#define TORCH_MANUALBP_IF_AVX512(x) nullptr
#endif

// Defines `name##_for_this_cpu()` (in exactly one base .cpp per table).
#define TORCH_MANUALBP_DEFINE_KERNEL_TABLE(Type, name)                                                      \
  const Type& name##_for_this_cpu() {                                                                      \
    static const Type& chosen =                                                                            \
        select_kernels<Type>(&DEFAULT::name, TORCH_MANUALBP_IF_AVX2(&AVX2::name), TORCH_MANUALBP_IF_AVX512(&AVX512::name)); \
    return chosen;                                                                                         \
  }
