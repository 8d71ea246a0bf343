"""The command line (python -m torch_manualbp demo|check|info|bench) and the worked examples.

Each command and example runs once as a user runs it, in a subprocess against the installed package;
the failure paths run in-process, where the library's backward can be corrupted with monkeypatch to
show that demo and check catch a wrong gradient.
"""
import ast
import json
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torch_manualbp
from torch_manualbp import _C, LinearSigmoidFunction, SoftmaxCrossEntropyFunction
from torch_manualbp.cli import check_cases, main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DOCS = ROOT / "README.md"
EXAMPLE_FILES = sorted(EXAMPLES.glob("ex*_*.py"))


def run_cli(*args, cwd):
    """`python -m torch_manualbp ARGS` from `cwd` (not the source tree: the installed package is the one run)."""
    return subprocess.run(
        [sys.executable, "-m", "torch_manualbp", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


# ---- --help -----------------------------------------------------------------------------------------
def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for command in ("demo", "check", "info", "bench"):
        assert command in text


@pytest.mark.parametrize(
    "command, options",
    [
        ("demo", ["--steps", "--seed", "--device", "--dtype", "--plot", "--threads"]),
        ("check", ["--device", "--op"]),
        ("info", []),
        ("bench", []),
    ],
)
def test_help_of_each_command(capsys, command, options):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"python -m torch_manualbp {command}" in text
    for option in options:
        assert option in text


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "required" in capsys.readouterr().err


# ---- info, bench ------------------------------------------------------------------------------------
def test_info(tmp_path):
    result = run_cli("info", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert torch_manualbp.__version__ in text
    assert torch.__version__ in text
    assert re.search(r"backends compiled\s+CPU" + (", CUDA" if _C.built_with_cuda() else r"\n"), text)
    assert re.search(rf"CPU kernels SIMD level\s+{_C.cpu_simd_level()}", text)
    assert re.search(rf"torch threads\s+{torch.get_num_threads()}\n", text)
    assert re.search(r"threads the kernels used\s+\d+", text)
    assert re.search(r"OpenMP\s+yes", text)
    assert "-fopenmp" in text  # the build flags, from _build_config.py


def test_bench(tmp_path):
    result = run_cli("bench", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "bench" in result.stdout


def test_bench_shape_picks_cases(tmp_path):
    """--shape keeps the cases of that label only; an unknown label is refused with the list of cases."""
    quick = ["bench", "--quick", "--layer", "softmax_cross_entropy", "--no-compile", "--no-memory", "--no-simd-check"]
    result = run_cli(*quick, "--min-run-time", "0.05", "--shape", "8192x1000", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "softmax_cross_entropy 8192x1000" in result.stdout
    assert "8x21x32x32" not in result.stdout
    result = run_cli(*quick, "--min-run-time", "0.05", "--shape", "8192x1000", "--skip", "eager", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "left out (--skip)" in result.stdout and "| fwd+bwd | torch_manualbp |" in result.stdout
    result = run_cli(*quick, "--shape", "3x3", cwd=tmp_path)
    assert result.returncode != 0
    assert "--shape 3x3 is not a case" in result.stderr and "8192x1000" in result.stderr


def test_bench_writes_files_only_under_out(tmp_path):
    """Without --out, `bench` prints its report and creates nothing in the working directory; with
    --out DIR it writes the report there as .md and .json."""
    quick = ["bench", "--quick", "--layer", "linear_sigmoid", "--no-compile", "--no-memory", "--no-simd-check"]
    result = run_cli(*quick, "--min-run-time", "0.05", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "## Performance goals (2 threads)" in result.stdout
    assert "| fwd+bwd | torch_manualbp |" in result.stdout
    assert "wrote" not in result.stdout
    assert list(tmp_path.iterdir()) == []

    out = tmp_path / "reports"
    result = run_cli(*quick, "--min-run-time", "0.05", "--out", str(out), "--name", "smoke", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["reports"]
    assert sorted(path.name for path in out.iterdir()) == ["smoke.json", "smoke.md"]
    assert "## Performance goals (2 threads)" in (out / "smoke.md").read_text()
    assert json.loads((out / "smoke.json").read_text())["results"][0]["layer"] == "linear_sigmoid"


def test_importing_the_library_loads_no_tool(tmp_path):
    """`import torch_manualbp` loads the layers, and nothing of the command line or the benchmarks."""
    code = "import sys, torch_manualbp; print(sorted(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    loaded = ast.literal_eval(result.stdout)
    assert "torch_manualbp.layers.linear_sigmoid" in loaded and "torch_manualbp.functional" in loaded
    tools = [name for name in loaded if name == "torch_manualbp.cli" or name.startswith("torch_manualbp.cli.")]
    assert tools == []
    assert "torch.utils.benchmark" not in loaded


# ---- demo -------------------------------------------------------------------------------------------
def test_demo_trains_and_agrees_with_autograd(tmp_path):
    result = run_cli("demo", "--steps", "40", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout
    assert "gradients agree with autograd at all 5 checks" in text
    assert text.count("gradient check at step") == 5
    assert len(re.findall(r"^\[[#.]+\]\s+\d+/40", text, re.MULTILINE)) >= 5  # the progress bar
    first, last = map(float, re.search(r"loss (\S+) -> (\S+), accuracy", text).groups())
    assert last < 0.9 * first
    start_accuracy, end_accuracy = map(float, re.search(r"accuracy (\S+)% -> (\S+)%", text).groups())
    assert end_accuracy > start_accuracy


@pytest.mark.parametrize("dtype", ["float64", "bfloat16", "float16"])
def test_demo_other_dtypes_agree_with_autograd(capsys, dtype):
    threads = torch.get_num_threads()
    assert main(["demo", "--steps", "2", "--dtype", dtype, "--threads", "1"]) == 0
    assert torch.get_num_threads() == threads  # restored for whatever runs next
    text = capsys.readouterr().out
    assert f"{dtype} on cpu" in text
    assert "gradients agree with autograd at all 2 checks" in text


def _scaled(backward, scale):
    """A backward that returns the real gradients times `scale`: a hand-derived formula off by a factor."""

    def corrupted(ctx, *grads):
        return tuple(None if g is None else g * scale for g in backward(ctx, *grads))

    return staticmethod(corrupted)


@pytest.mark.parametrize("function", [LinearSigmoidFunction, SoftmaxCrossEntropyFunction])
def test_demo_fails_when_a_backward_is_wrong(capsys, monkeypatch, function):
    monkeypatch.setattr(function, "backward", _scaled(function.backward, 1.01))
    assert main(["demo", "--steps", "3"]) == 1
    text = capsys.readouterr().out
    assert "DISAGREE" in text
    assert "FAILED:" in text
    assert "gradients agree" not in text


def test_demo_plot(capsys, tmp_path):
    path = tmp_path / "loss.png"
    code = main(["demo", "--steps", "3", "--plot", str(path)])
    text = capsys.readouterr().out
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert code == 2
        assert "needs matplotlib, which is not installed" in text
        assert not path.exists()
    else:
        assert code == 0
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_without_cuda(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["demo", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().out


# ---- check ------------------------------------------------------------------------------------------
def test_check_passes_every_case(tmp_path):
    result = run_cli("check", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    ops_checked = tuple({case.op for case in check_cases.cases()})
    rows = [line for line in result.stdout.splitlines() if line.startswith(ops_checked)]
    assert len(rows) == 3 * len(check_cases.cases())
    for row in rows:
        op, *_, check, device, dtype, verdict, error = re.split(r"\s{2,}", row)
        assert (device, dtype, verdict) == ("cpu", "float64", "pass"), row
        assert float(error) < 1e-5, row
    assert {"forward", "gradcheck", "gradgradcheck"} == {re.split(r"\s{2,}", row)[2] for row in rows}
    assert f"check: all {len(rows)} checks passed" in result.stdout


def test_check_fails_when_a_backward_is_wrong(capsys, monkeypatch):
    monkeypatch.setattr(LinearSigmoidFunction, "backward", _scaled(LinearSigmoidFunction.backward, 1.01))
    assert main(["check", "--op", "linear_sigmoid"]) == 1
    text = capsys.readouterr().out
    gradcheck_rows = [line for line in text.splitlines() if re.search(r"\s{2}gradcheck\s{2}", line)]
    assert len(gradcheck_rows) == len(check_cases.linear_sigmoid_cases())
    assert all("FAIL" in row for row in gradcheck_rows)
    assert "softmax_cross_entropy" not in text
    assert re.search(r"check: \d+ of \d+ checks FAILED", text)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_check_on_cuda(tmp_path):
    result = run_cli("check", "--device", "cuda", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "check: all" in result.stdout


# ---- examples ---------------------------------------------------------------------------------------
def test_every_example_is_listed():
    assert len(EXAMPLE_FILES) == 5
    readme = (EXAMPLES / "README.md").read_text()
    for path in EXAMPLE_FILES:
        assert path.name in readme


def _check_example_output(text):
    assert re.search(r"loss: library (\S+)\s+autograd \1", text)  # the same loss, to the printed digits
    assert "library" in text and "autograd" in text
    assert "DISAGREE" not in text
    assert "all gradients agree with autograd" in text


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda path: path.stem)
def test_example_agrees(path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(path), run_name="__main__")
    assert exit_info.value.code == 0
    _check_example_output(capsys.readouterr().out)


def test_language_model_example_trains_both_heads_alike(tmp_path):
    """examples/train_language_model_head.py, a few steps: both runs train, their losses agree, the table prints."""
    path = EXAMPLES / "train_language_model_head.py"
    result = subprocess.run(
        [sys.executable, str(path), "--steps", "4"], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"vocabulary [1-9]\d{4,}", result.stdout)  # tens of thousands of tokens
    assert "torch_manualbp linear_cross_entropy" in result.stdout and "F.linear + F.cross_entropy" in result.stdout
    assert "final losses agree" in result.stdout


def test_vocab_parallel_language_model_example_matches_one_process(tmp_path):
    """examples/train_language_model_head_vocab_parallel.py under torchrun, 2 processes (gloo), a few steps: each
    rank's head memory is printed, and the losses equal those of one process with the whole vocabulary."""
    path = EXAMPLES / "train_language_model_head_vocab_parallel.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(path),
               "--steps", "3"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"vocabulary [1-9]\d{4,}, split over 2 processes", result.stdout)
    assert re.search(r"rank 0 .* MiB", result.stdout) and re.search(r"rank 1 .* MiB", result.stdout)
    assert "losses agree within" in result.stdout


def test_example_runs_as_a_script(tmp_path):
    path = EXAMPLES / "ex2_sigmoid_layer_no_bias.py"
    result = subprocess.run([sys.executable, str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    _check_example_output(result.stdout)


def test_example_fails_when_a_backward_is_wrong(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setattr(LinearSigmoidFunction, "backward", _scaled(LinearSigmoidFunction.backward, 1.01))
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(EXAMPLES / "ex5_per_sample_bias_net.py"), run_name="__main__")
    assert exit_info.value.code == 1
    text = capsys.readouterr().out
    assert "DISAGREE" in text
    assert "FAILED: gradients disagree with autograd for" in text


# ---- docs -------------------------------------------------------------------------------------------
def test_docs_name_real_files_and_functions():
    """Every `file` | `function` pair in the tables of README.md exists in the source."""
    text = DOCS.read_text()
    rows = re.findall(
        r"^\|.*\|\s*`((?:csrc|torch_manualbp)/[^`]+)`\s*\|\s*((?:`\w+`(?:,\s*)?)+)\s*\|$", text, re.MULTILINE
    )
    assert len(rows) >= 15
    for path, names in rows:
        source = (ROOT / path).read_text()
        for name in re.findall(r"`(\w+)`", names):
            assert re.search(rf"\b{name}\b", source), f"{name} not in {path}"
    for example in set(re.findall(r"`(examples/\w+\.py)`", text)):
        assert (ROOT / example).is_file(), example
    assert {f"examples/{path.name}" for path in EXAMPLE_FILES} <= set(re.findall(r"`(examples/\w+\.py)`", text))


def test_benchmark_child_processes_ignore_a_source_tree_in_the_working_directory(tmp_path, monkeypatch):
    """The benchmark's fresh processes (`python -c`) import the package the parent runs, not a
    torch_manualbp/ folder in the working directory (a source checkout without, or with a stale, _C)."""
    from torch_manualbp.cli import bench_probes

    shadow = tmp_path / "torch_manualbp"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('the source tree in the working directory was imported')\n")
    monkeypatch.chdir(tmp_path)
    result = bench_probes.run_probe("memory", ["linear_sigmoid", [4, 8, 8], "float32", "torch_manualbp", 1], timeout=300)
    assert "error" not in result, result
