"""The ``vebi`` command on tcmalloc when the machine has it.

glibc's malloc serves each block above its mmap threshold (128 KiB, rising to at most 32 MiB) with a
fresh mapping and unmaps it on free, so every batch of a CNN pays the page faults of its activations
again: on MobileNetV2 at 224 px, batch 32, more than half of a forward pass
(``benchmarks/bench_allocator.py``). tcmalloc keeps freed pages for the next batch; results are the same
bytes. A process's allocator is fixed when it starts, so the console script executes itself once more
with ``LD_PRELOAD`` naming the library, before any work is done.

``VEBI_MALLOC=system`` keeps the system's allocator; ``VEBI_MALLOC=/path/to/lib.so`` preloads that
library instead of the tcmalloc found in the usual library folders.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Callable, Mapping, Sequence

ENV = "VEBI_MALLOC"
LIBRARY = "libtcmalloc_minimal.so.4"
# allocators that already avoid the faults: a user's own preload is left as it is
KNOWN = ("tcmalloc", "jemalloc", "mimalloc")
# tcmalloc prints a line for every allocation over 1 GiB unless told otherwise
QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 60)}


def find_tcmalloc() -> str | None:
    """Path of ``libtcmalloc_minimal.so.4`` in this Python's prefix or the system's library folders."""
    folders = [os.path.join(sys.prefix, "lib"), "/usr/local/lib", *sorted(glob.glob("/usr/lib/*-linux-gnu")),
               "/usr/lib64", "/usr/lib"]
    for folder in folders:
        path = os.path.join(folder, LIBRARY)
        if os.path.isfile(path):
            return path
    return None


def preload_environment(environ: Mapping[str, str], args: Sequence[str],
                        find: Callable[[], str | None] = find_tcmalloc) -> dict[str, str] | None:
    """The environment to execute ``vebi`` again with, or None to go on as it is.

    None when: not Linux, ``VEBI_MALLOC=system``, a known allocator is preloaded already (also the
    guard against a second execution), no library is found, or ``args`` only ask for help."""
    choice = environ.get(ENV, "")
    if choice == "system" or not sys.platform.startswith("linux"):
        return None
    if not args or any(a in ("-h", "--help") for a in args):
        return None
    preloaded = environ.get("LD_PRELOAD", "")
    if any(name in preloaded for name in KNOWN) or (choice and choice in preloaded):
        return None
    library = choice or find()
    if library is None:
        return None
    if not os.path.isfile(library):
        print(f"vebi: warning: {ENV}={library} is not a file; running on the system's allocator", file=sys.stderr)
        return None
    env = {**QUIET, **environ}
    env["LD_PRELOAD"] = f"{library}:{preloaded}" if preloaded else library
    return env


def reexec_on_tcmalloc(args: Sequence[str]) -> None:
    """Replace this process by the same command line on tcmalloc, when :func:`preload_environment` says so.

    Not under a tracer (a debugger or coverage would lose its session). Returns only when nothing was done
    or the execution failed; then the command runs on the allocator it has."""
    env = preload_environment(os.environ, args)
    if env is None or sys.gettrace() is not None:
        return
    try:
        os.execve(sys.executable, sys.orig_argv, env)
    except OSError:
        return
