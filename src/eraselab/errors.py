"""The one exception type users see: the CLI prints its message on one line and exits with code 2."""


class EraselabError(Exception):
    """A problem with the user's input or environment, stated in one sentence that says what to do."""
