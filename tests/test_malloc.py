"""The console script on tcmalloc: when it executes itself again, with what, and that the library is loaded."""

import os
import subprocess
import sys

import pytest

from vebi.cli._malloc import ENV, find_tcmalloc, preload_environment

@pytest.fixture
def library(tmp_path):
    path = tmp_path / "libfast.so"
    path.write_bytes(b"")
    return str(path)


def test_a_command_gets_the_library_preloaded_and_tcmalloc_quiet(library):
    env = preload_environment({"PATH": "/bin", "LD_PRELOAD": "/opt/libother.so"}, ["evaluate", "run"],
                              find=lambda: library)
    assert env["LD_PRELOAD"] == f"{library}:/opt/libother.so" and env["PATH"] == "/bin"
    assert int(env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) >= 1 << 40


def test_the_users_choices_win(library, capsys):
    assert preload_environment({ENV: library}, ["demo"], find=lambda: None)["LD_PRELOAD"] == library
    assert preload_environment({ENV: "system"}, ["demo"], find=lambda: library) is None
    assert preload_environment({"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": "7"}, ["demo"],
                               find=lambda: library)["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"] == "7"
    assert preload_environment({ENV: library + ".missing"}, ["demo"], find=lambda: library) is None
    assert f"{ENV}={library}.missing is not a file" in capsys.readouterr().err


@pytest.mark.parametrize("preloaded", ["/usr/lib/libjemalloc.so.2", "/x/libtcmalloc_minimal.so.4:/y/libz.so"])
def test_no_second_execution_once_an_allocator_is_preloaded(library, preloaded):
    assert preload_environment({"LD_PRELOAD": preloaded}, ["demo"], find=lambda: library) is None


def test_nothing_to_do_for_help_or_without_a_library(library):
    for args in ([], ["--help"], ["evaluate", "-h"]):
        assert preload_environment({}, args, find=lambda: library) is None
    assert preload_environment({}, ["demo"], find=lambda: None) is None


def test_the_reexecuted_process_runs_on_tcmalloc_with_the_same_command_line():
    """A real execution: the child maps the library and sees its own arguments again (once)."""
    found = find_tcmalloc()
    assert found, "libtcmalloc_minimal.so.4 not found: install Debian's libtcmalloc-minimal4 (scripts/setup.sh does)"
    code = ("import os, sys; from vebi.cli._malloc import reexec_on_tcmalloc; "
            "print('start', flush=True); reexec_on_tcmalloc(sys.argv[1:]); "
            "print(sys.argv[1:], os.environ.get('LD_PRELOAD')); print(open('/proc/self/maps').read())")
    env = {k: v for k, v in os.environ.items() if k not in (ENV, "LD_PRELOAD")}
    done = subprocess.run([sys.executable, "-c", code, "collect", "x"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines.count("start") == 2  # ran, executed itself, ran again; not a third time
    assert lines[2] == f"['collect', 'x'] {found}"
    assert found in done.stdout.split(lines[2], 1)[1]  # mapped by the loader
    system = subprocess.run([sys.executable, "-c", code, "collect"], env={**env, ENV: "system"},
                            capture_output=True, text=True, timeout=120)
    assert system.stdout.splitlines()[:2] == ["start", "['collect'] None"] and "tcmalloc" not in system.stdout
