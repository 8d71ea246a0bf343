"""`python -m torch_manualbp demo`: train a small classifier whose backward passes are the library's
hand-written kernels, and check its gradients against autograd's on the same weights as it trains.

The model is LinearSigmoid -> LinearSigmoid -> Linear -> SoftmaxCrossEntropyLoss on a 3-class spiral
(torch_manualbp/cli/spiral.py). At a few steps the same parameters also go through native PyTorch ops
(F.linear + torch.sigmoid, F.cross_entropy) and torch.autograd.grad differentiates that: the two sets of
gradients must agree within the dtype's tolerance (torch_manualbp/cli/tolerances.py), else the exit code is 1.
"""
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from ..modules import LinearSigmoid, SoftmaxCrossEntropyLoss
from .spiral import make_spiral
from .tolerances import agrees, allowed_difference, max_abs_difference

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
HIDDEN = 32
LEARNING_RATE = 0.05
GRADIENT_CHECKS = 5  # at the first step, the last, and evenly between
PROGRESS_LINES = 10  # progress lines printed when stdout is not a terminal
REFERENCE_DTYPES = {torch.bfloat16: torch.float32, torch.float16: torch.float32}  # see compare_with_autograd


def add_arguments(parser):
    parser.add_argument("--steps", type=int, default=300, help="training steps, full batch (default: 300)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data set and of the weights (default: 0)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="(default: float32)")
    parser.add_argument("--plot", metavar="FILE", help="write a PNG of the loss curves (needs matplotlib)")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="CPU threads (default: 1; the model's tensors are too small for more to pay off, and on a busy "
        "machine waiting for a second core costs more than the work)",
    )


def build_model(seed, device, dtype):
    torch.manual_seed(seed)
    return nn.Sequential(
        LinearSigmoid(2, HIDDEN), LinearSigmoid(HIDDEN, HIDDEN), nn.Linear(HIDDEN, 3)
    ).to(device=device, dtype=dtype)


def native_logits(model, params, points):
    """The model's forward from native ops, with `params` in the order of model.parameters()."""
    params = iter(params)
    hidden = points
    for layer in model:
        hidden = F.linear(hidden, next(params), next(params) if layer.bias is not None else None)
        if isinstance(layer, LinearSigmoid):
            hidden = torch.sigmoid(hidden)
    return hidden


def compare_with_autograd(model, loss, points, labels):
    """The native-op model's loss, and rows (name, shape, difference, allowed) comparing the library's loss
    and each parameter's .grad with that model's loss and autograd's gradients, on the same weights.

    bfloat16 and float16 models are compared with the native-op model run in float32 on the same
    (exactly representable) weights: the library accumulates in float32 and rounds once, while native
    ops in those dtypes round every intermediate result, so a same-dtype reference measures mostly its
    own rounding."""
    dtype = points.dtype
    reference_dtype = REFERENCE_DTYPES.get(dtype, dtype)
    names, params = zip(*model.named_parameters())
    reference_params = [p.detach().to(reference_dtype).requires_grad_() for p in params]
    native_loss = F.cross_entropy(native_logits(model, reference_params, points.to(reference_dtype)), labels)
    native_grads = torch.autograd.grad(native_loss, reference_params)
    rows = [("loss", (), max_abs_difference(loss, native_loss), allowed_difference(native_loss.detach(), dtype))]
    for name, param, native_grad in zip(names, params, native_grads):
        rows.append(
            (name, tuple(param.shape), max_abs_difference(param.grad, native_grad), allowed_difference(native_grad, dtype))
        )
    return native_loss.item(), rows


class Float32Adam:
    """Adam on float32 copies of the parameters (the usual mixed-precision recipe), written back after each
    step. In float16 Adam's squared gradients underflow to zero and its steps blow the weights up."""

    def __init__(self, params):
        self.params = list(params)
        # float32 and float64 parameters are their own master copy (same storage).
        self.masters = [p.detach() if p.dtype in (torch.float32, torch.float64) else p.detach().float() for p in self.params]
        self.adam = torch.optim.Adam(self.masters, lr=LEARNING_RATE)

    @torch.no_grad()
    def step(self):
        for param, master in zip(self.params, self.masters):
            master.grad = param.grad.to(master.dtype)
        self.adam.step()
        for param, master in zip(self.params, self.masters):
            param.copy_(master)


def checked_steps(steps):
    return sorted({round(i * (steps - 1) / (GRADIENT_CHECKS - 1)) for i in range(GRADIENT_CHECKS)} if steps > 1 else {0})


class Progress:
    """A plain-text progress bar: redrawn in place on a terminal, a line every tenth of the run otherwise."""

    def __init__(self, steps, stream):
        self.steps = steps
        self.stream = stream
        self.interactive = stream.isatty()
        self.every = max(1, steps // PROGRESS_LINES)
        self.open_line = False

    def update(self, step, loss, accuracy):
        done = step + 1
        if not self.interactive and done % self.every != 0 and done != self.steps:
            return
        width = 30
        filled = width * done // self.steps
        line = f"[{'#' * filled}{'.' * (width - filled)}] {done:>5}/{self.steps}  loss {loss:.4f}  accuracy {accuracy:6.1%}"
        if self.interactive:
            self.stream.write("\r" + line)
            self.open_line = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def end_line(self):
        if self.open_line:
            self.stream.write("\n")
            self.open_line = False


def print_check(step, rows, out):
    out.write(f"  gradient check at step {step}: library vs autograd on the same weights, max |difference|\n")
    for name, shape, difference, allowed in rows:
        verdict = "ok" if agrees(difference, allowed) else "DISAGREE"
        shape_text = "x".join(map(str, shape)) if shape else "scalar"
        out.write(f"    {name:<10} {shape_text:>7}  {difference:9.2e}  (allowed {allowed:8.2e})  {verdict}\n")


def check_plot_backend(path):
    """None when a PNG can be written, else the message that says why not."""
    if path is None:
        return None
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return f"demo: --plot {path} needs matplotlib, which is not installed here (pip install matplotlib)"
    return None


def write_plot(path, losses, accuracies, checks):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axes.plot(losses, label="training loss (library)")
    loss_axes.plot(
        [step for step, _ in checks], [native for _, native in checks], "o", label="native-op model (autograd), same weights"
    )
    loss_axes.set_xlabel("step")
    loss_axes.set_ylabel("cross-entropy")
    loss_axes.set_yscale("log")
    loss_axes.legend()
    accuracy_axes.plot(accuracies)
    accuracy_axes.set_xlabel("step")
    accuracy_axes.set_ylabel("training accuracy")
    accuracy_axes.set_ylim(0, 1)
    figure.suptitle("torch_manualbp demo: 3-class spiral")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def run(args):
    out = sys.stdout
    if args.steps < 1 or args.threads < 1:
        out.write("demo: --steps and --threads must be at least 1\n")
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        out.write("demo: --device cuda, but torch sees no CUDA device here\n")
        return 2
    plot_problem = check_plot_backend(args.plot)
    if plot_problem:
        out.write(plot_problem + "\n")
        return 2
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return train_and_check(args, out)
    finally:
        torch.set_num_threads(previous_threads)


def train_and_check(args, out):
    dtype = DTYPES[args.dtype]
    started = time.perf_counter()

    points, labels = make_spiral(seed=args.seed)
    points, labels = points.to(device=args.device, dtype=dtype), labels.to(args.device)
    model = build_model(args.seed, args.device, dtype)
    loss_fn = SoftmaxCrossEntropyLoss()
    optimizer = Float32Adam(model.parameters())

    out.write("torch_manualbp demo: a classifier trained through hand-written backward passes, checked against autograd\n")
    out.write(f"  data : 3-class spiral, {len(labels)} points in 2-D, generated from seed {args.seed}\n")
    out.write(f"  model: LinearSigmoid(2, {HIDDEN}) -> LinearSigmoid({HIDDEN}, {HIDDEN}) -> Linear({HIDDEN}, 3) "
              "-> SoftmaxCrossEntropyLoss\n")
    reference_dtype = str(REFERENCE_DTYPES.get(dtype, dtype)).replace("torch.", "")
    out.write(f"  check: the same weights through F.linear + torch.sigmoid and F.cross_entropy in {reference_dtype}, "
              "differentiated by autograd\n")
    out.write(f"  run  : {args.steps} steps of Adam (lr {LEARNING_RATE}, float32 state), full batch, "
              f"{args.dtype} on {args.device}, {args.threads} CPU thread{'s' if args.threads > 1 else ''}\n\n")

    progress = Progress(args.steps, out)
    to_check = set(checked_steps(args.steps))
    losses, accuracies, native_losses, disagreements = [], [], [], 0
    largest_relative = 0.0
    for step in range(args.steps):
        model.zero_grad(set_to_none=True)
        logits = model(points)
        loss = loss_fn(logits, labels)
        loss.backward()
        losses.append(loss.item())
        accuracies.append((logits.argmax(dim=1) == labels).float().mean().item())
        if step in to_check:
            native_loss, rows = compare_with_autograd(model, loss, points, labels)
            native_losses.append((step, native_loss))
            progress.update(step, losses[-1], accuracies[-1])
            progress.end_line()
            print_check(step, rows, out)
            disagreements += sum(not agrees(difference, allowed) for _, _, difference, allowed in rows)
            largest_relative = max([largest_relative] + [difference / allowed for _, _, difference, allowed in rows])
        else:
            progress.update(step, losses[-1], accuracies[-1])
        optimizer.step()
    progress.end_line()

    if args.plot:
        write_plot(args.plot, losses, accuracies, native_losses)
        out.write(f"\nwrote {args.plot}\n")
    elapsed = time.perf_counter() - started
    out.write(
        f"\nloss {losses[0]:.4f} -> {losses[-1]:.4f}, accuracy {accuracies[0]:.1%} -> {accuracies[-1]:.1%} "
        f"in {args.steps} steps ({elapsed:.1f} s)\n"
    )
    if disagreements:
        out.write(f"FAILED: {disagreements} gradient comparisons with autograd beyond tolerance\n")
        return 1
    out.write(
        f"gradients agree with autograd at all {len(to_check)} checks "
        f"(largest difference {largest_relative:.1%} of the allowed)\n"
    )
    return 0
