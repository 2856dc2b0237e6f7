"""Errors a user can act on, raised while finding or loading a model."""


class ModelError(Exception):
    """A model could not be found, loaded or run here.

    The message is a complete, one-paragraph explanation for the user (what went wrong
    and what to do about it), so the CLI can print str(error) as is, without a traceback.
    """

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message
