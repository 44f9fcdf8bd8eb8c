"""Exceptions raised for bad user input.

Every error the package raises on purpose derives from :class:`CtmRlError`, so the command-line tools can
print its message and exit cleanly instead of dumping a stack trace. Each message names the problem and
the fix.
"""


class CtmRlError(ValueError):
    """Base class for input errors raised by ctm-rl."""


class ConfigError(CtmRlError):
    """Inconsistent or invalid hyperparameters."""


class UnknownEnvError(CtmRlError):
    """An environment id that is neither registered nor importable."""


class UnsupportedSpaceError(CtmRlError):
    """An observation or action space the policy cannot handle."""


class CheckpointError(CtmRlError):
    """A checkpoint that is missing, corrupt, or does not match the requested model."""


class RunBusyError(CtmRlError):
    """A run folder that another process is training now."""
