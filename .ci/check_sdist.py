"""Lists an sdist and fails unless it holds every file a build needs: what git tracks under csrc/ and
torch_manualbp/, and the build's own files (setup.py, pyproject.toml, cuda_build_choice.py, MANIFEST.in),
README.md and LICENSE. Usage: python .ci/check_sdist.py dist/torch_manualbp-X.tar.gz"""
import subprocess
import sys
import tarfile

BUILD_FILES = ["setup.py", "pyproject.toml", "cuda_build_choice.py", "MANIFEST.in", "README.md", "LICENSE"]


def main(path):
    with tarfile.open(path) as sdist:
        names = sorted(member.name.split("/", 1)[1] for member in sdist.getmembers() if "/" in member.name)
    print(f"{path}: {len(names)} entries")
    for name in names:
        print("  " + name)
    tracked = subprocess.run(
        ["git", "ls-files", "csrc", "torch_manualbp"], capture_output=True, text=True, check=True
    ).stdout.split()
    missing = [name for name in BUILD_FILES + tracked if name not in names]
    if missing:
        sys.exit(f"{path} lacks what a build needs: {', '.join(missing)}")
    if "torch_manualbp/_build_config.py" in names:
        sys.exit(f"{path} carries torch_manualbp/_build_config.py, which belongs to one build")
    print(f"{path}: every file a build needs is there")


if __name__ == "__main__":
    main(sys.argv[1])
