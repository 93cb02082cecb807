#!/usr/bin/env python
"""Run records as tables, figures and the results document: the command line of `cbuap_runner.report`.

    python scripts/make_tables.py SWEEP_DIR [--out DIR] [--kind KIND] [--metrics a,b] [--rows a,b] [--no-figures]
    python scripts/make_tables.py --document docs/results/document.json
"""

import sys

from cbuap_runner.report.cli import main

if __name__ == "__main__":
    sys.exit(main())
