"""`python -m torch_manualbp {demo,check,info,bench}`: the command line, torch_manualbp/cli/."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
