"""The one exception type whose message is shown to the user as a single line."""


class UserError(Exception):
    """Bad input: a config value, a path or a file. The message names it and says what to do."""


def describe(ex: BaseException) -> str:
    """One line for the user: the key or path at fault and what to do."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(ex, UserError):
        return str(ex)
    if isinstance(ex, MissingConfigException):
        missing = (ex.missing_cfg_file or "").strip("/")
        group, _, option = missing.rpartition("/")
        if group and ex.options:
            return f"{group}={option}: no such option; choose one of {', '.join(sorted(o for o in ex.options if not o.startswith('base_')))}"
        return _first_line(str(ex))
    cause = ex.__cause__ if isinstance(ex, ConfigCompositionException) else ex
    if isinstance(cause, OmegaConfBaseException):
        key = getattr(cause, "full_key", None)
        msg = _first_line(getattr(cause, "msg", None) or str(cause))
        if key and "not in" in msg:
            return f"{key}: unknown config key ({msg}); check the spelling, or list the keys with --cfg job"
        if key:
            return f"{key}: {msg}"
        return msg
    if isinstance(ex, (ConfigCompositionException, OverrideParseException)):
        return _first_line(str(ex))
    return f"{type(ex).__name__}: {_first_line(str(ex))} (set HYDRA_FULL_ERROR=1 for the traceback)"


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"
