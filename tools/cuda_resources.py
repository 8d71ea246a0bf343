"""Registers, stack and shared memory of every CUDA kernel, read with cuobjdump, checked against the
kernel's __launch_bounds__.

A kernel launched with more threads than its registers allow fails at run time with "too many resources
requested for launch", and only on a GPU. Its register count depends on the build: the debug build
(TORCH_MANUALBP_DEBUG=1: nvcc -O0 -g -G) uses far more registers than the release build. So this reads

  * release: the kernels inside the installed extension (torch_manualbp/_C*.so), as built;
  * debug:   the same .cu files compiled to device code only (nvcc -cubin, no host compilation, no link:
             about half a minute per file) with the debug flags setup.py records in the build config;

and fails unless every kernel carries a __launch_bounds__ (EIATTR_MAX_THREADS in the cubin) whose block
fits in the register file with the kernel's register count, and its static shared memory fits 48 KiB.
The launches themselves never exceed the bound: each kernel's bound is the constant its launch uses
(see csrc/cuda/*.cu).

    python tools/cuda_resources.py                 # with the Python of a CUDA build (make cuda-resources)
    python tools/cuda_resources.py --no-debug      # the release numbers only (no compilation)
    python tools/cuda_resources.py --source DIR    # both builds compiled from another checkout's csrc/
                                                   # (e.g. `git worktree add DIR main`: before and after)
"""
import argparse
import concurrent.futures
import glob
import importlib.util
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGISTERS_PER_BLOCK = 65536  # every architecture from sm_50 to sm_120
REGISTER_GRANULE = 8  # registers are allocated per thread in multiples of 8 (256 per warp)
MAX_STATIC_SHARED = 48 * 1024


def find_cuobjdump(cuda_home):
    """The toolkit's cuobjdump; a pip-installed toolkit has none, and then the copy that triton (a
    dependency of every CUDA build of torch) ships."""
    candidates = [os.path.join(cuda_home, "bin", "cuobjdump")] if cuda_home else []
    candidates.append(shutil.which("cuobjdump"))
    triton = importlib.util.find_spec("triton")
    if triton is not None and triton.submodule_search_locations:
        candidates.append(os.path.join(triton.submodule_search_locations[0], "backends", "nvidia", "bin", "cuobjdump"))
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    sys.exit("cuda_resources: no cuobjdump found (looked in the toolkit, on PATH and in triton's bundle)")


def run(command):
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"cuda_resources: {' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def demangle(names):
    cxxfilt = shutil.which("c++filt")
    if cxxfilt is None or not names:
        return {name: name for name in names}
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {name: name for name in names}


def short_name(demangled):
    """`void ns::(anonymous namespace)::kernel<float, true, (Group)1>(args)` -> `kernel<float, true, 1>`."""
    name = demangled.replace("(anonymous namespace)::", "").replace("torch_manualbp::", "")
    name = re.sub(r"^void ", "", name)
    depth, cut = 0, len(name)
    for i, ch in enumerate(name):  # drop the argument list: the first '(' outside template brackets
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            cut = i
            break
    name = name[:cut]
    name = re.sub(r"\([A-Za-z_:]+\)(\d+)", r"\1", name)  # (Group)1 -> 1
    return name.replace("c10::", "").replace("(", "").replace(")", "")


def resource_usage(cuobjdump, cubin):
    """{mangled kernel: {REG, STACK, SHARED, LOCAL}} of a cubin's kernels (the functions with a parameter
    bank; device functions, listed apart in a debug build, have none)."""
    usage = {}
    text = run([cuobjdump, "--dump-resource-usage", cubin])
    for name, fields in re.findall(r"^\s*Function ([^\s:]+):\s*\n\s*(REG:.*)$", text, flags=re.MULTILINE):
        values = dict(re.findall(r"([A-Z]+(?:\[\d+\])?):(\d+)", fields))
        if "CONSTANT[0]" in values:
            usage[name] = {key: int(values.get(key, 0)) for key in ("REG", "STACK", "SHARED", "LOCAL")}
    return usage


EIATTR_MAX_THREADS = 0x05  # the .maxntid of a __launch_bounds__: three uint32 (x, y, z)
EIFMT_SVAL = 0x04  # a record with a uint16 size and that many bytes; every other format: a uint16 value


def launch_bounds(cubin):
    """{mangled kernel: threads per block its __launch_bounds__ allows}, read from the cubin's ELF: each
    kernel's .nv.info.<name> section is a list of (format, attribute, value) records. (cuobjdump -elf
    prints them too, but stops on the debug sections of a -G cubin.)"""
    with open(cubin, "rb") as f:
        data = f.read()
    assert data[:4] == b"\x7fELF" and data[4] == 2, f"{cubin}: not a 64-bit ELF file"
    section_offset = struct.unpack_from("<Q", data, 0x28)[0]
    entry_size, count, names_index = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", data, section_offset + i * entry_size) for i in range(count)]
    names_at = sections[names_index][4]

    def name(offset):
        end = data.index(b"\0", names_at + offset)
        return data[names_at + offset:end].decode()

    bounds = {}
    for name_offset, _, _, _, offset, size in sections:
        section = name(name_offset)
        if not section.startswith(".nv.info."):
            continue
        at = offset
        while at + 4 <= offset + size:
            fmt, attribute, value = struct.unpack_from("<BBH", data, at)
            if fmt == EIFMT_SVAL and attribute == EIATTR_MAX_THREADS:
                x, y, z = struct.unpack_from("<III", data, at + 4)
                bounds[section[len(".nv.info."):]] = x * y * z
            at += 4 + (value if fmt == EIFMT_SVAL else 0)
    return bounds


def module_cubins(cuobjdump, module, out_dir):
    """The cubins inside the extension module, extracted into out_dir: [(arch, path)]."""
    subprocess.run([cuobjdump, "-xelf", "all", module], cwd=out_dir, capture_output=True, check=True)
    cubins = sorted(glob.glob(os.path.join(out_dir, "*.cubin")))
    return [(re.search(r"\.(sm_\d+a?)\.cubin$", c).group(1), c) for c in cubins]


def compile_cubins(config, build, source_root, arches, out_dir, jobs):
    """The .cu files of source_root compiled for each arch with the nvcc flags of `build` (release or
    debug), device code only."""
    import torch.utils.cpp_extension as cpp_extension

    nvcc = os.path.join(config["cuda_home"], "bin", "nvcc")
    opt = config["nvcc_opt_flags"]
    common = [f for f in config["nvcc_flags"] if f not in opt["release"] and f not in opt["debug"]]
    includes = [os.path.join(source_root, "csrc")] + cpp_extension.include_paths() + config["cuda_include_dirs"]
    flags = ["-std=c++20", *cpp_extension.COMMON_NVCC_FLAGS, *opt[build], *common]
    flags += [f"-I{d}" for d in includes]
    jobs_list = []
    for arch in arches:
        for source in sorted(glob.glob(os.path.join(source_root, "csrc", "cuda", "*.cu"))):
            cubin = os.path.join(out_dir, f"{os.path.basename(source)[:-3]}.{build}.{arch}.cubin")
            jobs_list.append((arch, cubin, [nvcc, "-cubin", f"-arch={arch}", *flags, source, "-o", cubin]))
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(lambda job: run(job[2]), jobs_list))
    return [(arch, cubin) for arch, cubin, _ in jobs_list]


def fits(usage, threads):
    """The problems of one kernel launched with `threads` threads per block (empty: none)."""
    problems = []
    if threads is None:
        return ["no __launch_bounds__"]
    registers = -(-usage["REG"] // REGISTER_GRANULE) * REGISTER_GRANULE
    warps = -(-threads // 32)
    if registers * 32 * warps > REGISTERS_PER_BLOCK:
        problems.append(f"{usage['REG']} registers x {threads} threads exceed {REGISTERS_PER_BLOCK}")
    if usage["SHARED"] > MAX_STATIC_SHARED:
        problems.append(f"{usage['SHARED']} bytes of static shared memory exceed {MAX_STATIC_SHARED}")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-debug", action="store_true", help="skip the debug compilation")
    parser.add_argument("--source", help="compile both builds from this checkout instead (default: release from "
                        "the installed module, debug from this checkout)")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS", "2")), help="parallel nvcc runs")
    args = parser.parse_args()

    from torch_manualbp import _C
    from torch_manualbp._build_config import BUILD_CONFIG as config

    if not config["cuda"]:
        sys.exit("cuda_resources: this build of torch_manualbp has no CUDA kernels (build with FORCE_CUDA=1)")
    os.environ.setdefault("CUDA_HOME", config["cuda_home"])
    cuobjdump = find_cuobjdump(config["cuda_home"])
    module = _C.__file__
    wanted = {"release": args.source is not None, "debug": not args.no_debug}
    builds = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "module"))
        cubins = {"release": module_cubins(cuobjdump, module, os.path.join(tmp, "module"))}
        arches = sorted({arch for arch, _ in cubins["release"]})
        for build in [b for b, compile_it in wanted.items() if compile_it]:
            started = time.monotonic()
            os.makedirs(os.path.join(tmp, build), exist_ok=True)
            cubins[build] = compile_cubins(config, build, args.source or ROOT, arches, os.path.join(tmp, build), args.jobs)
            print(f"{build} cubins ({', '.join(arches)}) compiled in {time.monotonic() - started:.0f} s")
        for build, files in cubins.items():
            usage, bounds = {}, {}
            for arch, cubin in files:
                usage.update({(arch, n): u for n, u in resource_usage(cuobjdump, cubin).items()})
                bounds.update({(arch, n): t for n, t in launch_bounds(cubin).items()})
            # Kernels by readable name: the mangled name of an anonymous namespace differs per compilation.
            readable = demangle(sorted({n for _, n in usage}))
            builds[build] = (
                {(arch, short_name(readable[n])): u for (arch, n), u in usage.items()},
                {(arch, short_name(readable[n])): t for (arch, n), t in bounds.items() if n in readable},
            )

    kernels = sorted({key for usage, _ in builds.values() for key in usage}, key=lambda k: (k[1], k[0]))
    print(f"{'kernel':<48} {'arch':<6} {'bound':>5}" + "".join(f"  {b + ' REG/STACK/SHARED':>24}" for b in builds))
    failures = []
    for key in kernels:
        arch, name = key
        bound = next((bounds[key] for _, bounds in builds.values() if key in bounds), None)
        cells = ""
        for build, (usage, bounds) in builds.items():
            if key not in usage:
                cells += f"  {'-':>24}"
                continue
            u = usage[key]
            cells += f"  {u['REG']:>12}/{u['STACK']:>4}/{u['SHARED']:>6}"
            failures += [f"{build} {arch} {name}: {p}" for p in fits(u, bounds.get(key))]
        print(f"{name:<48} {arch:<6} {bound or '-':>5}" + cells)
    if failures:
        print("\n".join(["", "cuda_resources: FAILED", *failures]))
        sys.exit(1)
    print(f"cuda_resources: all {len(kernels)} kernels fit their __launch_bounds__ in every build checked")


if __name__ == "__main__":
    main()
