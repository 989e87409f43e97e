"""Mistakes a user can make (config, data, paths). Entry points print them without a traceback."""


class UserError(ValueError):
    """The message names the offending key, file:line or value, and gives a hint."""
