"""`python -m edgeplex ...`: the same command line as the `edgeplex` script, for a venv not on PATH."""

import sys

from .cli import main

sys.exit(main())
