"""Exceptions with messages meant for the person running the tool."""


class UnlearnableError(Exception):
    """Base class: a problem the user can fix (bad argument, missing data, ...)."""


class DataNotFoundError(UnlearnableError, FileNotFoundError):
    """A dataset was asked for but its files are not where we looked."""
