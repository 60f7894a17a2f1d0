"""The one exception type for bad user input, and the one unknown-key check that raises it.

Library code raises ``UserError`` with a single line that names the file, field or
flag at fault and says what to do; the script entry points (``trainer.cli.run``)
print it and exit with status 2, without a traceback.
"""


class UserError(Exception):
    """Bad input from the user (a flag, a file, a config field): one clear line."""


def check_keys(
    obj: object,
    allowed: set[str] | frozenset[str],
    where: str = "",
    *,
    file: object = None,
    required: tuple[str, ...] = (),
    hint: str = "",
) -> dict:
    """The one unknown-key check for config mappings (mixture YAML, study YAML, model config).

    ``obj`` must be a dict whose keys are all in ``allowed`` and include ``required``; otherwise a
    UserError ``"{file}: {where}.{key}: problem"`` names the exact field (``where`` is the dotted
    path of ``obj`` inside the file, "" at the top). Returns ``obj``.
    """

    def at(key: str = "") -> str:
        field = ".".join(x for x in (where, key) if x)
        return ": ".join(str(x) for x in (file, field) if x)

    if not isinstance(obj, dict):
        raise UserError(f"{at()}: expected a mapping, got {type(obj).__name__}")
    for key in obj:
        if key not in allowed:
            more = f"; {hint}" if hint else ""
            raise UserError(f"{at(str(key))}: unknown key (allowed: {', '.join(sorted(allowed))}){more}")
    for key in required:
        if key not in obj:
            raise UserError(f"{at(key)}: required key is missing")
    return obj
