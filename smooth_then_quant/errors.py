"""User-facing errors: one exception type whose message names the problem and the fix."""


class SmoothQuantError(Exception):
    """A problem with the user's input (recipe, model, data, paths).

    The command line prints the message as one paragraph and exits with code 2;
    anything else that escapes is a bug in this toolkit and keeps its traceback.
    """
