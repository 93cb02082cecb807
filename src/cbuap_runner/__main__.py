"""Entry point: `python -m cbuap_runner [overrides]` and the `cbuap` console script."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from . import dist
from .errors import describe
from .schema import register_configs

_PACKAGED = Path(__file__).resolve().parent / "conf"
CONF_DIR = str(_PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parents[2] / "conf")
_failures: list[Exception] = []  # a single run's failure, handed from the job to main() past Hydra's own report


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _hydra_main(dcfg: DictConfig) -> None:
    from .job import run_job
    from .tracking import default_group

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        run_job(dcfg, Path(hc.runtime.output_dir), list(hc.overrides.task), multirun, default_group(hc),
                hc.job.num if multirun else None)
    except Exception as ex:  # Hydra would print "Error executing job with overrides: ..." before our one line
        _failures.append(ex)


def main() -> None:
    """Run Hydra; any failure becomes one line on stderr and exit code 1 (HYDRA_FULL_ERROR=1 shows the traceback)."""
    register_configs()
    before = os.environ.get("HYDRA_FULL_ERROR")
    show_traceback = before == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let exceptions reach us instead of Hydra's multi-line report
    _failures.clear()
    try:
        dist.setup_from_env()
        sys.argv = [sys.argv[0], *dist.shared_run_args(sys.argv[1:])]
        _hydra_main()
        if _failures:
            raise _failures.pop()
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)
    except Exception as ex:
        if show_traceback:
            raise
        sys.stderr.write(f"error: {describe(ex)}\n")
        sys.exit(1)
    finally:
        dist.teardown()
        if before is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = before


if __name__ == "__main__":
    main()
