"""Measurements that need a fresh process: peak resident memory, and the kernels at a forced SIMD level.

Each probe runs as `python -c ...` in a child process with a chosen environment and prints one JSON
line; the parent (torch_manualbp/cli/bench.py) starts it with `run_probe`.

Peak extra memory of forward + backward (one contender, one case, a fresh process):
  1. build the inputs (written, so resident), run forward + backward once (torch.compile compiles,
     lazy initialisation happens) and drop its results;
  2. reset the kernel's high-water mark (`echo 5 > /proc/self/clear_refs`) and read VmRSS: the baseline;
  3. run forward + backward once more, keeping the gradients, and read VmHWM.
  peak extra = VmHWM - baseline: what the layer needs at most beyond its inputs, gradients included.
glibc would keep freed blocks of the warm-up run resident and reuse them without a new page, hiding
the second run's peak; the child therefore runs with a fixed mmap threshold (MALLOC_MMAP_THRESHOLD_),
so that every large block is mapped on allocation and unmapped on free. Without clear_refs (not Linux,
or refused), the probe measures the first run instead (cold: lazy initialisation is included).
"""
import gc
import json
import os
import subprocess
import sys
import time

MALLOC_SETTINGS = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


def _status_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_high_water_mark():
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _memory_probe(layer, shape, dtype_name, contender_name, threads):
    import torch

    from torch_manualbp.cli import bench_cases

    torch.set_num_threads(threads)
    case = bench_cases.find_case(layer, shape, getattr(torch, dtype_name))
    _, contenders = case.build(case, contender_name == bench_cases.COMPILED)
    contender = next(c for c in contenders if c.name == contender_name)
    if contender.fwd_bwd is None:
        return {"peak_extra_bytes": None, "missing": contender.missing}
    warm = _reset_high_water_mark()
    if warm:
        contender.fwd_bwd()
        gc.collect()
        _reset_high_water_mark()
    baseline_kib = _status_kib("VmRSS")
    result = contender.fwd_bwd()
    peak_kib = _status_kib("VmHWM")
    del result
    return {"peak_extra_bytes": (peak_kib - baseline_kib) * 1024, "method": "warm" if warm else "cold"}


def _simd_probe(rows, in_features, out_features, min_run_time, threads):
    """Times the LinearSigmoid passes around the GEMM at the SIMD level this process runs at.

    forward epilogue = forward op - the bare GEMM (measured side by side); the backward's elementwise
    pass (dz = dy * y * (1 - y) and the bias gradient) is timed alone: the backward op asked for the
    bias gradient only runs no GEMM.
    """
    import torch
    from torch.utils.benchmark import Timer

    import torch_manualbp

    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, in_features, generator=generator)
    weight = torch.randn(out_features, in_features, generator=generator) / in_features**0.5
    bias = torch.randn(out_features, generator=generator)
    grad_output = torch.randn(rows, out_features, generator=generator)
    ops = torch.ops.torch_manualbp
    output = ops.linear_sigmoid_forward.default(x, weight, bias)
    statements = {
        "forward_op": lambda: ops.linear_sigmoid_forward.default(x, weight, bias),
        "gemm": lambda: torch.mm(x, weight.t()),
        "backward_elementwise": lambda: ops.linear_sigmoid_backward.default(
            grad_output, x, weight, output, [out_features], [False, False, True]
        ),
    }
    seconds = {}
    for name, fn in statements.items():
        # The fastest block: interference from other work on the machine only adds time.
        timer = Timer("fn()", globals={"fn": fn}, num_threads=threads)
        seconds[name] = min(timer.blocked_autorange(min_run_time=min_run_time).times)
    seconds["forward_epilogue"] = seconds["forward_op"] - seconds["gemm"]
    return {
        "simd_level": torch_manualbp._C.cpu_simd_level(),
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "seconds": seconds,
    }


PROBES = {"memory": _memory_probe, "simd": _simd_probe}


def main(argv):
    """Child entry point: argv = [probe name, JSON list of arguments]; prints one JSON line."""
    name, arguments = argv[0], json.loads(argv[1])
    print("PROBE_RESULT " + json.dumps(PROBES[name](*arguments)), flush=True)
    return 0


def package_root():
    import torch_manualbp

    return os.path.dirname(os.path.dirname(os.path.abspath(torch_manualbp.__file__)))


def run_probe(name, arguments, extra_env=None, timeout=1800):
    """Runs one probe in a fresh Python process; returns its JSON result, or {"error": ...}."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root(), env.get("PYTHONPATH")) if p)
    env.update(extra_env or {})
    # Without the working directory on sys.path (see bench._run_children): the parent's package.
    code = (
        "import sys; sys.path = [p for p in sys.path if p]; "
        "from torch_manualbp.cli.bench_probes import main; sys.exit(main(sys.argv[1:]))"
    )
    started = time.monotonic()
    try:
        completed = subprocess.run(
            [sys.executable, "-c", code, name, json.dumps(arguments)],
            env=env, capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"probe timed out after {timeout} s"}
    for line in completed.stdout.splitlines():
        if line.startswith("PROBE_RESULT "):
            result = json.loads(line[len("PROBE_RESULT "):])
            result["probe_seconds"] = time.monotonic() - started
            return result
    tail = (completed.stderr or completed.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": f"probe exited with {completed.returncode}: {tail[0][:200]}"}
