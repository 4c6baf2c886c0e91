"""The child half of nanopost.sandbox: run ONE untrusted program and report its return values.

This file is trusted code running inside the untrusted child. sandbox.run_untrusted starts it as
`python -I -S -B _sandbox_runner.py` (isolated mode: no site, no user paths, no PYTHON* variables,
so neither nanopost nor site-packages is importable) in a fresh empty temporary directory with a
scrubbed environment, and sends one JSON payload on stdin:
    {"code", "entry_point", "args_list", "nonce", "cpu_s", "mem_mb", "max_output"}
and never the expected outputs.

Before any candidate code runs, in this order:
  1. keep a private duplicate of stdout for the results; point fds 0/1/2 at /dev/null and
     sys.stdout/stderr at a PrintSink, so the candidate's prints (and reads) never touch the
     result stream;
  2. resource limits with hard == soft (the candidate cannot raise them back): CPU seconds, address
     space, processes (RLIMIT_NPROC=0; root ignores it, hence step 3), file size, open files, core;
  3. an audit hook (hooks can never be removed) refusing: opening or listing anything outside the
     work directory (reads are also allowed from the stdlib, never from site-/dist-packages; file
     metadata, os.stat, stays visible), new processes, signals, sockets, ctypes, links, renames,
     new audit hooks, gc object walking, new code objects, tampering with this file's functions.
(Between 1 and 2 it writes "\n<nonce> ready\n": the parent starts the candidate's clock there.)
Then exec the code in a fresh namespace (__name__ == "solution", so `if __name__ == "__main__":`
blocks do not run), call the entry point once per test on a fresh copy of its arguments, and write
one line per finished test (so a timeout still keeps the results of the tests that finished):
    <nonce> <index> ["ok", <tagged value>]   or   <nonce> <index> ["error", "<exception: message>"]
Tagged values: ["int", 3] ["float", 0.5] ["bool", true] ["str", "a"] ["none", null]
["list", [...]] (tuples become lists) ["dict", [[key, tagged], ...]] (str keys only). The type
test is `type(v) is int`, so int/str/list subclasses (e.g. with an always-True __eq__) are errors.

CPython audit hooks are a speed bump, not a security boundary (PEP 578): a determined program can
corrupt interpreter memory (e.g. crafted bytecode) and then do anything this uid can do. The parent
therefore treats everything printed here as forgeable: it only ever contains values, which the
parent compares with expected outputs this process never sees.
"""
import json
import os
import resource
import signal
import sys

# Audit events refused outright (prefix match): processes, signals, environment, the filesystem
# beyond plain open(), network, foreign code, and the tools one would use to tamper with the hook.
BLOCKED_EVENTS = (
    "os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.kill", "os.putenv",
    "os.unsetenv", "os.chdir", "os.chmod", "os.chown", "os.lchown", "os.chflags", "os.lchflags",
    "os.link", "os.symlink", "os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.truncate",
    "os.utime", "os.setxattr", "os.removexattr", "os.startfile", "subprocess.", "socket.",
    "ctypes.", "sys.addaudithook", "sys._current_frames", "gc.get_", "code.__new__",
    "function.__new__", "resource.", "mmap.", "sqlite3.", "shutil.", "tempfile.", "pty.",
    "webbrowser.", "signal.pthread_kill", "builtins.breakpoint", "cpython.PyInterpreterState_New",
)
# Modules that only exist to escape: loading them is refused (already-loaded modules like os
# are not re-audited on import, their dangerous functions are covered by BLOCKED_EVENTS).
BLOCKED_MODULES = frozenset({
    "ctypes", "_ctypes", "_posixsubprocess", "subprocess", "multiprocessing", "_multiprocessing",
    "socket", "_socket", "ssl", "_ssl", "mmap", "pty", "_posixshmem", "sqlite3", "_sqlite3",
    "dbm", "_dbm", "_gdbm", "readline", "_curses", "_tkinter", "_xxsubinterpreters",
    "_xxinterpchannels", "_testcapi", "_testinternalcapi", "_testbuffer", "_testmultiphase",
    "_testsinglephase", "_testimportmultiple",
})
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
MAX_DEPTH = 100  # nesting of a returned value; the parent enforces the same bound


def normpath(path, cwd):
    """Absolute lexical path ('.', '..', '//' resolved) using only str and list methods."""
    if not path.startswith("/"):
        path = cwd + "/" + path
    parts = []
    for part in path.split("/"):
        if part == "..":
            if parts:
                parts.pop()
        elif part and part != ".":
            parts.append(part)
    return "/" + "/".join(parts)


def make_hook(root, read_roots):
    """The audit hook. Everything it uses is bound as a default argument, never looked up as a
    global or builtin: candidate code can reach this module (`import __main__`) and rebind its
    names, but rebinding __defaults__ or __code__ of a function of this module raises an audit
    event that this very hook refuses (the bound values are immutable).
    Paths are checked lexically, as the exact str/bytes open() received (a PathLike could answer
    differently the second time), against the fixed working directory (os.chdir is refused).
    That is sound because links cannot be planted (os.symlink/os.link are refused) and os.open
    must use absolute paths: the audit event does not show dir_fd, which could point anywhere."""
    def hook(event, args, root=root + "/", read_roots=read_roots, norm=normpath,
             blocked=BLOCKED_EVENTS, bad_modules=BLOCKED_MODULES, write_flags=WRITE_FLAGS,
             runner_globals=globals(), function=type(normpath), str=str, bytes=bytes, int=int,
             type=type, deny=PermissionError):
        if event == "open" or event == "os.listdir" or event == "os.scandir":
            path = "." if args[0] is None else args[0]
            writing = event == "open" and (type(args[2]) is not int or args[2] & write_flags)
            if type(path) is bytes:
                path = path.decode("utf-8", "surrogateescape")
            if type(path) is not str:  # fds, PathLike objects, str subclasses
                raise deny("sandbox: " + event + " on a non-str path")
            if event == "open" and args[1] is None and not path.startswith("/"):
                raise deny("sandbox: os.open needs an absolute path")  # dir_fd could be anywhere
            path = norm(path, root)
            inside = path + "/"
            if inside.startswith(root):
                return
            if not writing and inside.startswith(read_roots) and "-packages/" not in inside:
                return
            raise deny("sandbox: " + event + " " + path)
        if event == "import":
            if type(args[0]) is not str or args[0].partition(".")[0] in bad_modules:
                raise deny("sandbox: import " + args[0])
        elif event == "object.__setattr__" or event == "object.__delattr__":
            if type(args[0]) is function and args[0].__globals__ is runner_globals:
                raise deny("sandbox: " + event + " on a runner function")
        elif event.startswith(blocked):
            raise deny("sandbox: " + event)
    return hook


class PrintSink:
    """sys.stdout/sys.stderr for the candidate: output is discarded, but only up to a limit, so a
    huge print() fails like any other misbehaviour instead of quietly burning the time budget."""
    def __init__(self, limit):
        self.left = limit

    def write(self, text):
        self.left -= len(text)
        if self.left < 0:
            raise OSError("sandbox: output limit exceeded")
        return len(text)

    def flush(self):
        pass


def limit_resources(cpu_s, mem_mb):
    """hard == soft, so the limits hold for the rest of this process's life (CPU gets one spare
    second of hard limit: SIGXCPU at the soft limit, SIGKILL at the hard one)."""
    mb = 1024 * 1024
    for limit, value in ((resource.RLIMIT_AS, mem_mb * mb), (resource.RLIMIT_NPROC, 0),
                         (resource.RLIMIT_FSIZE, mb), (resource.RLIMIT_NOFILE, 32),
                         (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write fails instead of killing


def tag(value, depth=0):
    """Type-tagged, JSON-ready form of a return value; TypeError for anything but plain data."""
    t = type(value)
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if value is None:
        return ["none", None]
    if t is bool or t is int or t is float or t is str:
        return [t.__name__, value]
    if t is list or t is tuple:
        return ["list", [tag(v, depth + 1) for v in value]]
    if t is dict:
        if not all(type(k) is str for k in value):
            raise TypeError("dict keys must be str")
        return ["dict", [[k, tag(v, depth + 1)] for k, v in value.items()]]
    raise TypeError("unsupported return type")


def describe(exc):
    """'TypeError: message' (shortened) for diagnostics; the candidate controls both parts."""
    try:
        text = type(exc).__name__ + ": " + str(exc)
        return text[:200] if type(text) is str else "exception"
    except BaseException:
        return "exception"


def main():
    payload = json.loads(sys.stdin.buffer.read())
    nonce, entry_point, code = payload["nonce"], payload["entry_point"], payload["code"]
    arg_texts = [json.dumps(args) for args in payload["args_list"]]  # re-parsed per test: a deep copy
    out_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    sys.stdout = sys.stderr = sys.__stdout__ = sys.__stderr__ = PrintSink(int(payload["max_output"]))
    os.write(out_fd, ("\n" + nonce + " ready\n").encode())  # starts the parent's clock
    limit_resources(int(payload["cpu_s"]), int(payload["mem_mb"]))
    root = os.getcwd()
    read_roots = tuple(normpath(p, root) + "/" for p in sys.path if p)
    dumps, loads, write = json.dumps, json.loads, os.write  # bound before the candidate runs

    def emit(index, outcome):
        try:
            line = dumps(outcome)
        except BaseException:  # e.g. an int too long to print
            line = '["error", "unserialisable value"]'
        data = ("\n" + nonce + " " + str(index) + " " + line + "\n").encode()
        while data:
            data = data[write(out_fd, data):]

    sys.addaudithook(make_hook(root, read_roots))
    namespace = {"__name__": "solution"}
    try:
        exec(compile(code, "<solution>", "exec"), namespace)
        function = namespace[entry_point]
        if not callable(function):
            raise TypeError("entry point is not callable")
    except BaseException as exc:  # SyntaxError, sys.exit(), missing entry point, ...
        for index in range(len(arg_texts)):
            emit(index, ["error", "load: " + describe(exc)])
        os._exit(0)
    for index, text in enumerate(arg_texts):
        try:
            outcome = ["ok", tag(function(*loads(text)))]
        except BaseException as exc:
            outcome = ["error", describe(exc)]
        emit(index, outcome)
    os._exit(0)  # skip atexit handlers and finalizers the candidate may have registered


if __name__ == "__main__":
    main()
