"""The long fuzz run: the property-based decoder tests of tests/test_fuzz.py with many more
examples (default 20 000 each; CI runs 200). Usage: python benchmarks/fuzz.py [EXAMPLES]"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    examples = sys.argv[1] if len(sys.argv) > 1 else "20000"
    env = {**os.environ, "EDGEPLEX_FUZZ_EXAMPLES": examples}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout", "0",
               str(ROOT / "tests" / "test_fuzz.py")]
    sys.exit(subprocess.call(command, env=env, cwd=ROOT))
