"""The one exception type whose message is shown to the user as a single line."""

import re


class UserError(Exception):
    """Bad input: a config value, a path or a file. The message names it and says what to do."""


def describe(ex: BaseException) -> str:
    """One line for the user: the key or path at fault and what to do."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException, ValidationError

    if isinstance(ex, UserError):
        return _one_line(str(ex))
    if isinstance(ex, OverrideParseException):
        return (f"{ex.override!r}: cannot parse this override ({_first_line(ex.message)}); write it as key=value, "
                "quoting values with special characters")
    if isinstance(ex, MissingConfigException):
        missing = (ex.missing_cfg_file or "").strip("/")
        group, _, option = missing.rpartition("/")
        if group and ex.options:
            options = sorted(ex.options)
            return f"{group}={option}: no such option; choose one of {', '.join(options)}"
        return _first_line(str(ex))
    # Hydra raises some composition errors from None: the config error is then the context
    cause = (ex.__cause__ or ex.__context__) if isinstance(ex, ConfigCompositionException) else ex
    if isinstance(cause, OmegaConfBaseException):
        key = getattr(cause, "full_key", None)
        msg = _first_line(getattr(cause, "msg", None) or str(cause))
        if key and isinstance(cause, MissingMandatoryValue):
            return f"{key}: no value given; set it on the command line ({key}=...)"
        if key and "not in" in msg:
            return unknown_key_line(key, _chosen_option(cause), msg)
        choice = re.match(r"Invalid value '(.*)', expected one of \[(.*)\]", msg)
        if key and choice:  # a closed choice (schema.Choice)
            return f"{key}={choice.group(1)!r}: must be one of {choice.group(2)}"
        if key and isinstance(cause, ValidationError):
            return f"{key}: {msg}; give a value of that type"
        if key:
            return f"{key}: {msg}"
        return msg
    if isinstance(ex, ConfigCompositionException):
        return _first_line(str(ex))
    if isinstance(ex, OSError) and ex.filename:
        return (f"{ex.filename}: {ex.strerror or _first_line(str(ex))}; choose a path that can be read and written "
                "(hydra.run.dir=..., cache_dir=...)")
    return f"{type(ex).__name__}: {_first_line(str(ex))} (set HYDRA_FULL_ERROR=1 for the traceback)"


def _chosen_option(cause: BaseException) -> str | None:
    """The option whose node refused the key: the `name` of its group's node (attack, training, ...)."""
    try:
        node = cause.parent_node  # type: ignore[attr-defined]
        while node._get_parent() is not None and node._get_parent()._get_parent() is not None:
            node = node._get_parent()
        return str(node["name"])
    except Exception:  # no node to ask: the message names no option
        return None


def unknown_key_line(key: str, chosen: str | None, msg: str = "") -> str:
    """A key the chosen option's schema lacks: which options of its group have it, if any."""
    from .schema import options_having

    found = options_having(key)
    if found and found[1]:
        group, having = found
        return (f"{key}: {f'{group}={chosen}' if chosen else 'the chosen option'} has no such key; "
                f"{group}={', '.join(having)} {'has' if len(having) == 1 else 'have'} it")
    detail = f" ({msg})" if msg else ""
    return f"{key}: unknown config key{detail}; check the spelling, or list the keys with --cfg job"


def _one_line(text: str) -> str:
    """All of `text` on one line (a message may quote a multi-line error from a library)."""
    return " ".join(line.strip() for line in text.strip().splitlines() if line.strip()) or "unknown error"


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"
