import sys

from fastgen.compile_gate.cli import main

sys.exit(main())
