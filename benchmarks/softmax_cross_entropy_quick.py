"""Quick side-by-side timing of softmax_cross_entropy against F.cross_entropy (eager and torch.compile).

    python benchmarks/softmax_cross_entropy_quick.py [--threads 2] [--repeat 7] [--no-compile]
        [--shapes 4096x32768 8192x1000 8x21x128x128] [--dtype float32] [--cpu-time] [--exp-only]

Forward + backward (loss.backward() into a fresh x.grad, as in training) and forward alone, index
targets, median of --repeat interleaved runs. Ratios are only meaningful within one run: other
processes share the cores. --cpu-time reports the CPU time of the process (all threads, user + system,
page faults included) instead of wall time: steadier than wall time when other processes compete for
the cores. The full suite (memory, JSON, tables): python benchmarks/run_all.py.
"""
import argparse
import os
import resource
import statistics
import time

import torch
import torch.nn.functional as F

import torch_manualbp
from torch_manualbp.functional import softmax_cross_entropy


def parse_shape(text):
    return tuple(int(s) for s in text.split("x"))


def make_inputs(shape, dtype):
    classes = shape[1]
    x = torch.randn(shape, dtype=dtype) * 3
    target = torch.randint(0, classes, (shape[0],) + shape[2:])
    return x, target


def process_cpu_time():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def time_call(fn, repeat, clock=time.perf_counter):
    times = []
    for _ in range(repeat):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def fwd_bwd(loss_fn, x, target):
    def run():
        xg = x.detach().requires_grad_()
        loss_fn(xg, target).backward()
        return xg.grad

    return run


def fwd_only(loss_fn, x, target):
    def run():
        with torch.no_grad():
            return loss_fn(x, target)

    return run


def exp_throughput(repeat, clock):
    """torch.exp over 4096 x 32768 floats, for scale (one read + one write pass plus the exponentials)."""
    x = torch.randn(4096, 32768)
    out = torch.empty_like(x)
    return time_call(lambda: torch.exp(x, out=out), repeat, clock)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--shapes", nargs="+", default=["4096x32768", "8192x1000", "8x21x128x128"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile of F.cross_entropy")
    parser.add_argument("--cpu-time", action="store_true", help="process CPU time instead of wall time")
    parser.add_argument("--exp-only", action="store_true", help="only time torch.exp for scale")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(
        f"torch {torch.__version__}, torch_manualbp {torch_manualbp.__version__} "
        f"({torch_manualbp._C.cpu_simd_level()}), threads {torch.get_num_threads()}, "
        f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', '0')}, dtype {args.dtype}, "
        f"{'process CPU time' if args.cpu_time else 'wall time'}"
    )
    clock = process_cpu_time if args.cpu_time else time.perf_counter
    if args.exp_only:
        print(f"torch.exp 4096x32768 out=: {exp_throughput(args.repeat, clock) * 1e3:.1f} ms")
        return

    candidates = {"manualbp": softmax_cross_entropy, "eager": F.cross_entropy}
    if not args.no_compile:
        candidates["compiled"] = torch.compile(F.cross_entropy, dynamic=False)

    ratio_header = "   eager/ours" + ("  compiled/ours" if "compiled" in candidates else "")
    print(f"{'shape':>16} {'pass':>8} " + " ".join(f"{name:>10}" for name in candidates) + ratio_header)
    for text in args.shapes:
        shape = parse_shape(text)
        x, target = make_inputs(shape, dtype)
        for label, make in (("fwd", fwd_only), ("fwd+bwd", fwd_bwd)):
            fns = {name: make(fn, x, target) for name, fn in candidates.items()}
            for fn in fns.values():  # warm-up (and compilation)
                fn()
            samples = {name: [] for name in fns}
            for _ in range(args.repeat):  # interleaved, so that load from other processes hits all alike
                for name, fn in fns.items():
                    samples[name].append(time_call(fn, 1, clock))
            medians = {name: statistics.median(v) for name, v in samples.items()}
            ratios = f"{medians['eager'] / medians['manualbp']:>10.2f}x"
            if "compiled" in medians:
                ratios += f" {medians['compiled'] / medians['manualbp']:>12.2f}x"
            print(
                f"{text:>16} {label:>8} "
                + " ".join(f"{medians[name] * 1e3:>8.1f}ms" for name in fns)
                + "  "
                + ratios
            )


if __name__ == "__main__":
    main()
