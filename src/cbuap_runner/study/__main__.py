"""`python -m cbuap_runner.study SPEC [key=value ...] [--choose]`: run or continue a study, or write the point it
chose on validation as a table building block (package docstring)."""

from __future__ import annotations

import sys

from ..errors import UserError
from .choose import choose
from .loop import run_study
from .spec import load_spec

USAGE = ("usage: python -m cbuap_runner.study SPEC [trials=N] [until_stable=true|false] [name=NAME] [dir=DIR] "
         "[seed=S] [population=P] [--choose [--force]]")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help") or "=" in args[0]:
        print(USAGE, file=sys.stderr)
        return 2
    from ..__main__ import CONF_DIR

    flags = {"--choose", "--force"}
    chosen, force = "--choose" in args[1:], "--force" in args[1:]
    if force and not chosen:
        print("error: --force: only with --choose", file=sys.stderr)
        return 2
    try:
        spec = load_spec(args[0], [a for a in args[1:] if a not in flags])
        if chosen:
            print(f"wrote {choose(spec, CONF_DIR, force=force)}")
        else:
            run_study(spec)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted (relaunch the same command to continue the study)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
