"""The ``vebi`` command. Each topic registers its sub-commands on the shared app by import."""

from vebi.cli._app import app, fail, main, run

# one import per topic module; each module adds its commands to ``app``
# topic modules (one import line each) follow
from vebi.cli import core  # noqa: F401,E402  (layers, collect, fit)
from vebi.cli import interpret  # noqa: F401,E402
from vebi.cli import explain  # noqa: F401,E402
from vebi.cli import evaluate  # noqa: F401,E402
from vebi.cli import report  # noqa: F401,E402
from vebi.cli import an8flower  # noqa: F401,E402  (an8flower, train)

__all__ = ["app", "fail", "main", "run"]
from vebi.cli import demo  # noqa: F401,E402
