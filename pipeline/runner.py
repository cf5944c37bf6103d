"""A pre-imported job runner: a workflow's stage commands skip the ~3 CPU seconds of imports.

Every stage command is its own ``python -m fian_pipeline.<stage> ...`` process, and a small job
(evaluate, baseline, a data stage on the demo) spends most of its time importing torch, MLflow
and pandas (bench/RESULTS.md "A job's fixed cost").  When Snakemake runs jobs on this machine,
the Snakefile's ``onstart`` starts one runner (``python -m fian_pipeline.runner --name N``), which
imports those libraries and the stage modules once, then waits on a Unix socket (Linux abstract
namespace: no file).  Each stage command still starts as its own process (the *client*: the
job's command line, process group, log files and exit status are Snakemake's as before), finds
``FIAN_RUNNER`` in its environment, and hands its argv, working directory, environment and
stdin/stdout/stderr (the file descriptors themselves) to the runner, which forks a child that
runs the stage's ``main`` exactly as the client would have.  The client waits and exits with the
child's status (killed by a signal: by the same signal).

What stays as without it:

- A signal to the client (Snakemake's SIGTERM on a cancelled job, Ctrl-C's SIGINT) is passed to
  the child once (the child has a process group of its own, so the terminal's signal reaches it
  only through the client), and the stage unwinds as before (MLflow run KILLED, no half file).
- The client SIGKILLed (a killed job, a killed process group): the runner SIGKILLs its child at
  once -- the job dies as it would have.  The runner killed: its children get SIGKILL from the
  kernel (``PR_SET_PDEATHSIG``); the runner ends when the Snakemake that started it is gone.
- Nothing is shared between jobs but the imported code: the runner opens no file, store or
  thread pool before forking (it checks that it runs one thread only; pyarrow's jemalloc
  background thread is turned off for it); each child opens its own MLflow store, as a process does.
- The thread counts a job is given (``OMP_NUM_THREADS`` and the BLAS twins Snakemake sets from a
  rule's ``threads``) are applied in the child (torch and the BLAS pools).  Other variables that
  the libraries read when they load (OpenMP wait policy, CUDA, allocators, PYTHON*), the Python
  executable and the code's files must be the runner's: if any differs (an edited source file
  too) the runner declines and the client runs the stage itself, saying why on stderr.

Off: ``FIAN_NO_RUNNER=1 snakemake ...``.  Never used for SLURM (or any remote executor),
``--use-conda``, ``--touch`` or DVC: their stage commands run as plain processes.
bench/jobcost.py measures both ways.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ENV = "FIAN_RUNNER"  # the runner's socket name (abstract namespace), set by the Snakefile for its jobs
PID_ENV = "FIAN_RUNNER_PID"  # its process id (a job waits while it lives and does not listen yet)
OFF_ENV = "FIAN_NO_RUNNER"  # set (to anything): the Snakefile starts no runner
CHILD_ENV = "FIAN_RUNNER_CHILD"  # set in a forked child: a stage never delegates twice
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")  # fmt: skip
# variables a library reads when it loads (in the runner, once): a job whose value differs runs itself
LOAD_TIME_PREFIXES = ("OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "GOTO_", "VECLIB_", "NUMEXPR_", "CUDA_",
                      "NVIDIA_", "PYTHON", "LD_", "TORCH", "PYTORCH_", "ARROW_", "JE_ARROW_", "MALLOC_",
                      "MLFLOW_ENABLE", "MLFLOW_SQLALCHEMY")  # fmt: skip
# pyarrow (pandas' dependency) starts a jemalloc background thread when it loads: not in a process that forks
# and numpy's OpenBLAS its thread pool (each child sizes its own pool, _apply_threads)
RUNNER_ENV = {"JE_ARROW_MALLOC_CONF": "background_thread:false", "OPENBLAS_NUM_THREADS": "1"}
PRELOAD = (
    "numpy", "torch", "pandas", "h5py", "yaml", "mlflow", "mlflow.tracking", "mlflow.store.tracking.sqlalchemy_store",
    "sqlalchemy", "alembic", "alembic.runtime.migration", "alembic.script",
    "fian.tracking", "fian.train", "fian.evaluate", "fian.data.dataset", "fian.baselines",
    "fian_pipeline.common", "fian_pipeline.provenance", "fian_pipeline.mlflow_model", "fian_pipeline.annotations",
    "fian_pipeline.features", "fian_pipeline.text", "fian_pipeline.prepare", "fian_pipeline.train",
    "fian_pipeline.evaluate", "fian_pipeline.baseline", "fian_pipeline.plots", "fian_pipeline.tables",
    "fian_pipeline.aggregate", "fian_pipeline.compare", "fian_pipeline.generate",
)  # fmt: skip
# imported once the runner listens, while it has nothing else to do (a lone job does not wait for
# them; a later plots/train/compare job finds them loaded)
# "module:function": a warm-up that every train job would compute alike, called once here (a pure
# function of the installed packages): MLflow's map of modules to distributions (log_model scans
# every installed distribution for it, 1-3 s), torch's dynamo (created with the Adam optimizer)
PRELOAD_IDLE = ("mlflow.pyfunc", "torch._dynamo", "mlflow.utils.requirements_utils:_init_modules_to_packages_map",
                "scipy.stats", "matplotlib", "matplotlib.pyplot")  # fmt: skip
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT)
MAX_REQUEST = 1 << 22  # bytes of one request (argv, cwd, environment)
_STATUS = struct.Struct("!ci")  # reply: b"E" exit code / b"S" killed by signal / b"D" declined (+ text)


def _address(name: str) -> str:
    return "\0fian-runner-" + name


def load_time_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(LOAD_TIME_PREFIXES) and k not in THREAD_VARS
            and k not in RUNNER_ENV}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# client: the stage command's process
# ----------------------------------------------------------------------------------------------


def delegate() -> int | None:
    """Run this process's stage in the runner named by ``FIAN_RUNNER``; its exit status, or None
    when there is no runner (or it declines): the caller then runs the stage itself."""
    name = os.environ.get(ENV)
    if not name or os.environ.get(CHILD_ENV):
        return None
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is None or not spec.name.startswith("fian_pipeline."):
        return None
    sock = _connect(name)
    if sock is None:
        return None
    try:
        request = json.dumps({"module": spec.name, "argv": sys.argv[1:], "cwd": os.getcwd(),
                              "env": dict(os.environ), "python": _interpreter()}).encode()  # fmt: skip
        socket.send_fds(sock, [struct.pack("!I", len(request))], [0, 1, 2])
        sock.sendall(request)
    except OSError as e:
        print(f"fian runner {name!r} failed ({e}): running the stage in this process", file=sys.stderr, flush=True)
        sock.close()
        return None
    return _wait(sock)


def _connect(name: str) -> socket.socket | None:
    """A connection to the runner; while its process (``FIAN_RUNNER_PID``) lives but does not
    listen yet (still importing), wait for it (at most 120 s)."""
    from fian.io import process_alive

    pid = os.environ.get(PID_ENV, "")
    deadline = time.monotonic() + 120
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        try:
            sock.connect(_address(name))
            return sock
        except OSError as e:
            sock.close()
            if pid.isdigit() and process_alive(int(pid)) and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            print(f"fian runner {name!r} not reachable ({e}): running the stage in this process", file=sys.stderr,
                  flush=True)  # fmt: skip
            return None


def _interpreter() -> dict[str, Any]:
    """What decides which code a process imports: its interpreter, prefix and import path
    (``sys.path[0]``, the working directory of ``python -m``, apart)."""
    return {"executable": os.path.realpath(sys.executable), "prefix": sys.prefix, "path": sys.path[1:]}


def _wait(sock: socket.socket) -> int | None:
    """Forward signals to the child until its status arrives; then mirror it (None: declined)."""

    def forward(signum: int, frame: object) -> None:
        try:
            sock.sendall(bytes([signum]))
        except OSError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    sock.settimeout(None)
    try:
        kind, value = _STATUS.unpack(_recv_exact(sock, _STATUS.size))
        if kind == b"D":
            reason = _recv_exact(sock, value).decode(errors="replace")
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            print(f"fian runner declined ({reason}): running the stage in this process", file=sys.stderr, flush=True)
            return None
    except (OSError, EOFError):
        print("error: the fian runner ended before the job did (its Snakemake was stopped?)", file=sys.stderr)
        return 1
    if kind == b"S":  # the child was killed by a signal: so is this process
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), value)
        return 128 + value
    return value


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return buf


# ----------------------------------------------------------------------------------------------
# the runner
# ----------------------------------------------------------------------------------------------


def _thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


def _code_files() -> dict[str, float]:
    """mtime of every source file of the project's packages imported (a file edited after the
    runner started: its jobs run themselves)."""
    out = {}
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if f and mod.__name__.split(".")[0] in ("fian", "fian_pipeline"):
            try:
                out[f] = os.stat(f).st_mtime_ns
            except OSError:
                out[f] = -1
    return out


class Runner:
    def __init__(self, name: str, parent: int) -> None:
        import selectors

        self.parent = parent
        self.sel = selectors.DefaultSelector()
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(_address(name))
        self.server.listen(64)
        self.sel.register(self.server, selectors.EVENT_READ, "accept")
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.children: dict[int, socket.socket] = {}  # pid -> its client's connection
        self.started: dict[int, float] = {}
        self.env = load_time_env(dict(os.environ))
        self.files = _code_files()
        self.python = _interpreter()
        import torch

        self.torch_threads = torch.get_num_threads()  # torch's default here: a job without OMP_NUM_THREADS gets it
        self.stopping = False

    def decline_reason(self, req: Any) -> str | None:
        if not (isinstance(req, dict) and isinstance(req.get("module"), str) and isinstance(req.get("cwd"), str)
                and isinstance(req.get("argv"), list) and all(isinstance(a, str) for a in req["argv"])
                and isinstance(req.get("env"), dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in req["env"].items())):  # fmt: skip
            return "a malformed request"
        if not req["module"].startswith("fian_pipeline.") or req["module"] == __name__:
            return f"not a stage module: {req['module']}"
        if req.get("python") != self.python:
            return f"another interpreter or import path: {req.get('python')}"
        theirs = load_time_env(req["env"])
        if theirs != self.env:
            keys = sorted(k for k in set(theirs) | set(self.env) if theirs.get(k) != self.env.get(k))
            return "a library setting differs from the runner's: " + ", ".join(keys[:5])
        for f, mtime in self.files.items():
            try:
                now = os.stat(f).st_mtime_ns
            except OSError:
                now = -1
            if now != mtime:
                return f"{f} changed since the runner started"
        return None

    def serve(self) -> None:
        idle = list(PRELOAD_IDLE)
        while not (self.stopping and not self.children):
            events = self.sel.select(timeout=0 if idle and not self.stopping else 1.0)
            if not events and idle and not self.stopping:
                _import(idle.pop(0))
                if _thread_count() != 1:  # forking from now on would not be safe: jobs run themselves
                    _say(f"a library started threads ({_thread_names()}): declining every job from now on")
                    self.stopping = True
            for key, _ in events:
                if key.data == "accept":
                    self.accept()
                elif key.data == "wake":
                    try:
                        while self.wake_r.recv(512):
                            pass
                    except BlockingIOError:
                        pass
                else:
                    self.from_client(key.data, key.fileobj)
            self.reap()
            if os.getppid() != self.parent and not self.stopping:  # our Snakemake is gone
                self.stop()

    def stop(self, *_: object) -> None:
        self.stopping = True
        for pid in self.children:
            _kill(pid, signal.SIGTERM)

    def accept(self) -> None:
        import selectors

        conn, _ = self.server.accept()
        fds: list[int] = []
        try:
            conn.settimeout(10)
            head, fds, _, _ = socket.recv_fds(conn, 4, 3)
            if len(head) != 4 or len(fds) != 3:
                raise ValueError("bad request head")
            size = struct.unpack("!I", head)[0]
            if size > MAX_REQUEST:
                raise ValueError("request too large")
            req = json.loads(_recv_exact(conn, size))
            _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
            if uid != os.getuid():  # an abstract socket has no file permissions: only our own user's jobs
                reason = f"a process of another user (uid {uid})"
            elif self.stopping:
                reason = "the runner is stopping"
            else:
                reason = self.decline_reason(req)
            if reason is None:
                pid = os.fork()
            else:
                _say(f"declined {req.get('module') if isinstance(req, dict) else '?'}: {reason}")
                conn.sendall(_STATUS.pack(b"D", len(reason.encode())) + reason.encode())
                raise EOFError("declined")
        except (OSError, ValueError, EOFError, struct.error):
            conn.close()
            for fd in fds:
                os.close(fd)
            return
        if pid == 0:  # the child: never returns
            mine = [self.server, self.wake_r, self.wake_w, *self.children.values()]
            _child(req, fds, conn, [s.fileno() for s in mine] + [self.sel.fileno()], self.torch_threads)
        for fd in fds:
            os.close(fd)
        conn.setblocking(False)
        self.children[pid] = conn
        self.started[pid] = time.monotonic()
        _say(f"job {pid}: {req['module']} {' '.join(map(str, req['argv']))[:2000]}")
        self.sel.register(conn, selectors.EVENT_READ, pid)

    def from_client(self, pid: int, conn: socket.socket) -> None:
        try:
            data = conn.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the client is gone (SIGKILLed): so is its job
            _say(f"job {pid}: its command ended before it (killed?): SIGKILL")
            _kill(pid, signal.SIGKILL)
            self.sel.unregister(conn)
            return
        for signum in data:  # signals the client received: passed on once
            _kill(pid, signum)

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            if os.WIFSIGNALED(status):
                reply = _STATUS.pack(b"S", os.WTERMSIG(status))
                end = f"killed by signal {os.WTERMSIG(status)}"
            else:
                reply = _STATUS.pack(b"E", os.WEXITSTATUS(status))
                end = f"exit {os.WEXITSTATUS(status)}"
            _say(f"job {pid}: {end} after {time.monotonic() - self.started.pop(pid, time.monotonic()):.1f} s")
            try:
                self.sel.unregister(conn)
            except (KeyError, ValueError):
                pass
            try:
                conn.setblocking(True)
                conn.sendall(reply)
            except OSError:
                pass
            conn.close()


def _say(line: str) -> None:
    """One line of the runner's log (its stderr: .snakemake/log/<run>.fian-runner.log)."""
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}", file=sys.stderr, flush=True)


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _child(req: dict[str, Any], fds: list[int], conn: socket.socket, runner_fds: list[int], threads: int) -> None:
    """In the forked child: become the stage's process (fds, cwd, environment, threads) and run it."""
    code = 1
    try:
        _die_with_parent()
        os.setpgid(0, 0)  # signals reach the job only through its client (once)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for i, fd in enumerate(fds):
            os.dup2(fd, i)
            os.close(fd)
        conn.close()
        for fd in runner_fds:  # the runner's sockets (a library's own descriptors stay)
            try:
                os.close(fd)
            except OSError:
                pass
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        os.environ[CHILD_ENV] = "1"
        _std_streams()
        _apply_threads(threads)
        import importlib
        import importlib.util

        spec = importlib.util.find_spec(req["module"])
        sys.argv = [spec.origin if spec and spec.origin else req["module"], *req["argv"]]
        sys.path[0] = req["cwd"]  # python -m: the working directory first

        from fian_pipeline.common import run_stage

        module = importlib.import_module(req["module"])
        code = run_stage(module.main)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int) and e.code is not None:
            print(e.code, file=sys.stderr)
    except BaseException:  # KeyboardInterrupt too: `python -m` prints it and exits 1
        sys.excepthook(*sys.exc_info())
        code = 1
    finally:
        try:
            import atexit

            atexit._run_exitfuncs()
        finally:
            _flush()
            os._exit(int(code) & 0xFF)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed pipe: nothing left to do
            pass


def _std_streams() -> None:
    """stdin/stdout/stderr over the client's descriptors, buffered as Python would for them."""
    import io

    enc = os.environ.get("PYTHONIOENCODING") or "utf-8"
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding=enc)
    out = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)), encoding=enc,
                           line_buffering=os.isatty(1), write_through=unbuffered)  # fmt: skip
    err = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)), encoding=enc,
                           errors="backslashreplace", line_buffering=True, write_through=True)  # fmt: skip
    sys.stdout, sys.stderr = out, err
    sys.__stdout__, sys.__stderr__ = out, err  # type: ignore[misc]


def _apply_threads(default: int) -> None:
    """The job's thread counts, read by the libraries when they loaded (in the runner, once):
    torch's from ``OMP_NUM_THREADS`` (unset: torch's own default, ``default``), numpy's BLAS from
    ``OPENBLAS_NUM_THREADS`` (unset: ``OMP_NUM_THREADS``, else one per CPU, OpenBLAS's default)."""
    import torch
    from threadpoolctl import threadpool_limits

    def count(*names: str) -> int | None:
        for name in names:
            v = os.environ.get(name, "").strip()
            if v.isdigit() and int(v) > 0:
                return int(v)
        return None

    torch.set_num_threads(count("OMP_NUM_THREADS") or default)
    threadpool_limits(count("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS") or os.cpu_count() or 1, user_api="blas")


def _die_with_parent() -> None:
    """SIGKILL when the runner dies (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1


def _import(name: str) -> None:
    """Import ``module`` (or call ``module:function``, a warm-up without arguments)."""
    import importlib

    module, _, function = name.partition(":")
    try:
        loaded = importlib.import_module(module)
        if function and callable(getattr(loaded, function, None)):
            getattr(loaded, function)()
    except Exception as e:  # noqa: BLE001 - an optional library or warm-up: its jobs do it themselves
        _say(f"preloading {name} failed ({type(e).__name__}: {e}): its jobs will do it themselves")


def _thread_names() -> list[str]:
    return sorted(Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task"))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fian_pipeline.runner", description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True, help="the socket name (jobs find it in FIAN_RUNNER)")
    p.add_argument("--parent", type=int, default=None, help="end when this process is gone (default: our parent)")
    args = p.parse_args(argv)
    parent = args.parent or os.getppid()
    os.environ.update(RUNNER_ENV)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the jobs (through their clients)
    for name in PRELOAD:
        _import(name)
    if _thread_count() != 1:
        _say(f"fian runner: not starting, a library started threads ({_thread_names()}): jobs run themselves")
        return 1
    runner = Runner(args.name, parent)
    signal.signal(signal.SIGTERM, runner.stop)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the loop (set_wakeup_fd)
    _say(f"fian runner {args.name}: ready (pid {os.getpid()}, {len(sys.modules)} modules imported, "
         f"torch's default {runner.torch_threads} threads)")
    runner.serve()
    return 0


def start(python: str, log: Path | None = None) -> Any:
    """Start a runner for the calling process's jobs (the Snakefile's ``onstart``) with ``python``
    (the interpreter the jobs' ``python`` is); sets ``FIAN_RUNNER`` and ``FIAN_RUNNER_PID`` for
    them and returns at once (a job waits while the runner imports).  None when ``FIAN_NO_RUNNER``
    is set."""
    import subprocess
    import uuid

    if os.environ.get(OFF_ENV):
        return None
    name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    env = dict(os.environ)  # the runner adds RUNNER_ENV itself (main), before it imports anything
    for key in (ENV, PID_ENV, CHILD_ENV):
        env.pop(key, None)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - the runner's own log
    proc = subprocess.Popen([python, "-m", "fian_pipeline.runner", "--name", name, "--parent", str(os.getpid())],
                            env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)  # fmt: skip
    os.environ[ENV] = name
    os.environ[PID_ENV] = str(proc.pid)
    return proc


def start_for_workflow(workflow: Any, log: Any) -> Any:
    """The Snakefile's ``onstart``: a runner when this Snakemake runs the jobs itself, here, in
    this environment (not for SLURM or other remote executors, a job's own process on a node;
    not with --touch; not with --use-conda/--use-apptainer: the jobs' Python is not ours); its
    log beside Snakemake's (``.snakemake/log/<run>.fian-runner.log``).  None otherwise."""
    import shutil

    settings = getattr(workflow, "deployment_settings", None)
    if not (workflow.local_exec and workflow.is_main_process) or workflow.touch or (
            settings is not None and settings.deployment_method):  # fmt: skip
        return None
    logs = [log] if isinstance(log, str | Path) else list(log or ())
    path = Path(logs[0]).with_name(Path(logs[0]).stem + ".fian-runner.log") if logs else None
    return start(shutil.which("python") or sys.executable, path)


def stop(proc: Any) -> None:
    """End a runner that :func:`start` started (the Snakefile's ``onsuccess`` / ``onerror``)."""
    if proc is None:
        return
    os.environ.pop(ENV, None)
    os.environ.pop(PID_ENV, None)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except Exception:  # noqa: BLE001 - still there: it must not outlive the workflow
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    sys.exit(main())
