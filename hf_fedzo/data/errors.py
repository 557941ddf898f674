"""The error every data problem ends in: one line naming the file (or row), the place and what is wrong."""


class DataError(ValueError):
    """Unreadable data: an empty, non-UTF-8 or malformed file, a header without rows, an empty cell, a bad label.

    Recipes print it as one ``error:`` line and exit with status 2, like a bad flag.
    """
