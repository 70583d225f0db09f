"""The one exception type vebi raises for bad input; the CLI turns it into one line and exit 2."""


class VebiError(ValueError):
    """A problem with the user's input (file, value, model, data) described in one sentence.

    A ``ValueError``, so callers that already catch bad values catch it too.
    """


class VebiWarning(UserWarning):
    """Something that works but is probably not what the user wants (tiny classes, a class order
    that looks wrong) or that vebi read differently than asked or left out (skipped files); the CLI
    prints it as one line."""
