"""The one exception type for bad user input.

Library code raises ``UserError`` with a single line that names the file, field or
flag at fault and says what to do; the script entry points (``trainer.cli.run``)
print it and exit with status 2, without a traceback.
"""


class UserError(Exception):
    """Bad input from the user (a flag, a file, a config field): one clear line."""
