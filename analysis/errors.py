"""The one exception of the analysis package (its own module so that every other module can raise it)."""


class AnalysisError(Exception):
    """Input the user can fix. The message is one line: what is wrong, and what to do about it."""
