"""Errors meant for people: one line that names the file and what is wrong."""


class UserError(Exception):
    """Bad input (file, folder, option). The CLI prints it as one line, without a traceback."""


class DataError(UserError):
    """A data file or folder that training cannot use; the message names the file."""
