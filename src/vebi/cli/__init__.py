"""The ``vebi`` command. Each topic registers its sub-commands on the shared app by import."""

from vebi.cli._app import app, fail, main, run

# one import per topic module; each module adds its commands to ``app``
# topic modules (one import line each) follow

__all__ = ["app", "fail", "main", "run"]
