"""Benchmarks of torch_manualbp against native PyTorch on the CPU: `python -m torch_manualbp bench`.

One process times, side by side and with torch.utils.benchmark (median of blocked_autorange):
torch_manualbp, native eager PyTorch, torch.compile of the native composition, and for LinearSigmoid
the floor of the bare GEMMs; forward (inputs requiring grad, as in training) and forward + backward.
The contenders of one case are timed in turn, `--repeats` rounds over them, and every ratio is taken
within a round (then the median over rounds): on a busy machine, compare ratios, not times.

Memory: the bytes kept for backward (the storages of the tensors autograd saves, counted once, those
of the inputs and parameters left out), and the peak extra resident memory of forward + backward, from
a fresh process per contender (see bench_probes.py). A SIMD check times the LinearSigmoid passes
around the GEMM at ATEN_CPU_CAPABILITY=default and at the detected level, each in its own process.

Prints the tables; with --out DIR it also writes them as <name>.md and <name>.json into DIR (the scripts
of benchmarks/ pass the repository's benchmarks/results). `--thp both` runs the whole suite twice, in
child processes with THP_MEM_ALLOC_ENABLE=0 and =1 (PyTorch reads it once, at start).
Programmatic use: add_arguments(parser) and run(args) -> exit status; main(argv) for scripts.
"""
import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

import torch
from torch.utils.benchmark import Timer

import torch_manualbp
from torch_manualbp.cli import bench_cases as cases_lib
from torch_manualbp.cli import bench_probes as probes
from torch_manualbp.cli.bench_cases import (
    COMPILED,
    EAGER,
    FLOOR,
    FWD,
    FWD_BWD,
    OURS,
    OURS_HALF_IGNORED,
    OURS_NO_GRAD,
    TORCH_CHUNKED,
)

THP_VARIABLE = "THP_MEM_ALLOC_ENABLE"
COMMAND_VARIABLE = "TORCH_MANUALBP_BENCH_COMMAND"  # the parent's command line, for the report of a child
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
# Shape and pass of the SIMD check: a short K keeps the GEMM small beside the passes around it.
SIMD_CHECK_SHAPE = (4096, 16, 4096)
SIMD_CHECK_ROUNDS = 2

TIMERS = {"wall": time.perf_counter, "process": time.process_time}

# The performance goals of the layers (2 threads), checked on the numbers of the same run. bfloat16 goals
# assume a CPU with AMX or AVX512-BF16 (native bfloat16 GEMMs).
GOALS = [
    # (layer, shape label, dtype, pass, description, metric, bound)
    ("linear_sigmoid", "4096x1024->1024", "float32", FWD_BWD, "time / GEMM floor <= 1.05", "vs_floor", ("<=", 1.05)),
    ("linear_sigmoid", "64x256->256", "float32", FWD, "time / eager <= 1.0", "vs_eager", ("<=", 1.0)),
    ("linear_sigmoid", "64x256->256", "float32", FWD_BWD, "time / eager <= 1.0", "vs_eager", ("<=", 1.0)),
    ("softmax_cross_entropy", "4096x32768", "float32", FWD_BWD, "eager / time >= 4", "speedup_eager", (">=", 4.0)),
    ("softmax_cross_entropy", "4096x32768", "float32", FWD_BWD, "compiled / time >= 3", "speedup_compiled", (">=", 3.0)),
    ("softmax_cross_entropy", "8192x1000", "float32", FWD_BWD, "eager / time >= 2", "speedup_eager", (">=", 2.0)),
    ("linear_cross_entropy", "2048x512->32768", "float32", FWD_BWD, "time / GEMM floor <= 1.10", "vs_floor", ("<=", 1.10)),
    ("linear_cross_entropy", "2048x512->32768", "float32", FWD_BWD, "eager / time > 1", "speedup_eager", (">", 1.0)),
    ("linear_cross_entropy", "2048x512->32768", "float32", FWD_BWD, "compiled / time > 1", "speedup_compiled", (">", 1.0)),
    ("linear_cross_entropy", "2048x512->32768", "float32", FWD_BWD, "torch chunked / time >= 2.5", "speedup_chunked", (">=", 2.5)),
    ("linear_cross_entropy", "2048x512->32768", "bfloat16", FWD_BWD, "time / GEMM floor <= 1.30", "vs_floor", ("<=", 1.30)),
    ("linear_cross_entropy", "2048x512->32768", "bfloat16", FWD_BWD, "eager / time > 1", "speedup_eager", (">", 1.0)),
    ("linear_cross_entropy", "2048x512->32768", "bfloat16", FWD_BWD, "compiled / time > 1", "speedup_compiled", (">", 1.0)),
    ("linear_cross_entropy", "2048x512->32768", "bfloat16", FWD_BWD, "torch chunked / time >= 10", "speedup_chunked", (">=", 10.0)),
]
# Goals between two of our contenders: (layer, label, dtype, description, (contender, pass), (contender, pass), bound)
RELATIVE_GOALS = [
    (
        "linear_cross_entropy", "2048x512->32768", dtype, "half the targets ignored: time / all valid <= 0.65",
        (OURS_HALF_IGNORED, FWD_BWD), (OURS, FWD_BWD), 0.65,
    )
    for dtype in ("float32", "bfloat16")
] + [
    (
        "linear_cross_entropy", "2048x512->32768", dtype, "forward under no_grad: time / fwd+bwd <= 0.45",
        (OURS_NO_GRAD, FWD), (OURS, FWD_BWD), 0.45,
    )
    for dtype in ("float32", "bfloat16")
]
CE_MEMORY_GOALS = ("saved for backward < logits", "peak extra <= 1.1 x logits")


def add_arguments(parser):
    parser.add_argument("--layer", choices=["all"] + sorted(cases_lib.LAYERS), default="all")
    parser.add_argument(
        "--dtype", action="append", choices=sorted(DTYPES),
        help="repeatable; default float32 (bfloat16: the CPU path, slow natively)",
    )
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2, the goals' setting)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the contenders of a case (default 3)")
    parser.add_argument(
        "--timer", choices=sorted(TIMERS), default="wall",
        help="wall: elapsed time (default); process: this process's CPU time, steadier on a shared machine "
        "when --threads 1 (with more threads it also counts the workers' spinning)",
    )
    parser.add_argument(
        "--statistic", choices=["median", "min"], default="median",
        help="per measurement: the median of the timed blocks (default) or the fastest block (on a machine "
        "shared with other work, interference only adds time)",
    )
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds per blocked_autorange (default 1)")
    parser.add_argument(
        "--thp", choices=["current", "0", "1", "both"], default="current",
        help=f"{THP_VARIABLE} for PyTorch's CPU allocator: as set now, 0, 1, or both (re-runs itself per setting)",
    )
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes (one process each)")
    parser.add_argument("--no-simd-check", action="store_true", help="skip the ATEN_CPU_CAPABILITY=default check")
    parser.add_argument("--quick", action="store_true", help="small shapes, short timings (a smoke test)")
    parser.add_argument(
        "--skip", action="append", metavar="CONTENDER",
        help='repeatable; leave this contender out, shown as n/a (e.g. "torch chunked", the slowest)',
    )
    parser.add_argument(
        "--shape", action="append", metavar="LABEL",
        help="repeatable; only the cases of this label, as the report prints it (e.g. 2048x512->32768, 8192x1000)",
    )
    parser.add_argument("--profile", action="store_true", help="also print a torch.profiler table per case")
    parser.add_argument(
        "--out", metavar="DIR", default=None,
        help="also write the report as <name>.md and <name>.json into DIR (default: print it, write nothing)",
    )
    parser.add_argument("--name", default=None, help="file name stem under --out (default: from machine and settings)")
    return parser


def main(argv=None):
    parser = add_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    return run(parser.parse_args(argv))


def run(args):
    if args.thp in ("0", "1") and os.environ.get(THP_VARIABLE) != args.thp:
        return _run_children(args, [args.thp])
    if args.thp == "both":
        return _run_children(args, ["0", "1"])
    return _run_here(args)


# ---- one setting, this process -------------------------------------------------------------------------


def _run_here(args):
    if args.quick:
        args.min_run_time = min(args.min_run_time, 0.2)
        args.repeats = 1
    dtypes = [DTYPES[name] for name in (args.dtype or ["float32"])]
    if args.shape:
        known = {
            case.label
            for name, layer in cases_lib.LAYERS.items()
            for case in layer(torch.float32) + layer(torch.float32, cases_lib.QUICK_SHAPES[name])
        }
        unknown = sorted(set(args.shape) - known)
        if unknown:
            raise SystemExit(f"bench: --shape {', '.join(unknown)} is not a case; the cases are {', '.join(sorted(known))}")
    layers = sorted(cases_lib.LAYERS) if args.layer == "all" else [args.layer]
    layers.sort(key=lambda layer: layer != "linear_sigmoid")
    torch.set_num_threads(args.threads)
    started = time.time()
    environment = _environment(args)
    _print_environment(environment)

    results = []
    for layer in layers:
        for dtype in dtypes:
            shapes = cases_lib.QUICK_SHAPES[layer] if args.quick else None
            for case in cases_lib.LAYERS[layer](dtype, shapes) if shapes else cases_lib.LAYERS[layer](dtype):
                if args.shape and case.label not in args.shape:
                    continue
                results.append(_measure_case(case, args))
                _print_case(results[-1])
    simd = None if args.no_simd_check else _simd_check(args)
    environment["load_average_end"] = _load_average()
    environment["wall_seconds"] = round(time.time() - started, 1)
    report = {"environment": environment, "results": results, "simd_check": simd, "goals": _goals(results, args)}
    _write_report(report, args)
    return 0


def _measure_case(case, args):
    inputs, contenders = case.build(case, not args.no_compile)
    by_name = {c.name: c for c in contenders}
    entry = {
        "layer": case.layer, "shape": list(case.shape), "label": case.label,
        "dtype": cases_lib.dtype_name(case.dtype), "work_unit": case.work_unit,
        "reference": case.reference_name, "reference_bytes": case.reference_bytes, "passes": {}, "memory": {},
    }
    for contender in contenders:
        if contender.name in (args.skip or []):
            contender.missing = "left out (--skip)"
    # First calls (torch.compile compiles here): a failure marks the contender n/a, with the reason.
    for contender in contenders:
        for fn in (contender.fwd, contender.fwd_bwd):
            if fn is None or contender.missing:
                continue
            try:
                fn()
            except Exception as error:  # noqa: BLE001
                contender.missing = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:160]}"
    for pass_name in cases_lib.PASSES:
        rounds = []
        for _ in range(args.repeats):
            times = {}
            for contender in contenders:
                fn = contender.fwd if pass_name == FWD else contender.fwd_bwd
                if fn is None or contender.missing:
                    continue
                timer = Timer(
                    "fn()", globals={"fn": fn}, num_threads=args.threads,
                    label=case.key, sub_label=pass_name, description=contender.name, timer=TIMERS[args.timer],
                )
                measurement = timer.blocked_autorange(min_run_time=args.min_run_time)
                times[contender.name] = measurement.median if args.statistic == "median" else min(measurement.times)
            rounds.append(times)
        entry["passes"][pass_name] = _summarise(rounds, contenders, case, pass_name)
    for contender in contenders:
        if contender.forward_for_saved is not None and not contender.missing:
            entry["memory"].setdefault(contender.name, {})["saved_bytes"] = _saved_bytes(
                contender.forward_for_saved, inputs
            )
    if args.profile:
        _profile(case, by_name.get(OURS))
    del contenders, by_name, inputs
    if not args.no_memory:
        for name in list(entry["passes"][FWD_BWD]["contenders"]):
            if name == FLOOR:
                continue
            probe = probes.run_probe(
                "memory", [case.layer, list(case.shape), cases_lib.dtype_name(case.dtype), name, args.threads],
                extra_env=probes.MALLOC_SETTINGS,
            )
            entry["memory"].setdefault(name, {}).update(probe)
    return entry


def _summarise(rounds, contenders, case, pass_name):
    summary = {"contenders": {}, "missing": {c.name: c.missing for c in contenders if c.missing}}
    for contender in contenders:
        if contender.name not in rounds[0]:
            continue
        seconds = [r[contender.name] for r in rounds]
        row = {
            "median_s": statistics.median(seconds),
            "rounds_s": seconds,
            "throughput": case.work[pass_name] / statistics.median(seconds) / 1e9,
        }
        for ratio_name, other, invert in (
            ("vs_eager", EAGER, False), ("vs_compiled", COMPILED, False), ("vs_floor", FLOOR, False),
            ("speedup_eager", EAGER, True), ("speedup_compiled", COMPILED, True),
            ("speedup_chunked", TORCH_CHUNKED, True),
        ):
            if other in rounds[0] and contender.name != other:
                ratios = [(r[other] / r[contender.name]) if invert else (r[contender.name] / r[other]) for r in rounds]
                row[ratio_name] = statistics.median(ratios)
        summary["contenders"][contender.name] = row
    return summary


def _saved_bytes(forward, inputs):
    """Bytes of the storages autograd saves during `forward`, each once, inputs' and parameters' left out."""
    input_storages = {t.untyped_storage().data_ptr() for t in inputs}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in input_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = forward()
    del output
    return sum(saved.values())


def _profile(case, contender):
    if contender is None or contender.missing:
        return
    contender.fwd_bwd()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(3):
            contender.fwd_bwd()
    print(f"\nprofile of {OURS} fwd+bwd, {case.key} (3 runs):")
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def _simd_check(args):
    """The LinearSigmoid passes around the GEMM at ATEN_CPU_CAPABILITY=default and at the detected level."""
    arguments = [*SIMD_CHECK_SHAPE, min(args.min_run_time, 0.5), args.threads]
    runs = {"detected": [], "forced_default": []}
    for _ in range(SIMD_CHECK_ROUNDS):  # alternating processes; the fastest of each kept
        runs["detected"].append(probes.run_probe("simd", arguments))
        runs["forced_default"].append(probes.run_probe("simd", arguments, extra_env={"ATEN_CPU_CAPABILITY": "default"}))
    detected, forced = (_fastest_probe(runs[key]) for key in ("detected", "forced_default"))
    check = {"shape": "{}x{}->{}".format(*SIMD_CHECK_SHAPE), "detected": detected, "forced_default": forced}
    if "error" not in detected and "error" not in forced:
        check["forced_level_reported"] = forced["simd_level"] == "DEFAULT"
        check["speedup"] = {
            name: forced["seconds"][name] / detected["seconds"][name]
            for name in ("forward_epilogue", "backward_elementwise")
            if detected["seconds"][name] > 0
        }
    print("\nSIMD check:", json.dumps(check, indent=1))
    return check


def _fastest_probe(results):
    good = [r for r in results if "error" not in r]
    if not good:
        return results[0]
    fastest = dict(good[0], seconds={
        name: min(r["seconds"][name] for r in good) for name in good[0]["seconds"] if name != "forward_epilogue"
    })
    fastest["seconds"]["forward_epilogue"] = fastest["seconds"]["forward_op"] - fastest["seconds"]["gemm"]
    return fastest


def _goals(results, args):
    goals = []
    by_key = {(r["layer"], r["label"], r["dtype"]): r for r in results}
    applies = args.threads == 2
    comparisons = {"<=": lambda v, b: v <= b, ">=": lambda v, b: v >= b, ">": lambda v, b: v > b}
    for layer, label, dtype, pass_name, description, metric, (op, bound) in GOALS:
        result = by_key.get((layer, label, dtype))
        if result is None:
            continue
        value = result["passes"][pass_name]["contenders"].get(OURS, {}).get(metric)
        met = None if value is None else comparisons[op](value, bound)
        goals.append({"goal": f"{layer} {label} {dtype} {pass_name}: {description}", "value": value, "met": met})
    for layer, label, dtype, description, (name, pass_name), (base, base_pass), bound in RELATIVE_GOALS:
        result = by_key.get((layer, label, dtype))
        if result is None:
            continue
        time = result["passes"][pass_name]["contenders"].get(name, {}).get("rounds_s")
        base_time = result["passes"][base_pass]["contenders"].get(base, {}).get("rounds_s")
        value = None if not time or not base_time else statistics.median(t / b for t, b in zip(time, base_time))
        goals.append({"goal": f"{layer} {label} {dtype}: {description}", "value": value,
                      "met": None if value is None else value <= bound})
    for label in ("2048x512->32768", "4096x1024->128256"):
        for dtype in ("float32", "bfloat16"):
            result = by_key.get(("linear_cross_entropy", label, dtype))
            memory = (result or {}).get("memory", {})
            ours = memory.get(OURS, {}).get("peak_extra_bytes")
            others = {n: memory.get(n, {}).get("peak_extra_bytes") for n in (EAGER, COMPILED, TORCH_CHUNKED)}
            others = {n: v for n, v in others.items() if v is not None}
            if ours is None or not others:
                continue
            goals.append({
                "goal": f"linear_cross_entropy {label} {dtype}: peak extra memory below {', '.join(others)}",
                "value": ours / result["reference_bytes"], "met": all(ours < v for v in others.values()),
            })
    for label in ("4096x32768", "8192x1000", "8x21x128x128"):
        result = by_key.get(("softmax_cross_entropy", label, "float32"))
        memory = (result or {}).get("memory", {}).get(OURS, {})
        if not memory:
            continue
        logits = result["reference_bytes"]
        saved, peak = memory.get("saved_bytes"), memory.get("peak_extra_bytes")
        goals.append({"goal": f"softmax_cross_entropy {label}: {CE_MEMORY_GOALS[0]}",
                      "value": None if saved is None else saved / logits, "met": None if saved is None else saved < logits})
        goals.append({"goal": f"softmax_cross_entropy {label}: {CE_MEMORY_GOALS[1]}",
                      "value": None if peak is None else peak / logits, "met": None if peak is None else peak <= 1.1 * logits})
    if not applies:
        for goal in goals:
            goal["note"] = f"goals are stated for 2 threads; this run used {args.threads}"
    return goals


# ---- environment -----------------------------------------------------------------------------------------


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _git_commit():
    root = probes.package_root()
    try:
        return subprocess.run(
            ["git", "-C", root, "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _command():
    argv = list(sys.argv)
    if argv and argv[0].endswith(os.path.join("torch_manualbp", "__main__.py")):
        argv[0:1] = ["-m", "torch_manualbp"]
    return " ".join([os.path.basename(sys.executable)] + argv)


def _environment(args):
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": os.environ.get(COMMAND_VARIABLE) or _command(),
        "machine": platform.node(),
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads": args.threads,
        "torch": torch.__version__,
        "torch_manualbp": getattr(torch_manualbp, "__version__", None),
        "git": _git_commit(),
        "simd_level": torch_manualbp._C.cpu_simd_level(),
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "kernel_threads_used": torch_manualbp._C.kernel_threads_used(),
        THP_VARIABLE: os.environ.get(THP_VARIABLE, "unset (0)"),
        "transparent_hugepage": _read("/sys/kernel/mm/transparent_hugepage/enabled"),
        "memory_probe_malloc": probes.MALLOC_SETTINGS,
        "timer": f"{args.timer} clock, torch.utils.benchmark blocked_autorange(min_run_time={args.min_run_time}), {args.statistic} of the blocks; "
                 f"{args.repeats} rounds, ratios per round then median",
        "load_average_start": _load_average(),
    }


def _print_environment(environment):
    print("torch_manualbp benchmarks")
    for key, value in environment.items():
        print(f"  {key}: {value}")


# ---- reports -------------------------------------------------------------------------------------------


def _fmt_ratio(value):
    return "" if value is None else f"{value:.2f}x"


def _fmt_time(seconds):
    return f"{seconds * 1e3:.3f}" if seconds < 0.01 else f"{seconds * 1e3:.1f}"


def _fmt_mib(value):
    return "" if value is None else f"{value / 2**20:.1f}"


def _spread(seconds):
    """(max - min) / median over the rounds, in percent: how noisy the measurement was."""
    return f"{(max(seconds) - min(seconds)) / statistics.median(seconds) * 100:.0f}%" if len(seconds) > 1 else ""


def _timing_table(result):
    lines = [
        f"| pass | contender | median ms | spread | vs eager | vs compiled | vs GEMM floor | {result['work_unit']} |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for pass_name, summary in result["passes"].items():
        for name, row in summary["contenders"].items():
            lines.append(
                f"| {pass_name} | {name} | {_fmt_time(row['median_s'])} | {_spread(row['rounds_s'])} | "
                f"{_fmt_ratio(row.get('vs_eager'))} | {_fmt_ratio(row.get('vs_compiled'))} | "
                f"{_fmt_ratio(row.get('vs_floor'))} | {row['throughput']:.1f} |"
            )
        for name, why in summary["missing"].items():
            lines.append(f"| {pass_name} | {name} | n/a | | | | | {why} |")
    return lines


def _memory_table(result):
    reference = result["reference_bytes"]
    lines = [
        f"| contender | kept for backward MiB | peak extra fwd+bwd MiB | peak / {result['reference']} |",
        "|---|---:|---:|---:|",
    ]
    for name, memory in result["memory"].items():
        peak = memory.get("peak_extra_bytes")
        note = memory.get("error") or memory.get("missing") or ""
        lines.append(
            f"| {name} | {_fmt_mib(memory.get('saved_bytes'))} | {_fmt_mib(peak) or note} | "
            f"{'' if peak is None else f'{peak / reference:.2f}x'} |"
        )
    return lines


def _markdown(report):
    environment = report["environment"]
    lines = ["# torch_manualbp benchmarks", ""]
    lines += [f"- **{key}**: `{value}`" for key, value in environment.items()]
    lines += [
        "",
        "Times are medians over rounds (of each measurement's statistic named above); *spread* is (max - min) / median of the per-round medians; ratios are taken within "
        "each round, then the median. *vs X* = our time / X's time (below 1: faster). GFLOP/s counts the GEMMs "
        "(2 M K N each; 1 forward, 3 forward + backward); GB/s counts the logits read once and, forward + "
        "backward, their gradient written once. *Kept for backward*: storages saved by autograd, inputs and "
        "parameters excluded. *Peak extra*: VmHWM - VmRSS over one forward + backward in a fresh process, "
        "after a warm-up run, gradients included.",
        "",
    ]
    for result in report["results"]:
        lines += [f"## {result['layer']} {result['label']} {result['dtype']}", ""]
        lines += _timing_table(result) + [""]
        if result["memory"]:
            lines += _memory_table(result) + [""]
    simd = report.get("simd_check")
    if simd:
        lines += ["## SIMD check (LinearSigmoid passes around the GEMM, " + simd["shape"] + ")", ""]
        if "speedup" in simd:
            lines += ["| | ATEN_CPU_CAPABILITY=default | detected | speedup |", "|---|---:|---:|---:|"]
            lines.append(f"| level reported by _C.cpu_simd_level() | {simd['forced_default']['simd_level']} | "
                         f"{simd['detected']['simd_level']} | |")
            for name, speedup in simd["speedup"].items():
                lines.append(f"| {name.replace('_', ' ')} ms | {simd['forced_default']['seconds'][name] * 1e3:.2f} | "
                             f"{simd['detected']['seconds'][name] * 1e3:.2f} | {speedup:.1f}x |")
        else:
            lines.append(f"failed: {simd}")
        lines.append("")
    lines += ["## Performance goals (2 threads)", "", "| goal | measured | met |", "|---|---:|---|"]
    for goal in report["goals"]:
        value = "" if goal["value"] is None else f"{goal['value']:.2f}"
        met = {True: "yes", False: "**no**", None: "n/a"}[goal["met"]]
        lines.append(f"| {goal['goal']} | {value} | {met}{' (' + goal['note'] + ')' if goal.get('note') else ''} |")
    return "\n".join(lines) + "\n"


def _default_name(args):
    machine = re.sub(r"[^a-z0-9]+", "-", _cpu_model().lower()).strip("-")[:40]
    layer = "" if args.layer == "all" else f"_{args.layer}"
    dtypes = "-".join(args.dtype or ["float32"])
    thp = os.environ.get(THP_VARIABLE, "unset")
    timer = "" if args.timer == "wall" else f"_{args.timer}-time"
    timer += "" if args.statistic == "median" else f"_{args.statistic}"
    return f"{machine}_{os.cpu_count()}cpu_{args.threads}t_thp{thp}_{dtypes}{layer}{timer}{'_quick' if args.quick else ''}"


def _write_report(report, args):
    """Prints the report; with --out, also writes it as <stem>.md and <stem>.json there."""
    markdown = _markdown(report)
    print("\n" + markdown)
    if args.out is None:
        return None
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, args.name or _default_name(args))
    with open(stem + ".md", "w") as f:
        f.write(markdown)
    with open(stem + ".json", "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {stem}.md and {stem}.json")
    return stem


def _print_case(result):
    print(f"\n{result['layer']} {result['label']} {result['dtype']}")
    print("\n".join(_timing_table(result)))
    if result["memory"]:
        print("\n".join(_memory_table(result)))


# ---- several allocator settings: one child process each ----------------------------------------------


def _run_children(args, settings):
    """Re-runs the suite in a child per THP_MEM_ALLOC_ENABLE setting (read by PyTorch once, at start)."""
    status = 0
    child_args = {key: value for key, value in vars(args).items() if _is_json(value)}
    child_args["thp"] = "current"
    # `python -c` puts the working directory first on sys.path, where a source checkout's torch_manualbp/
    # (without its compiled _C, or with a stale one) would shadow the package this process runs: drop it,
    # so that PYTHONPATH (the parent's package root) decides.
    code = (
        "import sys; sys.path = [p for p in sys.path if p]; "
        "import argparse, json; from torch_manualbp.cli.bench import run; "
        "sys.exit(run(argparse.Namespace(**json.loads(sys.argv[1]))))"
    )
    for setting in settings:
        env = dict(os.environ)
        env[THP_VARIABLE] = setting
        env["PYTHONPATH"] = os.pathsep.join(p for p in (probes.package_root(), env.get("PYTHONPATH")) if p)
        env[COMMAND_VARIABLE] = _command()
        print(f"\n===== {THP_VARIABLE}={setting} =====", flush=True)
        completed = subprocess.run([sys.executable, "-c", code, json.dumps(child_args)], env=env)
        status = status or completed.returncode
    return status


def _is_json(value):
    try:
        json.dumps(value)
        return True
    except TypeError:
        return False
