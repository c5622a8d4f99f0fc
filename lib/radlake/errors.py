"""Errors that radlake raises on bad input; every one subclasses :class:`RadlakeError`.

The command line prints these as one clear line (no traceback) and exits with status 2.
"""


class RadlakeError(Exception):
    """Base class: a problem with radlake's input or set-up, not a bug in radlake."""


class ConfigError(RadlakeError):
    """A configuration file or ``--set`` override names an unknown key or a wrong value."""


class SetupError(RadlakeError):
    """Something ``make setup`` installs is missing (for example the Delta Lake jars)."""
