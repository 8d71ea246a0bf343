"""Fails unless a wheel's metadata pins the torch release of the environment that built it
(Requires-Dist: torch==X.Y.Z): its compiled module needs that release's C++ ABI.
Usage: python .ci/check_wheel_pin.py dist/torch_manualbp-X-cp311-cp311-linux_x86_64.whl"""
import sys
import zipfile

import torch


def main(path):
    with zipfile.ZipFile(path) as wheel:
        [metadata] = [name for name in wheel.namelist() if name.endswith(".dist-info/METADATA")]
        requires = [line for line in wheel.read(metadata).decode().splitlines() if line.startswith("Requires-Dist:")]
    expected = f"Requires-Dist: torch=={torch.__version__.split('+')[0]}"
    print(f"{path}: " + "; ".join(requires))
    if expected not in requires:
        sys.exit(f"{path}: expected '{expected}' in its metadata")


if __name__ == "__main__":
    main(sys.argv[1])
