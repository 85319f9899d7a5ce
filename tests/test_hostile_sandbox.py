"""Hostile model-written code against the python tool's jail (issue 13, class `sandbox`).

Each row is an escape a hostile or careless program tries; every row checks, on the host, that the escape failed
and that the tool answered with ordinary text (the chat goes on). The guard of old lived in the child's own
globals, so several rows first wipe `sys.modules['__main__']`: with a kernel jail there is nothing to switch off.
Small limits keep the module fast; rows that must hit a limit (CPU, wall clock, fork bomb) cost a second or two.
"""

from __future__ import annotations

import os
import socket
import stat
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from lmforge.inference import jail
from lmforge.inference.tools import PythonLimits, default_tools, run_tool
from lmforge.utils import repo_root

LIMITS = PythonLimits(cpu_seconds=1, wall_seconds=3.0, memory_bytes=256 * 2**20, max_output_chars=600,
                      max_file_bytes=2**20, max_processes=8, max_open_files=32, work_folder_bytes=4 * 2**20)
WIPE_GUARD = "import sys\nsys.modules['__main__'].__dict__.clear()\n"
needs_jail = pytest.mark.skipif(jail.jail_problem() is not None, reason=f"no jail here: {jail.jail_problem()}")


def run_jailed(code: str, limits: PythonLimits = LIMITS) -> str:
    """The python tool through `run_tool`, as the chat calls it: it must answer with text, never raise."""
    out = run_tool(default_tools(python_limits=limits), "python", code)
    assert isinstance(out, str) and out
    return out


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A host folder the jailed code aims at, holding one file it tries to steal, rename or delete."""
    (tmp_path / "victim.txt").write_text("precious")
    (tmp_path / "victim.txt").chmod(0o600)
    return tmp_path


def untouched(host: Path) -> bool:
    victim = host / "victim.txt"
    return (sorted(p.name for p in host.iterdir()) == ["victim.txt"] and victim.read_text() == "precious"
            and stat.S_IMODE(victim.stat().st_mode) == 0o600)


WRITE_ESCAPES = {
    "plain open": "open({t!r} + '/x', 'w').write('pwned')",
    "guard wiped, os.system": WIPE_GUARD + "import os\nprint(os.system('echo pwned > {t}/x'))",
    "guard wiped, subprocess sh": WIPE_GUARD + "import subprocess\nsubprocess.run(['/bin/sh', '-c', 'echo > {t}/x'])",
    "guard wiped, subprocess python": WIPE_GUARD + "import subprocess, sys\n"
                                                   "subprocess.run([sys.executable, '-c', 'open(%r, \"w\")' % "
                                                   "({t!r} + '/x')], check=True)",
    "os.open with dir_fd": "import os\nfd = os.open({t!r}, os.O_RDONLY)\n"
                           "os.write(os.open('x', os.O_CREAT | os.O_WRONLY, dir_fd=fd), b'pwned')",
    "mkdir": "import os\nos.mkdir({t!r} + '/d')",
    "mkdir with dir_fd": "import os\nos.mkdir('d', dir_fd=os.open({t!r}, os.O_RDONLY))",
    "rename out": "import os\nos.rename({t!r} + '/victim.txt', 'stolen')",
    "rename with dir_fd": "import os\nfd = os.open({t!r}, os.O_RDONLY)\n"
                          "os.rename('victim.txt', 'renamed', src_dir_fd=fd, dst_dir_fd=fd)",
    "unlink": "import os\nos.unlink({t!r} + '/victim.txt')",
    "unlink with dir_fd": "import os\nos.unlink('victim.txt', dir_fd=os.open({t!r}, os.O_RDONLY))",
    "mkfifo": "import os\nos.mkfifo({t!r} + '/fifo')",
    "symlink into the host": "import os\nos.symlink({t!r}, 'link')\nopen('link/x', 'w').write('pwned')",
    "symlink via /proc/1/root": "import os\nos.symlink('/proc/1/root' + {t!r}, 'link')\nopen('link/x', 'w')",
    "shutil.copy": "import shutil\nshutil.copy('main.py', {t!r})",
    "truncate": "import os\nos.truncate({t!r} + '/victim.txt', 0)",
    "chmod": "import os\nos.chmod({t!r} + '/victim.txt', 0o777)",
    "ctypes open": WIPE_GUARD + "import ctypes\nlibc = ctypes.CDLL(None)\n"
                                "print(libc.open(({t!r} + '/x').encode(), 0o101, 0o644))",
    "ctypes setuid 0 then write": WIPE_GUARD + "import ctypes\nprint(ctypes.CDLL(None).setuid(0))\n"
                                               "open({t!r} + '/x', 'w')",
}


@needs_jail
@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(WRITE_ESCAPES))
def test_sandbox_cannot_write_outside_the_work_folder(name, host):
    code = WRITE_ESCAPES[name].format(t=str(host))
    out = run_jailed(code)
    assert untouched(host), (name, out)
    assert "NameError" not in out, out  # the user's own error is reported, even after it wiped the globals


@needs_jail
@pytest.mark.timeout(30)
def test_sandbox_work_folder_is_writable():
    assert run_jailed("import os\nos.mkdir('d')\nopen('d/x', 'w').write('ok')\nos.mkfifo('f')\n"
                      "print(open('d/x').read(), os.getcwd())") == f"ok {jail.WORK_FOLDER}"


def _first_line(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.readline().strip() or None
    except OSError:
        return None


@needs_jail
@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", ["/etc/shadow", "/etc/passwd", str(repo_root() / "pyproject.toml"),
                                  str(Path(__file__)), str(Path.home() / ".bash_history"), "/proc/1/environ"])
def test_sandbox_cannot_read_host_files(path):
    secret = _first_line(path) if path != "/proc/1/environ" else None
    out = run_jailed(f"print('READ' + ':' + open({path!r}, errors='replace').read(200))")
    if path == "/proc/1/environ":  # the jail's own PID 1 (bwrap, no environment), never the host's
        assert "READ:" not in out or "PATH=" not in out, out
    else:
        assert "READ:" not in out, out
        assert secret is None or secret not in out


@needs_jail
@pytest.mark.timeout(30)
def test_sandbox_sees_no_host_folder_or_secret(monkeypatch):
    monkeypatch.setenv("LMFORGE_SECRET", "hunter2-" + uuid.uuid4().hex)
    secret = os.environ["LMFORGE_SECRET"]
    code = ("import os\nfor p in ['/root', '/home', '/tmp', '/work', '/run', '/var', {repo!r}]:\n"
            "    try: print(p, sorted(os.listdir(p))[:5])\n"
            "    except OSError as e: print(p, type(e).__name__)\n"
            "print(dict(os.environ))\n"
            "for pid in [p for p in os.listdir('/proc') if p.isdigit()]:\n"
            "    try: print(pid, open(f'/proc/{{pid}}/environ').read())\n"
            "    except OSError as e: print(pid, type(e).__name__)\n").format(repo=str(repo_root()))
    out = run_jailed(code)
    assert secret not in out and "hunter2" not in out
    python_home = Path(os.path.realpath(sys.base_prefix))  # the one host folder shown: the jail runs its Python
    for folder in ("/root", "/home", "/tmp", "/work", "/run", "/var", str(repo_root())):
        if python_home.is_relative_to(folder) and python_home != Path(folder):
            assert f"{folder} {[python_home.relative_to(folder).parts[0]]}" in out, out  # the path down to it only
        else:
            assert f"{folder} FileNotFoundError" in out, out


@needs_jail
@pytest.mark.timeout(30)
def test_sandbox_has_no_network():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.setblocking(False)
        port = server.getsockname()[1]
        out = run_jailed(WIPE_GUARD + f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                         "s.sendall(b'pwned')\nprint('CONNECTED')")
        with pytest.raises(BlockingIOError):
            server.accept()
    assert "CONNECTED" not in out and "Error" in out
    out = run_jailed("import socket\nprint(socket.getaddrinfo('example.com', 80))")
    assert "gaierror" in out


@needs_jail
@pytest.mark.timeout(30)
def test_sandbox_cannot_gain_privileges_or_raise_limits():
    out = run_jailed("import ctypes, os, resource\n"
                     "def libc(name, *args):\n"
                     "    if getattr(ctypes.CDLL(None), name)(*args) != 0: raise OSError(name)\n"
                     "for name, call in [('setuid', lambda: os.setuid(0)), ('chroot', lambda: os.chroot('/')),\n"
                     # as root of a user namespace of its own, the code could mount an unbounded tmpfs
                     "    ('userns', lambda: libc('unshare', 0x10000000)),\n"
                     "    ('mount', lambda: libc('mount', b'none', b'/sandbox', b'tmpfs', 0, None)),\n"
                     # memory that RLIMIT_AS stops counting once unmapped
                     "    ('memfd', lambda: os.memfd_create('m')), ('shm', lambda: libc('shmget', 0, 2**20, 0o1600)),\n"
                     "    ('msg', lambda: libc('msgget', 0, 0o1600)),\n"
                     # the jail's PID 1 keeps SETUID/SETGID where bwrap runs as root; a terminal would allow TIOCSTI
                     "    ('ptrace1', lambda: libc('ptrace', 16, 1, 0, 0)), ('tty', lambda: open('/dev/tty')),\n"
                     "    ('nproc', lambda: resource.setrlimit(resource.RLIMIT_NPROC, (-1, -1))),\n"
                     "    ('as', lambda: resource.setrlimit(resource.RLIMIT_AS, (-1, -1))),\n"
                     "    ('killhost', lambda: os.kill(%d, 15))]:\n"  # the test's own pid is not in the jail
                     "    try: call(); print(name, 'DONE')\n"
                     "    except (OSError, ValueError) as e: print(name, type(e).__name__)\n"
                     "try: os.kill(1, 9)\n"  # the jail's PID 1: refused, or ignored by the kernel
                     "except OSError: pass\n"
                     "print('still running')\n"
                     "print('uid', os.getuid(), 'nnp', [l for l in open('/proc/self/status') if 'NoNewPrivs' in l])"
                     % os.getpid())
    assert "DONE" not in out and "still running" in out, out
    assert "uid 0" not in out and "NoNewPrivs:\\t1" in out, out


def _processes_with(marker: str) -> list[int]:
    """Host processes whose command line holds `marker` (the jailed programs put a fresh one in their argv)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            continue
    return found


@needs_jail
@pytest.mark.timeout(60)
@pytest.mark.parametrize("parent_waits", [True, False], ids=["killed at the wall clock", "parent exits"])
def test_sandbox_detached_child_dies_with_the_jail(parent_waits):
    marker = "lmforge-marker-" + uuid.uuid4().hex
    code = (WIPE_GUARD + "import subprocess, sys, time\n"
            f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}],"
            " start_new_session=True)\n"
            "time.sleep(0.3)\nprint('spawned', flush=True)\n" + ("time.sleep(60)\n" if parent_waits else ""))
    out = run_jailed(code, PythonLimits(wall_seconds=4.0 if parent_waits else 20.0))
    assert out.startswith("spawned"), out
    assert _processes_with(marker) == []


@needs_jail
@pytest.mark.timeout(60)
def test_sandbox_fork_bomb_is_bounded_and_cleaned_up():
    marker = "lmforge-marker-" + uuid.uuid4().hex
    bomb = "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass"
    code = (WIPE_GUARD + "import os, subprocess, sys, time\n"
            f"subprocess.Popen([sys.executable, '-c', {bomb!r}, {marker!r}])\n"
            "time.sleep(0.8)\n"
            "print('processes', len([p for p in os.listdir('/proc') if p.isdigit()]), flush=True)\n")
    # the program ends while the bomb still runs: the jail's end must take the bomb with it
    limits = replace(LIMITS, wall_seconds=20.0)
    started = time.monotonic()
    out = run_jailed(code, limits)
    assert time.monotonic() - started < limits.wall_seconds
    assert out.startswith("processes "), out
    count = int(out.split()[1])
    # the bomb filled the jail's uid up to RLIMIT_NPROC and no further (bwrap's PID 1 counts when it is not the uid)
    assert LIMITS.max_processes <= count <= LIMITS.max_processes + 1, out
    assert _processes_with(marker) == []


@needs_jail
@pytest.mark.timeout(60)
@pytest.mark.parametrize("code, want", [
    ("x = bytearray(1024 * 2**20)\nprint('ALLOCATED')", "out of memory"),
    ("while True: pass", "CPU-time limit"),
    ("import time\ntime.sleep(60)", "wall time"),
    ("while True: print('x' * 1000)", "output larger than"),
    ("import sys\nwhile True: sys.stderr.write('y' * 1000)", "output larger than"),
    ("open('big', 'wb').write(b'0' * (64 * 2**20))\nprint('WROTE')", "File too large"),
    ("import os\nos.truncate(os.open('sparse', os.O_CREAT | os.O_WRONLY), 2**40)\nprint('WROTE')", "File too large"),
    ("for i in range(64): open(f'f{i}', 'wb').write(b'0' * (2**20 - 1))\nprint('WROTE')", "No space left"),
    ("open('/dev/shm/x', 'wb').write(b'0' * 2**20)\nprint('WROTE')", "Error"),
    ("fs = [open('main.py') for _ in range(10000)]\nprint('WROTE')", "Too many open files"),
], ids=["memory hog", "infinite loop", "sleep", "stdout flood", "stderr flood", "huge file", "sparse file",
        "fill the work folder", "/dev/shm", "open files"])
def test_sandbox_resource_limits_hold(code, want):
    # a generous wall clock where the CPU limit must be what stops the code, even on a loaded machine
    limits = replace(LIMITS, wall_seconds=30.0) if want == "CPU-time limit" else LIMITS
    started = time.monotonic()
    out = run_jailed(WIPE_GUARD + code, limits)
    assert want in out, out
    assert "ALLOCATED" not in out and "WROTE" not in out
    assert len(out) < limits.max_output_chars + 200
    assert time.monotonic() - started < limits.wall_seconds + 5


# -- where no jail can be made ----------------------------------------------------------------------------------


@pytest.fixture
def fresh_probe():
    """Re-probe the jail under the test's conditions, and again afterwards under the real ones."""
    jail.jail_problem.cache_clear()
    yield
    jail.jail_problem.cache_clear()


@pytest.mark.timeout(30)
def test_sandbox_refuses_without_bwrap(monkeypatch, tmp_path, fresh_probe):
    monkeypatch.setenv("PATH", str(tmp_path))  # a machine without bubblewrap
    target = tmp_path / "ran"
    out = run_jailed(f"open({str(target)!r}, 'w')")
    assert out.startswith("error: ") and "bubblewrap (bwrap) is not installed" in out
    assert "apt-get install bubblewrap" in out and "--unsafe-python" in out
    assert not target.exists()


@pytest.mark.timeout(30)
def test_sandbox_refuses_where_namespaces_are_forbidden(monkeypatch, tmp_path, fresh_probe):
    fake = tmp_path / "bwrap"  # a bwrap that fails as it does where user namespaces are disabled
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    out = run_jailed("print(1)")
    assert out.startswith("error: ") and "No permissions to creating new namespace" in out
    assert "user namespaces" in out and "--unsafe-python" in out


@pytest.mark.timeout(60)
def test_sandbox_unsafe_python_runs_unjailed_with_limits(monkeypatch, tmp_path, fresh_probe):
    monkeypatch.setenv("PATH", str(tmp_path))
    tools = default_tools(python_limits=replace(LIMITS, wall_seconds=30.0), unsafe_python=True)
    assert run_tool(tools, "python", "print(6 * 7)") == "42"
    assert "CPU-time limit" in run_tool(tools, "python", "while True: pass")
    assert "out of memory" in run_tool(tools, "python", "x = bytearray(1024 * 2**20)")
