"""`python -m cbuap_runner.study SPEC [key=value ...]`: run or continue a study (package docstring)."""

from __future__ import annotations

import sys

from ..errors import UserError
from .loop import run_study
from .spec import load_spec

USAGE = "usage: python -m cbuap_runner.study SPEC [trials=N] [name=NAME] [dir=DIR] [seed=S] [population=P]"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help") or "=" in args[0]:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        run_study(load_spec(args[0], args[1:]))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted (relaunch the same command to continue the study)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
