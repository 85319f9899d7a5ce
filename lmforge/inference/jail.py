"""An OS jail for the model-written Python the chat's `python` tool runs.

Why a jail and not a guard inside the interpreter: anything the child's own Python does to police itself (audit
hooks, deny lists in its globals) can be switched off by the code it polices, and Python's documentation says audit
hooks are no security boundary. So the kernel enforces every rule here, through bubblewrap (`bwrap`, Debian's
`bubblewrap`):

- a private mount namespace whose root holds only what the interpreter needs, read-only: the shared libraries
  (`/usr/lib*`, `/lib*`), `/etc/ld.so.cache` and the Python installation in use (its stdlib; the child runs as
  `python -I -S`, so no site-packages). Home, the checkout, `/tmp`, `/work`, sockets and secrets of the host are
  simply absent; every mount is `nosuid` and `no_new_privs` is set;
- the only writable place is `/sandbox`, a fresh size-bounded tmpfs that is the working directory;
- new network (no interfaces but a downed loopback), IPC, UTS and PID namespaces; the PID namespace dies with its
  PID 1, which dies with bwrap, which dies with us (`--die-with-parent`), and `--new-session` stops TIOCSTI;
- an unprivileged uid: as root (no user namespace, so the kernel counts the uid's processes), the bootstrap drops
  from root to a fresh uid of its own after setting the limits, with every capability but SETUID/SETGID dropped
  beforehand; as another user, a user namespace maps uid 65534 onto that user and forbids nested ones;
- a seccomp filter that refuses new user namespaces (in which the code would hold capabilities: mounts of
  unbounded tmpfs, more kernel surface), memory that outlives its mapping (memfd, System V IPC) and any other
  system-call ABI than the machine's own;
- kernel resource limits set before the user's code starts (it cannot raise them: that needs CAP_SYS_RESOURCE in
  the initial user namespace): CPU seconds, address space, file size, open files, processes (RLIMIT_NPROC binds
  because the uid is not root), and a wall clock after which the whole PID namespace is killed. Output goes to a
  file bounded by the file-size limit, and only its head and tail are read back. Memory in all is bounded by
  max_processes * memory_bytes + work_folder_bytes plus kernel buffers (pipes, sockets) bounded by the open-file
  limit; a memory cgroup would bound it tighter, but is rarely delegated (containers, CI) and is not used.

Where no jail can be made (no bwrap, namespaces forbidden), `run_python` refuses with the reason and the fix,
unless the caller passes `unsafe=True` (the CLI's `--unsafe-python`): then the code runs in a plain child process
with the same resource limits and none of the isolation.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO

WORK_FOLDER = "/sandbox"  # the working directory inside the jail, the only writable place
_NOBODY = 65534  # the uid and gid inside a user namespace (an unprivileged caller's jail)
# Root's jails drop to a uid of their own drawn from here, so that RLIMIT_NPROC counts one jail's processes only
# and never binds the host's real users (uids below 2**30 in practice).
_JAIL_UIDS = (1 << 30, 1 << 31)
_SYSTEM_LIBRARIES = ("/usr/lib", "/usr/lib64", "/usr/lib32", "/lib", "/lib64", "/lib32")
_ENABLE_HINT = ("install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap) and allow user namespaces "
                "(sysctl user.max_user_namespaces=15000 kernel.unprivileged_userns_clone=1, and on Ubuntu "
                "kernel.apparmor_restrict_unprivileged_userns=0; in Docker run with --security-opt seccomp=unconfined "
                "or --privileged)")


# Per machine: AUDIT_ARCH, then system-call numbers. The filter refuses every other ABI (i386, x32) outright.
_SYSCALLS = {
    "x86_64": (0xC000003E, {"unshare": 272, "clone": 56, "clone3": 435, "memfd_create": 319, "shmget": 29,
                            "msgget": 68}),
    "aarch64": (0xC00000B7, {"unshare": 97, "clone": 220, "clone3": 435, "memfd_create": 279, "shmget": 194,
                             "msgget": 186}),
}
_CLONE_NEWUSER = 0x10000000


@dataclass(frozen=True)
class PythonLimits:
    """Kernel limits of one run. Each is per process (the kernel has no per-jail rlimit), so the jail's totals are
    these times max_processes; the defaults fit short scripts and keep that product a few GB."""

    cpu_seconds: int = 2  # RLIMIT_CPU of every process: SIGXCPU at this many CPU seconds, SIGKILL one later
    wall_seconds: float = 5.0  # then the whole jail (its PID namespace) is killed
    memory_bytes: int = 512 * 2**20  # RLIMIT_AS of every process: allocations beyond it raise MemoryError
    max_output_chars: int = 4000  # what the model reads back (the head and tail of stdout and stderr)
    max_file_bytes: int = 8 * 2**20  # RLIMIT_FSIZE: largest file it may write, the captured output included
    max_processes: int = 8  # RLIMIT_NPROC: processes and threads of the jail's uid
    max_open_files: int = 64  # RLIMIT_NOFILE
    work_folder_bytes: int = 64 * 2**20  # size of the tmpfs at /sandbox (all files together)


# Runs in the jailed interpreter before the user's code: limits first (as root, hard limits too), then, when it
# is root outside any user namespace, the drop to the jail's own uid, which also clears the last two capabilities.
# It is source text because it must run in the fresh interpreter. After the drop nothing here is a guard.
_BOOTSTRAP = r'''
import os, resource, sys
_uid, _cpu, _mem, _fsize, _nproc, _nofile = (int(a) for a in sys.argv[1:7])
for _which, _soft, _hard in ((resource.RLIMIT_CPU, _cpu, _cpu + 1), (resource.RLIMIT_AS, _mem, _mem),
                             (resource.RLIMIT_FSIZE, _fsize, _fsize), (resource.RLIMIT_CORE, 0, 0),
                             (resource.RLIMIT_NOFILE, _nofile, _nofile), (resource.RLIMIT_NPROC, _nproc, _nproc)):
    if _soft >= 0:
        resource.setrlimit(_which, (_soft, _hard))
if _uid > 0 and os.getuid() == 0:
    os.setgroups([])
    os.setresgid(_uid, _uid, _uid)
    os.setresuid(_uid, _uid, _uid)
sys.argv = ["main.py"]
def _main(sys=sys):  # local names: the user's code may wipe this module's globals, as it may do anything
    with open("main.py", encoding="utf-8") as f:
        code = compile(f.read(), "main.py", "exec")
    try:
        exec(code, {"__name__": "__main__"})
    except SystemExit:
        raise
    except BaseException as e:  # the traceback starts at the user's code, not at this bootstrap
        import traceback
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)
        sys.exit(1)
del _uid, _cpu, _mem, _fsize, _nproc, _nofile, _which, _soft, _hard
_main()
'''


def _interpreter() -> Path:
    """The base installation's interpreter (a venv's python is only a link to it, and its packages are not used)."""
    versioned = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    return Path(os.path.realpath(versioned if versioned.exists() else sys.executable))


def _visible_paths() -> list[str]:
    """Host folders the jail shows read-only: shared libraries and the Python installation, nothing above them."""
    paths = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix, _interpreter().parent)}
    paths |= {p for p in _SYSTEM_LIBRARIES if os.path.isdir(p) and not os.path.islink(p)}
    kept: list[str] = []
    for path in sorted(paths):  # an ancestor sorts before its descendants and covers them
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept


def _filesystem_args() -> list[str]:
    """bwrap arguments that build the jail's root: read-only binds, merged-/usr links, /proc and /dev."""
    args: list[str] = []
    made = {"/"}

    def bind(path: str) -> None:
        for parent in reversed(Path(path).parents):  # bwrap would make them 0700 (the jail's uid could not enter)
            if str(parent) not in made:
                args.extend(["--perms", "0755", "--dir", str(parent)])
                made.add(str(parent))
        args.extend(["--ro-bind", path, path])

    for path in _visible_paths():
        bind(path)
    if os.path.isfile("/etc/ld.so.cache"):  # the dynamic loader's index of the libraries bound above
        bind("/etc/ld.so.cache")
    for path in _SYSTEM_LIBRARIES:
        if os.path.islink(path):
            args.extend(["--symlink", os.readlink(path), path])
    return args + ["--proc", "/proc", "--dev", "/dev"]


def _seccomp_program() -> bytes | None:
    """Classic BPF for bwrap's --seccomp, or None on a machine it does not know.

    EPERM for unshare/clone asking for CLONE_NEWUSER (as root of a namespace of its own the code would hold
    capabilities: mounts of unbounded tmpfs, more kernel surface) and ENOSYS for clone3 (its flags sit behind a
    pointer; the C library falls back to clone). EPERM for memory no RLIMIT_AS counts once unmapped: memfd_create,
    System V shared memory and message queues. EPERM for any foreign ABI, which would bypass all of this.
    """
    known = _SYSCALLS.get(platform.machine())
    if known is None:
        return None
    arch, nr = known
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ/JGE/JSET|K, BPF_RET|K
    # (code, jump if true, jump if false, k); a jump is the number of instructions to skip, or a label of the end
    body = [(ld, 0, 0, 4), (jeq, 0, "eperm", arch),  # seccomp_data.arch
            (ld, 0, 0, 0), (jge, "eperm", 0, 0x40000000),  # seccomp_data.nr; x32 numbers have bit 30 set
            (jeq, "enosys", 0, nr["clone3"])]
    body += [(jeq, "eperm", 0, nr[name]) for name in ("memfd_create", "shmget", "msgget")]
    body += [(jeq, 1, 0, nr["unshare"]), (jeq, 0, "allow", nr["clone"]),
             (ld, 0, 0, 16), (jset, "eperm", "allow", _CLONE_NEWUSER)]  # low word of args[0], the flags
    end = {"allow": len(body), "eperm": len(body) + 1, "enosys": len(body) + 2}
    returns = [(ret, 0, 0, 0x7FFF0000), (ret, 0, 0, 0x00050000 | 1), (ret, 0, 0, 0x00050000 | 38)]

    def skip(target: int | str, at: int) -> int:
        return target if isinstance(target, int) else end[target] - at - 1

    program = [(code, skip(jt, i), skip(jf, i), k) for i, (code, jt, jf, k) in enumerate(body)] + returns
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in program)


def _bwrap_command(bwrap: str, limits: PythonLimits, code_fd: int, seccomp_fd: int | None,
                   info_fd: int) -> list[str]:
    """The whole command line: namespaces, identity, file system, environment, then the bootstrap."""
    cmd = [bwrap, "--info-fd", str(info_fd), "--die-with-parent", "--new-session", "--unshare-ipc", "--unshare-pid",
           "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    if os.geteuid() == 0:
        # A user namespace made by root maps the jail onto uid 0, which RLIMIT_NPROC never binds; so no user
        # namespace, and the bootstrap drops to a fresh uid with the only two capabilities it keeps.
        uid = secrets.randbelow(_JAIL_UIDS[1] - _JAIL_UIDS[0]) + _JAIL_UIDS[0]
        cmd += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        uid = 0  # already unprivileged: the user namespace below maps 65534 onto the caller
        cmd += ["--unshare-user", "--disable-userns", "--uid", str(_NOBODY), "--gid", str(_NOBODY)]
    if seccomp_fd is not None:
        cmd += ["--seccomp", str(seccomp_fd)]
    cmd += _filesystem_args()
    cmd += ["--size", str(limits.work_folder_bytes), "--perms", "0777", "--tmpfs", WORK_FOLDER,
            "--perms", "0444", "--file", str(code_fd), f"{WORK_FOLDER}/main.py", "--chdir", WORK_FOLDER,
            "--clearenv"]
    for name, value in _child_env(WORK_FOLDER).items():
        cmd += ["--setenv", name, value]
    return cmd + ["--", str(_interpreter()), *_bootstrap_args(limits, uid, rlimit_nproc=True)]


def _bootstrap_args(limits: PythonLimits, uid: int, rlimit_nproc: bool) -> list[str]:
    # -I: no environment, no user site; -S: no site-packages; -u: prints and tracebacks stay in order.
    nproc = limits.max_processes if rlimit_nproc else -1
    return ["-I", "-S", "-u", "-X", "utf8", "-c", _BOOTSTRAP, str(uid), str(limits.cpu_seconds),
            str(limits.memory_bytes), str(limits.max_file_bytes), str(nproc), str(limits.max_open_files)]


def _child_env(home: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": home, "TMPDIR": home, "OMP_NUM_THREADS": "1"}


@lru_cache(maxsize=1)
def jail_problem() -> str | None:
    """None when a jail can be made here, else why not and how to fix it. Probed once per process by jailing a
    trivial program, so that a kernel or container that forbids namespaces is found before any model code runs."""
    if not sys.platform.startswith("linux"):
        return f"the jail needs Linux namespaces (this is {sys.platform})"
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap (bwrap) is not installed"
    probe = PythonLimits(cpu_seconds=5, wall_seconds=20.0, memory_bytes=256 * 2**20, max_output_chars=400)
    with tempfile.TemporaryDirectory(prefix="lmforge-py-") as tmp:
        rc, killed, text = _run_in(Path(tmp), "print('jail ok')", probe, bwrap)
    if rc == 0 and text.strip() == "jail ok":
        return None
    first = next((line for line in text.splitlines() if line.strip()), f"exit status {rc}")
    return f"bwrap cannot make the jail: {'timed out' if killed else first.strip()}"


def _refusal(problem: str) -> str:
    """The tool's answer when no jail can be made: what is wrong, how to enable the jail, how to opt out."""
    return (f"error: the python tool runs code only in an OS jail, and none can be made here: {problem}. To enable "
            f"it, {_ENABLE_HINT}. To run model-written code without any isolation instead, pass --unsafe-python.")


def run_python(code: str, limits: PythonLimits = PythonLimits(), unsafe: bool = False) -> str:
    """Run `code` in the jail; return its stdout and stderr (head and tail) and how it ended, as text.

    Without a jail it refuses (text starting with "error:") unless `unsafe`, which runs it unjailed.
    """
    problem = jail_problem()
    if problem is not None and not unsafe:
        return _refusal(problem)
    bwrap = shutil.which("bwrap") if problem is None else None
    with tempfile.TemporaryDirectory(prefix="lmforge-py-") as tmp:
        rc, killed, text = _run_in(Path(tmp), code, limits, bwrap)
    return _describe(text, rc, killed, limits, jailed=bwrap is not None)


def _run_in(tmp: Path, code: str, limits: PythonLimits, bwrap: str | None) -> tuple[int | None, bool, str]:
    """Run the code with `tmp` (private to us) holding its source and output; (exit status, killed, output)."""
    source, out_path = tmp / "main.py", tmp / "output.txt"
    source.write_text(code, encoding="utf-8")
    with open(out_path, "wb") as out:
        if bwrap is not None:
            rc, killed = _run_jailed(tmp, bwrap, limits, out)
        else:
            rc, killed = _run_unjailed(tmp, limits, out)
    text = _head_and_tail(out_path, limits.max_output_chars)
    if out_path.stat().st_size >= limits.max_file_bytes and not killed:
        # Python ignores SIGXFSZ: a flood ends in an OSError it cannot even print; say what happened instead
        return -signal.SIGXFSZ, False, text
    return rc, killed, text


def _stdio(out: IO[bytes]) -> dict:
    # A new session: Ctrl-C at the terminal reaches the chat, not the child, and the unjailed child can be killed
    # with its process group.
    return {"stdin": subprocess.DEVNULL, "stdout": out, "stderr": subprocess.STDOUT, "start_new_session": True}


def _run_jailed(tmp: Path, bwrap: str, limits: PythonLimits, out: IO[bytes]) -> tuple[int | None, bool]:
    """Run bwrap; return only once its whole PID namespace is gone, whether the code ended or was killed.

    bwrap exits as soon as the program it started exits, while the rest of the jail (a detached child, a fork
    bomb) is still being torn down; so we hold a pidfd on the jail's PID 1 (read from --info-fd) and wait for it:
    the kernel lets PID 1 finish dying only after every other process of its namespace is gone.
    """
    program = _seccomp_program()
    if program is not None:
        (tmp / "seccomp.bpf").write_bytes(program)
    info_read, info_write = os.pipe()
    with contextlib.ExitStack() as files:
        files.callback(os.close, info_read)  # open until bwrap is done: writing to a closed pipe would kill it
        with contextlib.ExitStack() as passed:
            passed.callback(os.close, info_write)
            code_fd = passed.enter_context(open(tmp / "main.py", "rb")).fileno()
            bpf_fd = passed.enter_context(open(tmp / "seccomp.bpf", "rb")).fileno() if program else None
            cmd = _bwrap_command(bwrap, limits, code_fd, bpf_fd, info_write)
            fds = tuple(fd for fd in (code_fd, bpf_fd, info_write) if fd is not None)
            proc = subprocess.Popen(cmd, env={}, pass_fds=fds, **_stdio(out))
        init = _open_jail_init(info_read, proc)
        if init is not None:
            files.callback(os.close, init)
        ended = False
        try:
            ended = _wait(proc, limits.wall_seconds)
        finally:  # past the wall clock, or interrupted (Ctrl-C in the chat): nothing of the jail outlives the call
            if not ended:
                _kill_jail(proc, init)
            if init is not None:
                select.select([init], [], [], 10.0)
    return (proc.returncode if ended else None), not ended


def _kill_jail(bwrap: subprocess.Popen, init: int | None) -> None:
    """SIGKILL the jail's PID 1 (the kernel then kills the rest of its PID namespace) and bwrap."""
    if init is not None:
        with contextlib.suppress(ProcessLookupError):  # it may have ended a moment ago
            signal.pidfd_send_signal(init, signal.SIGKILL)
    bwrap.kill()
    bwrap.wait()


def _open_jail_init(info_read: int, bwrap: subprocess.Popen) -> int | None:
    """A pidfd on the jail's PID 1, named by bwrap's --info-fd and checked to be bwrap's own child; None if bwrap
    failed before making it."""
    text = b""
    while select.select([info_read], [], [], 10.0)[0]:  # bwrap writes it in pieces, then closes its end
        piece = os.read(info_read, 4096)
        text += piece
        if not piece or text.rstrip().endswith(b"}"):
            break
    try:
        pid = int(json.loads(text)["child-pid"])
        parent = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1]
        return os.pidfd_open(pid) if int(parent) == bwrap.pid else None
    except (OSError, ValueError, KeyError, TypeError):  # ValueError covers JSON errors; OSError a gone process
        return None


def _run_unjailed(tmp: Path, limits: PythonLimits, out: IO[bytes]) -> tuple[int | None, bool]:
    """--unsafe-python where no jail can be made: the same limits (but RLIMIT_NPROC, which would count all of the
    user's processes), an emptied environment and a throw-away directory; no isolation at all."""
    work = tmp / "work"
    work.mkdir()
    os.replace(tmp / "main.py", work / "main.py")
    proc = subprocess.Popen([str(_interpreter()), *_bootstrap_args(limits, 0, rlimit_nproc=False)], cwd=work,
                            env=_child_env(str(work)), **_stdio(out))
    if _wait(proc, limits.wall_seconds):
        return proc.returncode, False
    os.killpg(proc.pid, signal.SIGKILL)  # a child that started a session of its own escapes this
    proc.wait()
    return None, True


def _wait(proc: subprocess.Popen, seconds: float) -> bool:
    """Whether the process ended within `seconds`."""
    try:
        proc.wait(timeout=seconds)
        return True
    except subprocess.TimeoutExpired:
        return False


def _head_and_tail(path: Path, max_chars: int) -> str:
    """The file's text, or its start and end around a truncation mark: errors print their last line last.
    Reads at most about 4 * max_chars bytes whatever the file's size."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size <= max_chars * 4:
            text = f.read().decode("utf-8", errors="replace")
            if len(text) <= max_chars:
                return text
            head, tail = text[:max_chars // 2], text[-max_chars // 2:]
        else:
            head = f.read(max_chars * 2).decode("utf-8", errors="replace")[:max_chars // 2]
            f.seek(size - max_chars * 2)
            tail = f.read(max_chars * 2).decode("utf-8", errors="replace")[-max_chars // 2:]
    return f"{head}\n[output truncated]\n{tail}"


def _describe(text: str, rc: int | None, killed: bool, limits: PythonLimits, jailed: bool) -> str:
    """The output followed by a line that says how the program ended, when it did not end normally."""
    status = f"error: killed after {limits.wall_seconds:g} s of wall time" if killed else ""
    if jailed and rc is not None and 128 < rc < 128 + signal.NSIG:
        rc = 128 - rc  # bwrap reports a child killed by signal S as exit status 128 + S
    if rc:
        if rc in (-signal.SIGXCPU, -signal.SIGKILL):
            status = f"error: killed at the CPU-time limit ({limits.cpu_seconds} s)"
        elif rc == -signal.SIGXFSZ:
            status = f"error: output larger than {limits.max_file_bytes} bytes"
        elif "MemoryError" in text:
            status = f"error: out of memory (limit {limits.memory_bytes // 2**20} MiB)"
        elif rc < 0:
            status = f"error: killed by signal {_signal_name(-rc)}"
        else:
            status = f"error: exit status {rc}"
    return (text.rstrip("\n") + ("\n" + status if status else "")).strip("\n") or "(no output)"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal has no name of its own
        return str(number)
