"""Run untrusted, model-written Python in a separate, limited process.

Model-written code never runs inside the trainer. run_untrusted starts a fresh interpreter
(`sys.executable -I -S -B`: isolated mode, no site) on nanopost/_sandbox_runner.py:
  - in a fresh empty temporary directory, removed afterwards, with a scrubbed environment (PATH,
    LANG), stderr discarded and close_fds; stdin carries a JSON payload with the code, the entry
    point and the argument lists -- NEVER the expected outputs;
  - in its own session and process group (start_new_session=True), so the whole group can be
    SIGKILLed: on the wall-clock timeout, on too much output, and ALWAYS once the child is done
    (whatever it started and left in its group dies with it);
  - where the OS allows it, inside fresh user + network namespaces (`unshare --user --net`, probed
    once): no network interfaces at all. Where it does not, only the runner's audit hook stands
    between the code and the network.
The runner (trusted code, first thing in the child) then sets resource limits, silences
stdio and installs an audit hook before executing the candidate; see its docstring.

Why the limits are set by the runner and not in a preexec_fn: preexec_fn is documented as unsafe
in a multi-threaded parent (the trainer; grade_many's thread pool) and forces a full fork() of
the trainer -- slow for a process holding many GB. Without it, subprocess can use vfork, and the
limits still come from trusted code before any untrusted byte runs. (ctypes is not loaded in the
child at all -- its pointer types allow unaudited memory writes -- hence the unshare(1) wrapper.)

Trust: only the parent's reading of the output matters. The child reports values framed by a
per-run random nonce; the parent validates the frame and the value shapes, and treats the result
as forgeable anyway: a forged frame still only holds values, and the verdict is made by the
caller (graders.code_grader) against expected outputs the child never saw. The exit code is never
read as a pass signal: exiting early (sys.exit(0), os._exit(0)) just means no results.
"""
import json
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_runner.py")
CHILD_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
STARTUP_S = 30.0  # how long the runner may take to start, before the candidate's clock runs
MAX_DEPTH = 100  # nesting of a returned value (the runner refuses deeper ones too)
_SCALARS = {"bool": bool, "int": int, "float": float, "str": str}


@dataclass
class RunResult:
    """What one sandboxed run produced.

    results: one outcome per argument list, {"ok": True, "value": v} or {"ok": False, "error": s},
        where v is plain data (None, bool, int, float, str, list, dict with str keys) with its exact
        type; tests that never reported (crash, timeout, early exit) are errors "no result".
        None when the output cannot be used at all (too large, malformed, duplicated frames).
    ok: results is not None and every test reported (the program ran to the end).
    """
    ok: bool
    results: list | None
    error: str = ""
    timed_out: bool = False
    elapsed_s: float = 0.0
    pid: int = 0  # the child's pid, which is also its process-group and session id


@lru_cache(maxsize=1)
def _namespace_prefix() -> tuple:
    """("unshare", "--user", "--net", "--") if this OS lets us create those namespaces, else ()."""
    unshare, true = (shutil.which(name, path=CHILD_ENV["PATH"]) for name in ("unshare", "true"))
    if not unshare or not true:
        return ()
    argv = (unshare, "--user", "--net", "--")
    try:
        probe = subprocess.run([*argv, true], env=CHILD_ENV, timeout=10, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return ()
    return argv if probe.returncode == 0 else ()


def run_untrusted(code: str, entry_point: str, args_list: list[list], timeout_s: float = 4.0,
                  mem_mb: int = 256, max_output_bytes: int = 1_000_000) -> RunResult:
    """Run `code`, call `entry_point(*args)` for each args in args_list; see the module docstring.

    timeout_s is wall-clock for all the calls together, counted from the runner's start-up
    signal (CPU time is also capped at ceil(timeout_s) + 1 s in the child); mem_mb caps the
    address space; max_output_bytes caps both what the parent reads (more: the run fails) and
    what the candidate may print (more: that print raises; prints are discarded anyway).
    Raises RuntimeError if the runner itself cannot start (no interpreter, broken namespaces):
    a broken sandbox must not pass for a batch of 0 rewards.
    """
    nonce = secrets.token_hex(16)
    payload = json.dumps({"code": code, "entry_point": entry_point, "args_list": args_list,
                          "nonce": nonce, "cpu_s": math.ceil(timeout_s) + 1, "mem_mb": mem_mb,
                          "max_output": max_output_bytes}).encode()
    argv = [*_namespace_prefix(), sys.executable, "-I", "-S", "-B", RUNNER]
    ready = f"\n{nonce} ready\n".encode()
    workdir = tempfile.mkdtemp(prefix="nanopost-sandbox-")
    start = time.monotonic()
    try:
        proc = subprocess.Popen(argv, cwd=workdir, env=CHILD_ENV, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                start_new_session=True, close_fds=True)
        try:
            output, problem = _exchange(proc, payload, ready, timeout_s, max_output_bytes)
        finally:
            _kill_group(proc)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - start
    if problem == "start":  # not the candidate's doing: it had not run yet
        raise RuntimeError(f"sandbox runner failed to start (exit code {proc.returncode}): {argv}")
    results = None if problem == "output" else _parse(output[len(ready):], nonce, len(args_list))
    if results is None:
        error = "output over the byte limit" if problem == "output" else "malformed output"
        return RunResult(False, None, error, problem == "timeout", elapsed, proc.pid)
    missing = sum(not r["ok"] and r["error"] == "no result" for r in results)
    error = "timeout" if problem == "timeout" else f"{missing} tests reported nothing" if missing else ""
    return RunResult(missing == 0, results, error, problem == "timeout", elapsed, proc.pid)


def _exchange(proc, payload: bytes, ready: bytes, timeout_s: float, cap: int) -> tuple[bytes, str]:
    """Write the payload, read stdout until EOF or the child's exit; returns (output, problem),
    problem in {"", "timeout", "output", "start"}. The clock starts when the runner's `ready` line
    arrives: interpreter start-up (up to STARTUP_S, e.g. on a loaded machine) is not the
    candidate's time. Never blocks past a deadline."""
    chunks, size, pending, started = [], 0, memoryview(payload), False
    out_fd = proc.stdout.fileno()
    deadline = time.monotonic() + STARTUP_S
    os.set_blocking(proc.stdin.fileno(), False)
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdin, selectors.EVENT_WRITE)
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return b"".join(chunks), "timeout" if started else "start"
            for key, _ in sel.select(min(remaining, 0.05)):
                if key.fileobj is proc.stdin:
                    try:
                        pending = pending[os.write(key.fd, pending[:1 << 16]):]
                    except BlockingIOError:
                        continue
                    except OSError:  # the child is gone (broken pipe)
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(proc.stdin)
                        proc.stdin.close()
                    continue
                data = os.read(out_fd, 1 << 16)
                if not data:  # EOF: nobody holds the write end any more
                    return _finish(chunks, ready)
                chunks.append(data)
                size += len(data)
                if size > cap:
                    return b"", "output"
                if not started and b"".join(chunks).startswith(ready):
                    started, deadline = True, time.monotonic() + timeout_s
            if _exited(proc.pid):  # exited, but a descendant may still hold the pipe: drain
                os.set_blocking(out_fd, False)
                try:
                    while size <= cap and (data := os.read(out_fd, 1 << 16)):
                        chunks.append(data)
                        size += len(data)
                except BlockingIOError:
                    pass
                return (b"", "output") if size > cap else _finish(chunks, ready)


def _finish(chunks: list, ready: bytes) -> tuple[bytes, str]:
    output = b"".join(chunks)
    return output, "" if output.startswith(ready) else "start"


def _exited(pid: int) -> bool:
    """Has the child exited? WNOWAIT leaves it a zombie, so its pid -- the process-group id we
    are about to kill -- cannot be reused by an unrelated process in between."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill_group(proc) -> None:
    """SIGKILL the child's whole process group (always, even after a clean exit), then reap."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        if not pipe.closed:
            pipe.close()


def _parse(output: bytes, nonce: str, n: int) -> list | None:
    """Per-test outcomes from the child's output, or None if it cannot be trusted to be
    well-formed (a frame for an unknown or repeated index, a malformed value). Lines without
    the nonce (junk written straight to the fd) and an unfinished last line are ignored."""
    results = [None] * n
    prefix = nonce.encode() + b" "
    for line in output.split(b"\n")[:-1]:
        if not line.startswith(prefix):
            continue
        index, _, body = line[len(prefix):].partition(b" ")
        if not index.isdigit() or len(index) > 9 or int(index) >= n or results[int(index)]:
            return None
        try:
            results[int(index)] = _outcome(json.loads(body))
        except (ValueError, TypeError, RecursionError):
            return None
    return [r or {"ok": False, "error": "no result"} for r in results]


def _outcome(obj) -> dict:
    if type(obj) is list and len(obj) == 2 and obj[0] == "ok":
        return {"ok": True, "value": untag(obj[1])}
    if type(obj) is list and len(obj) == 2 and obj[0] == "error" and type(obj[1]) is str:
        return {"ok": False, "error": obj[1][:200]}
    raise ValueError("malformed outcome")


def untag(node, depth: int = 0):
    """Rebuild a plain value from the runner's type tags, checking every type exactly:
    ["int", 1] -> 1, ["float", 1.0] -> 1.0, ["bool", true] -> True, ["list", [...]], ...
    Raises ValueError on anything malformed."""
    if depth > MAX_DEPTH or type(node) is not list or len(node) != 2 or type(node[0]) is not str:
        raise ValueError("malformed tagged value")
    kind, value = node
    if kind == "none" and value is None:
        return None
    if kind in _SCALARS and type(value) is _SCALARS[kind]:
        return value
    if kind == "list" and type(value) is list:
        return [untag(v, depth + 1) for v in value]
    if kind == "dict" and type(value) is list:
        pairs = {}
        for pair in value:
            if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not str or pair[0] in pairs:
                raise ValueError("malformed dict")
            pairs[pair[0]] = untag(pair[1], depth + 1)
        return pairs
    raise ValueError(f"malformed tagged value of kind {kind!r}")
