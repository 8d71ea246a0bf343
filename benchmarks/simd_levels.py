"""The cross-entropy kernels at two SIMD levels on one machine: the same timing in separate processes, one
per level (ATEN_CPU_CAPABILITY picks the level once per process), the levels interleaved round by round so
that load from other processes hits both alike.

    python benchmarks/simd_levels.py [--levels avx2 avx512] [--rounds 5] [--repeat 5] [--threads 1]
        [--shapes 4096x32768 8192x1000 256x1000 ...] [--dtype float32]

Times softmax_cross_entropy forward (no_grad) and forward + backward (index targets) per shape, as process CPU time (steadier than
wall time on a shared machine), small shapes over many calls; prints the median over rounds per level and
their ratio. Shapes whose gradient takes 32 MiB or more are timed with its page faults (glibc maps such
blocks afresh for every call). Both levels must be ones the CPU can execute.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def cpu_time():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(shapes, dtype_name, repeat, threads):
    """In the process of one level: {shape: median seconds of forward + backward}."""
    import torch

    try:
        import torch_manualbp
    except ImportError:
        sys.path.insert(0, os.path.dirname(HERE))
        import torch_manualbp
    from torch_manualbp.functional import softmax_cross_entropy

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dtype = getattr(torch, dtype_name)
    results = {"level": torch_manualbp._C.cpu_simd_level()}
    for text in shapes:
        shape = tuple(int(s) for s in text.split("x"))
        x = (torch.randn(shape) * 3).to(dtype)
        target = torch.randint(0, shape[1], shape[:1] + shape[2:])

        # Enough calls per sample for about 2**23 elements: small shapes are timed over many calls.
        calls = max(1, (1 << 23) // x.numel())

        def forward_backward():
            for _ in range(calls):
                leaf = x.detach().requires_grad_()
                softmax_cross_entropy(leaf, target).backward()

        def forward():
            with torch.no_grad():
                for _ in range(calls):
                    softmax_cross_entropy(x, target)

        for name, run in (("fwd", forward), ("fwd+bwd", forward_backward)):
            run()  # warm-up
            times = []
            for _ in range(repeat):
                start = cpu_time()
                run()
                times.append(cpu_time() - start)
            results[f"{text} {name}"] = statistics.median(times) / calls
    print(json.dumps(results))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", nargs="+", default=["avx2", "avx512"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shapes", nargs="+", default=["4096x32768", "8192x1000", "256x1000", "64x32768", "8x21x128x128", "8x21x32x32"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float64"])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.shapes, args.dtype, args.repeat, args.threads)
        return 0
    samples = {level: {} for level in args.levels}
    for _ in range(args.rounds):
        for level in args.levels:
            command = [sys.executable, os.path.abspath(__file__), "--child", "--repeat", str(args.repeat),
                       "--threads", str(args.threads), "--dtype", args.dtype, "--shapes", *args.shapes]
            env = dict(os.environ, ATEN_CPU_CAPABILITY=level)
            out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            assert result.pop("level").lower() == level, f"the kernels did not run at {level}"
            for case, seconds in result.items():
                samples[level].setdefault(case, []).append(seconds)
    first, *others = args.levels
    print(f"softmax_cross_entropy, {args.dtype}, index targets, {args.threads} thread(s), process CPU time per call, "
          f"median of {args.rounds} rounds (each the median of {args.repeat} runs)")
    print(f"{'shape':>16} {'pass':>8} " + " ".join(f"{level:>10}" for level in args.levels)
          + "".join(f"  {level}/{first}" for level in others))
    for case in samples[first]:
        shape, name = case.split()
        medians = {level: statistics.median(samples[level][case]) for level in args.levels}
        ratios = "".join(f"  {medians[level] / medians[first]:>{len(level) + len(first) + 1}.2f}" for level in others)
        print(f"{shape:>16} {name:>8} " + " ".join(f"{medians[level] * 1e3:>8.3f}ms" for level in args.levels) + ratios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
