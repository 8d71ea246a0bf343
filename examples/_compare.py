"""What every example does at the end: print the library's gradient beside autograd's (and, where the
example works it out, the one computed by hand from the formulas), and judge the difference.

"library"  the network built from torch_manualbp layers; torch.autograd.grad walks its graph, and every
           torch_manualbp node in it runs its hand-written backward kernel (csrc/).
"autograd" the same network from native PyTorch ops, differentiated by PyTorch's own derivative formulas.
"by hand"  the backward formulas written out as plain tensor arithmetic in the example itself.
Agreement means within torch_manualbp's tolerance for the dtype (torch_manualbp/cli/tolerances.py).
"""

from torch_manualbp.cli.tolerances import agrees, allowed_difference, max_abs_difference

NUMBER_WIDTH = 12


def _as_matrix(tensor):
    """A 2-D view for printing: vectors as columns; wide matrices transposed (said so in the title)."""
    matrix = tensor.detach().reshape(-1, 1) if tensor.dim() < 2 else tensor.detach().reshape(-1, tensor.shape[-1])
    if matrix.shape[1] > matrix.shape[0]:
        return matrix.t(), True
    return matrix, False


def _format_row(row):
    return "".join(f"{value:>{NUMBER_WIDTH}.4e}" for value in row.tolist())


class GradientReport:
    """Collects comparisons; `finish()` prints the verdict and returns the exit code."""

    def __init__(self):
        self.largest = 0.0
        self.failures = []

    def compare(self, name, library, autograd, by_hand=None):
        columns = {"library": library, "autograd": autograd}
        if by_hand is not None:
            columns["by hand"] = by_hand
        matrices = {label: _as_matrix(value) for label, value in columns.items()}
        transposed = next(iter(matrices.values()))[1]
        shape = "x".join(map(str, library.shape)) or "scalar"
        print(f"\nd loss / d {name}   ({shape}{', shown transposed' if transposed else ''})")
        block_width = NUMBER_WIDTH * next(iter(matrices.values()))[0].shape[1]
        print("   ".join(f"{label:>{block_width}}" for label in matrices))
        rows = zip(*(matrix for matrix, _ in matrices.values()))
        for row in rows:
            print(" | ".join(_format_row(part) for part in row))
        allowed = allowed_difference(autograd)
        for label, value in columns.items():
            if label == "autograd":
                continue
            difference = max_abs_difference(value, autograd)
            self.largest = max(self.largest, difference)
            verdict = "ok" if agrees(difference, allowed) else "DISAGREE"
            print(f"max |{label} - autograd| = {difference:.2e}   (allowed {allowed:.1e})  {verdict}")
            if not agrees(difference, allowed):
                self.failures.append(f"{name} ({label})")

    def finish(self):
        if self.failures:
            print(f"\nFAILED: gradients disagree with autograd for {', '.join(self.failures)}")
            return 1
        print(f"\nall gradients agree with autograd (largest difference {self.largest:.2e})")
        return 0

