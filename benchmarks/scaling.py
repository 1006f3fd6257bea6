"""NumPy + finite differences versus PyTorch autodiff on the OOF likelihood: ``gradfit bench``.

A thin script over :func:`gradfit.bench.run`; see that module for what is measured.

Usage::

    python benchmarks/scaling.py [--quick] [--json] [--out DIR]
"""

import sys

from gradfit.bench import main

if __name__ == "__main__":
    sys.exit(main())
