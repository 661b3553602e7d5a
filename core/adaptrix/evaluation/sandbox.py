"""Running generated code, contained: its own process group in a temporary folder, with limits.

:func:`run_program` runs a Python program in a fresh interpreter (``python -I``:
no user site, no ``PYTHONPATH``, an almost empty environment) whose working
folder is a new temporary folder, and:

- a wall-clock limit, then the whole process group is killed (always, even
  after a clean exit: nothing it started survives it);
- resource limits: CPU seconds, address space (memory), file size, open files;
- no network: a new user+network namespace (``unshare -rn``, only a loopback
  that is down) where the OS allows it, and in any case an audit hook that
  refuses sockets;
- an audit hook (installed before the program runs) that refuses new processes
  (fork, exec, spawn, ``subprocess``, ``os.system``), signals to other
  processes, and any write, removal, rename or permission change outside the
  temporary folder.

This contains what generated code does by accident or by a clumsy attempt
(HumanEval's own ``reliability_guard`` is of the same kind); it is not a
security boundary against code written to escape (``ctypes`` can reach libc).
Run untrusted code on a machine you can throw away.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import attrs

#: Seconds of wall clock, megabytes of address space.
DEFAULT_TIMEOUT = 10.0
DEFAULT_MEMORY_MB = 1024

# Runs before the program, in the sandboxed interpreter. argv[1]: the program file.
_GUARD = r'''
import os, sys
_root = os.path.realpath(os.getcwd())
_prog = sys.argv[1]
def _inside(p):
    try:
        p = os.path.realpath(os.fsdecode(p))
    except Exception:
        return False
    return p == _root or p.startswith(_root + os.sep)
_W = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_DENY = ("os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen",
         "pty.spawn", "os.kill", "os.killpg", "os.setsid", "socket.__new__", "socket.connect", "socket.bind",
         "socket.getaddrinfo", "socket.sendto", "os.startfile", "os.chroot", "resource.setrlimit", "sys.addaudithook")
_PATHS = ("os.remove", "os.rename", "os.mkdir", "os.rmdir", "shutil.rmtree", "os.chmod", "os.chown", "os.symlink",
          "os.link", "os.truncate", "os.utime", "shutil.copyfile", "shutil.move", "os.mkfifo", "os.mknod")
def _hook(event, args):
    if event == "open":
        path, mode, flags = (tuple(args) + (None, None, 0))[:3]
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & _W)
        if writing and not isinstance(path, int) and path is not None and not _inside(path):
            raise PermissionError(f"sandbox: writing {path!r} outside the temporary folder is not allowed")
    elif event in _DENY:
        raise PermissionError(f"sandbox: {event} is not allowed")
    elif event in _PATHS:
        for a in args:
            if isinstance(a, (str, bytes, os.PathLike)) and not _inside(a):
                raise PermissionError(f"sandbox: {event} on {a!r} outside the temporary folder is not allowed")
with open(_prog, encoding="utf-8") as _fh:
    _code = compile(_fh.read(), "program.py", "exec")
sys.addaudithook(_hook)
sys.argv = ["program.py"]
exec(_code, {"__name__": "__main__", "__builtins__": __builtins__})
'''


@attrs.frozen
class SandboxResult:
    """How a program ended: ``passed`` (exit status 0 in time), else ``reason`` says why not."""

    passed: bool
    #: ``passed``, ``failed`` (an exception or a non-zero exit), ``timeout`` or ``killed`` (a limit, a signal).
    reason: str
    #: The end of its output (stderr after stdout), for people.
    output: str
    seconds: float
    returncode: int | None


@functools.lru_cache(maxsize=1)
def network_namespace() -> tuple[str, ...]:
    """The command prefix that runs a program without network (``unshare -rn``), or ``()`` where the OS refuses."""
    tool = shutil.which("unshare")
    if not tool:
        return ()
    try:
        probe = subprocess.run([tool, "-rn", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ()
    return (tool, "-rn") if probe.returncode == 0 else ()


def _limits(timeout: float, memory_mb: int):
    def apply() -> None:
        import resource

        cpu = int(timeout) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        mem = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_program(source: str, *, timeout: float = DEFAULT_TIMEOUT, memory_mb: int = DEFAULT_MEMORY_MB,
                max_output: int = 2000) -> SandboxResult:
    """Run the Python ``source`` contained (see the module docstring) and say how it ended."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="adaptrix-sandbox-") as folder:
        program = os.path.join(folder, "program.py")
        with open(program, "w", encoding="utf-8") as fh:
            fh.write(source)
        env = {"PATH": "/usr/bin:/bin", "HOME": folder, "TMPDIR": folder, "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
        cmd = [*network_namespace(), sys.executable, "-I", "-c", _GUARD, program]
        proc = subprocess.Popen(cmd, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True,
                                preexec_fn=_limits(timeout, memory_mb))
        timed_out = False
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)
            out, err = proc.communicate()
        finally:
            _kill_group(proc.pid)  # whatever it left behind in its group
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        text = (out or b"").decode("utf-8", "replace") + (err or b"").decode("utf-8", "replace")
        code = proc.returncode
    if timed_out:
        reason = "timeout"
    elif code == 0:
        reason = "passed"
    elif code is not None and code < 0:
        reason = "killed"
    else:
        reason = "failed"
    return SandboxResult(passed=reason == "passed", reason=reason, output=text[-max_output:],
                         seconds=time.perf_counter() - start, returncode=code)
