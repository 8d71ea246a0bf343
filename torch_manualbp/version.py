"""The package version, read from the installed metadata (pyproject.toml is the one source)."""
from importlib import metadata

try:
    __version__ = metadata.version("torch_manualbp")
except metadata.PackageNotFoundError:  # running from a source tree that was built in place
    __version__ = "0+unknown"
