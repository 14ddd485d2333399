"""User-facing errors: the CLI prints their message as a one-line reason and exits non-zero."""


class AdaptError(Exception):
    """An error whose message is meant for the user (bad input, missing file, unreachable server)."""


class DataError(AdaptError):
    """A dataset could not be read or does not fit the request (empty folder, too few images, ...)."""


class BackboneError(AdaptError):
    """A backbone could not be created or its weights could not be loaded."""
