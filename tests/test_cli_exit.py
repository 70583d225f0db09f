"""The console script's way out: the exit status, the output, the threads and the atexit handlers are
those of a normal exit; only the interpreter's teardown is skipped. (The console script's statuses
themselves: ``test_cli_core.py`` and ``test_checkpoint.py`` run it.)"""

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import atexit, sys, threading, time
    from pathlib import Path
    from vebi.cli._app import leave

    out = Path(sys.argv[1])

    class Teardown:  # its finalizer runs when the interpreter clears this module at teardown
        def __del__(self):
            (out / "teardown").write_text("ran")

    kept = Teardown()

    def late_writer():
        time.sleep(0.3)
        (out / "thread").write_text("done")

    threading.Thread(target=late_writer).start()  # not a daemon: the exit waits for it
    atexit.register(lambda: (out / "first").write_text((out / "thread").read_text()))
    atexit.register(lambda: print("handler", flush=False))  # registered last: runs first
    sys.stdout.write("x" * 200_000 + "\\n")  # written in pieces as the buffer fills; its tail on the way out
    leave(int(sys.argv[2]))
""")


def _run(tmp_path: Path, status: int) -> subprocess.CompletedProcess:
    script = tmp_path / "leave.py"
    script.write_text(SCRIPT)
    return subprocess.run([sys.executable, str(script), str(tmp_path), str(status)], capture_output=True, text=True,
                          timeout=60)


def test_leave_keeps_the_status_output_threads_and_handlers_of_a_normal_exit(tmp_path):
    proc = _run(tmp_path, 3)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "x" * 200_000 + "\nhandler\n"
    assert (tmp_path / "thread").read_text() == "done"
    assert (tmp_path / "first").read_text() == "done"  # the handlers ran after the thread was joined
    assert not (tmp_path / "teardown").exists()  # the teardown itself was skipped

