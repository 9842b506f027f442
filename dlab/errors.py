"""Errors a user can cause. The CLI turns each into one line on stderr and exit code 2."""


class DlabError(Exception):
    """Base class for errors caused by input, files or the environment (not bugs)."""

    exit_code = 2


class BadInput(DlabError):
    """An argument or option value that dlab cannot use."""


class BadFile(DlabError):
    """A file dlab was asked to read is missing, unreadable or not of the expected form."""


class ProfileError(BadFile):
    """A profiles/ data file failed validation (names the file and the field)."""
