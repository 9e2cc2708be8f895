"""``python -m fastgen ...`` (what ``torchrun -m fastgen train ...`` runs): the ``fastgen`` command."""
import sys

from fastgen.cli import main

if __name__ == "__main__":
    sys.exit(main())
