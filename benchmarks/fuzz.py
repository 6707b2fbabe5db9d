"""The long fuzz run: the property-based decoder tests of tests/test_fuzz.py with many more
examples (default 20 000 each; CI runs 200), then the schemathesis run of the HTTP API against
its OpenAPI description, tests/test_openapi_fuzz.py (default 2 000 generated requests per
operation beyond its examples and coverage cases; CI runs 25).

Usage: python benchmarks/fuzz.py [EXAMPLES [API_EXAMPLES]]"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    examples = sys.argv[1] if len(sys.argv) > 1 else "20000"
    api_examples = sys.argv[2] if len(sys.argv) > 2 else "2000"
    env = {**os.environ, "EDGEPLEX_FUZZ_EXAMPLES": examples, "EDGEPLEX_API_FUZZ_EXAMPLES": api_examples}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout", "0",
               str(ROOT / "tests" / "test_fuzz.py"), str(ROOT / "tests" / "test_openapi_fuzz.py")]
    sys.exit(subprocess.call(command, env=env, cwd=ROOT))
