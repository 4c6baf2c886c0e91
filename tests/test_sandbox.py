"""The sandbox: plain runs, then an attack suite. Every attack is a candidate solution that must
score 0.0, finish within its timeout plus a small margin, leave the test process unharmed and
leave no process behind (checked through /proc: nothing in the child's process group or session,
nothing whose command line holds the attack's unique marker)."""
import os
import signal
import sysconfig
import tempfile
import textwrap
import time
import uuid

import pytest

from nanopost import graders, sandbox
from nanopost.graders import code_grader, make_suite
from nanopost.sandbox import run_untrusted, untag

TIMEOUT_S, MARGIN_S = 1.5, 1.5


def leftovers(pid=None, marker=None):
    """Live processes in pid's process group or session, or with marker in their command line."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:  # it ended while we looked
            continue
        state, _ppid, pgid, sid = stat[stat.rfind(b")") + 2:].split()[:4]
        if state in (b"Z", b"X"):  # dead, waiting to be reaped by init
            continue
        if (pid is not None and pid in (int(pgid), int(sid))) or (marker and marker.encode() in cmdline):
            found.append(int(name))
    return found


def stdlib_files(name):
    paths = sysconfig.get_paths()
    folders = {paths["stdlib"], paths["platstdlib"], os.path.join(paths["platstdlib"], "lib-dynload")}
    return [os.path.join(folder, name) for folder in folders]


def assert_nothing_left(pid=None, marker=None):
    deadline = time.monotonic() + 2.0  # SIGKILLed processes vanish asynchronously
    while leftovers(pid, marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not leftovers(pid, marker)


# ----------------------------------------------------------------------------- plain runs

def test_values_come_back_with_exact_types():
    code = "def f(x):\n    return [x, x * 1.0, x > 0, str(x), None, (x, [x]), {'k': x}]\n"
    run = run_untrusted(code, "f", [[2], [-1]])
    assert run.ok and run.error == "" and not run.timed_out
    assert run.results == [{"ok": True, "value": [2, 2.0, True, "2", None, [2, [2]], {"k": 2}]},
                           {"ok": True, "value": [-1, -1.0, False, "-1", None, [-1, [-1]], {"k": -1}]}]
    assert type(run.results[0]["value"][1]) is float and type(run.results[0]["value"][2]) is bool
    assert_nothing_left(run.pid)


def test_prints_are_discarded_within_a_limit():
    code = "import sys\ndef f(n):\n    print('x' * n)\n    sys.stderr.write('y')\n    return n\n"
    run = run_untrusted(code, "f", [[10], [2000]], max_output_bytes=1000)
    assert run.results[0] == {"ok": True, "value": 10}
    assert not run.results[1]["ok"] and "output limit" in run.results[1]["error"]


def test_errors_are_per_test_and_args_are_copies():
    code = ("seen = []\n"
            "def f(xs):\n"
            "    xs.append(1)\n    seen.append(xs)\n"
            "    if len(seen) == 2: raise KeyError('boom')\n"
            "    if len(seen) == 3: return object()\n"
            "    return len(seen[0])\n")
    run = run_untrusted(code, "f", [[[0]], [[0]], [[0]], [[0]]])
    assert run.ok
    ok, boom, unsupported, last = run.results
    assert ok == {"ok": True, "value": 2} and last == {"ok": True, "value": 2}
    assert not boom["ok"] and boom["error"].startswith("KeyError")
    assert not unsupported["ok"] and "unsupported" in unsupported["error"]


def test_load_errors_fail_every_test():
    for code in ["def f(:\n", "x = 1\n", "f = 3\n", "raise SystemExit(0)\n"]:
        run = run_untrusted(code, "f", [[1], [2]])
        assert [r["ok"] for r in run.results] == [False, False]
        assert all(r["error"].startswith("load:") for r in run.results)


def test_timeout_keeps_finished_tests():
    code = "def f(x):\n    while x: pass\n    return 'done'\n"
    start = time.monotonic()
    run = run_untrusted(code, "f", [[0], [0], [1], [0]], timeout_s=1.0)
    assert time.monotonic() - start < 1.0 + MARGIN_S
    assert run.timed_out and not run.ok and run.error == "timeout"
    assert [r["ok"] for r in run.results] == [True, True, False, False]


def test_workdir_is_fresh_empty_and_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code = ("import os\n"
            "def f():\n"
            "    before = os.listdir('.')\n"
            "    with open('scratch.txt', 'w') as fh: fh.write('hi')\n"
            "    return [before, open('scratch.txt').read(), sorted(os.environ)]\n")
    run = run_untrusted(code, "f", [[]])
    before, content, env = run.results[0]["value"]
    assert before == [] and content == "hi"
    assert set(env) <= {"PATH", "LANG", "LC_CTYPE"}
    assert list(tmp_path.iterdir()) == []


def test_resource_limits_are_set():
    code = ("import resource\n"
            "def f():\n"
            "    return [resource.getrlimit(getattr(resource, n)) for n in\n"
            "            ('RLIMIT_AS', 'RLIMIT_CPU', 'RLIMIT_FSIZE', 'RLIMIT_CORE', 'RLIMIT_NPROC')]\n")
    run = run_untrusted(code, "f", [[]], timeout_s=2.0, mem_mb=128)
    assert run.results[0]["value"] == [[128 << 20] * 2, [3, 4], [1 << 20] * 2, [0, 0], [0, 0]]


def test_a_runner_that_cannot_start_is_an_error_not_a_zero(monkeypatch):
    monkeypatch.setattr(sandbox, "RUNNER", "/nonexistent/runner.py")
    with pytest.raises(RuntimeError, match="failed to start"):
        run_untrusted("def f(): return 1", "f", [[]])


def test_untag_refuses_malformed():
    assert untag(["dict", [["a", ["list", [["int", 1], ["bool", True]]]]]]) == {"a": [1, True]}
    for bad in [["int", True], ["int", 1.0], ["float", 1], ["bool", 1], ["str", None], ["none", 0],
                ["list", "ab"], ["dict", [[1, ["int", 1]]]], ["dict", [["a", ["int", 1]]] * 2],
                ["obj", 1], [["int"], 1], ["int"], "int", ["int", 1, 2]]:
        with pytest.raises(ValueError):
            untag(bad)
    deep = ["int", 1]
    for _ in range(200):
        deep = ["list", [deep]]
    with pytest.raises(ValueError):
        untag(deep)


# ----------------------------------------------------------------------------- attacks

MARKER = "nanopost_attack_" + uuid.uuid4().hex  # unique to this test run

# f(x) = x*x + 7: no constant guess or echo of the input passes
TESTS = [[[x], x * x + 7] for x in (3, 5, 11, 1234)]

def attack(source):
    return textwrap.dedent(source).lstrip("\n")


ATTACKS = {
    "infinite_loop": attack("""
        def f(x):
            while True:
                pass
        """),
    "infinite_loop_at_import": attack("""
        while True:
            pass
        """),
    "sleep_forever": attack("""
        import time
        def f(x):
            time.sleep(10**6)
        """),
    "memory_bomb": attack("""
        def f(x):
            hog = []
            while True:
                hog.append(bytearray(10**7))
        """),
    "memory_bomb_at_import": attack("""
        hog = 'x' * 10**11
        def f(x):
            return x * x + 7
        """),
    # returns the pids it managed to fork (escaping the group with setsid): the test checks them
    "fork_bomb": attack("""
        import os, time
        def f(x):
            pids = []
            for _ in range(1000):
                try:
                    pid = os.fork()
                    if pid == 0:
                        os.setsid()
                        time.sleep(30)
                    pids.append(pid)
                except Exception:
                    pass
            return pids
        """),
    "spawn_processes": attack("""
        import os
        CMD = 'sleep 30; echo MARKER'
        def f(x):
            tries = [lambda: __import__('subprocess').Popen(['sh', '-c', CMD], start_new_session=True),
                     lambda: os.system(CMD + ' &'),
                     lambda: os.posix_spawn('/bin/sh', ['sh', '-c', CMD], {}),
                     lambda: os.spawnv(os.P_NOWAIT, '/bin/sh', ['sh', '-c', CMD]),
                     lambda: __import__('pty').spawn(['sh', '-c', CMD]),
                     lambda: __import__('multiprocessing').Process(target=print).start(),
                     lambda: __import__('_posixsubprocess'),
                     lambda: os.execv('/bin/sh', ['sh', '-c', CMD])]
            for attempt in tries:
                try:
                    attempt()
                except Exception:
                    pass
            return 0
        """),
    "sys_exit_at_import": attack("""
        import sys
        sys.exit(0)
        """),
    "sys_exit_in_call": attack("""
        import sys
        def f(x):
            sys.exit(0)
        """),
    "os_exit_at_import": attack("""
        import os
        os._exit(0)
        """),
    "os_exit_in_call": attack("""
        import os
        def f(x):
            os._exit(0)
        """),
    "print_fake_success": attack("""
        print('ALL TESTS PASSED\\nreward: 1.0')
        def f(x):
            print('["ok", ["int", %d]]' % (x * x + 7))
            return 'PASSED'
        """),
    # finds the nonce by walking the frames, writes well-formed frames for every test and exits
    # before the runner reports: accepted, but a forged frame only holds values, and these are wrong
    "forge_result_frames": attack("""
        import os, re, sys
        def f(x):
            nonce, frame = None, sys._getframe()
            while frame is not None:
                for value in list(frame.f_locals.values()):
                    if isinstance(value, str) and re.fullmatch('[0-9a-f]{32}', value):
                        nonce = value
                frame = frame.f_back
            lines = ''.join('\\n%s %d ["ok", ["int", 7]]\\n' % (nonce, i) for i in range(4))
            for fd in range(1, 40):
                try:
                    os.write(fd, lines.encode())
                except OSError:
                    pass
            os._exit(0)
        """),
    "redefine_runner_builtins_json": attack("""
        import builtins, json, __main__
        for name in list(vars(__main__)):
            if not name.startswith('__'):
                setattr(__main__, name, lambda *a, **k: True)
        json.dumps = lambda *a, **k: '["ok", ["int", 7]]'
        json.loads = lambda *a, **k: [0]
        builtins.type = lambda *a: int
        builtins.isinstance = lambda *a: True
        def f(x):
            return None
        """),
    "always_equal_object": attack("""
        class Anything:
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            __hash__ = object.__hash__
        def f(x):
            return Anything()
        """),
    "always_equal_int_subclass": attack("""
        class Int(int):
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            __hash__ = int.__hash__
        def f(x):
            return Int(0)
        """),
    "always_equal_containers": attack("""
        class L(list):
            __eq__ = lambda s, o: True
        class S(str):
            __eq__ = lambda s, o: True
        class F(float):
            __eq__ = lambda s, o: True
        def f(x):
            return [L(), S(), F(0)][x % 3]
        """),
    "read_suite_file": attack("""
        import io, json, os, pathlib
        def f(x):
            readers = [lambda: open(SUITE).read(),
                       lambda: io.open_code(SUITE).read().decode(),
                       lambda: pathlib.Path(SUITE).read_text(),
                       lambda: os.read(os.open(SUITE, os.O_RDONLY), 10**6).decode(),
                       lambda: open(os.path.relpath(SUITE)).read(),
                       lambda: open('/proc/self/root' + SUITE).read(),
                       lambda: open(SUITE.encode()).read()]
            for read in readers:
                try:
                    data = json.loads(read())
                    for args, expected in data['public'] + data['hidden']:
                        if args == [x]:
                            return expected
                except Exception:
                    pass
            return -1
        """),
    "disable_hook_then_read_suite": attack("""
        import __main__, json
        for name in ('normpath', 'BLOCKED_EVENTS', 'BLOCKED_MODULES', 'make_hook'):
            setattr(__main__, name, None)
        def f(x):
            try:
                data = json.load(open(SUITE))
                return dict((a[0], e) for a, e in data['public'] + data['hidden'])[x]
            except Exception:
                return -1
        """),
    "tamper_with_hook_then_read_suite": attack("""
        import sys, json, __main__
        def f(x):
            for tamper in [lambda: sys.addaudithook(lambda *a: None),
                           lambda: setattr(__main__.normpath, '__code__', (lambda p, c: '/').__code__),
                           lambda: setattr(__main__.make_hook, '__code__', (lambda *a: None).__code__),
                           lambda: __import__('gc').get_objects(),
                           lambda: __import__('ctypes')]:
                try:
                    tamper()
                except Exception:
                    pass
            try:
                data = json.load(open(SUITE))
                return dict((a[0], e) for a, e in data['public'] + data['hidden'])[x]
            except Exception:
                return -1
        """),
    "write_outside_workdir": attack("""
        import os
        def f(x):
            for write in [lambda: open(TARGET, 'w').write('pwned'),
                          lambda: os.close(os.open(TARGET, os.O_CREAT | os.O_WRONLY)),
                          lambda: os.symlink(TARGET, 'link'),
                          lambda: open('link', 'w').write('pwned'),
                          lambda: open('../' * 20 + TARGET.lstrip('/'), 'w')]:
                try:
                    write()
                except Exception:
                    pass
            return 0
        """),
    # a relative os.open through a directory fd of a readable folder (the stdlib): the audit
    # event shows only the relative path, which looks as if it were inside the work directory
    "write_via_dir_fd": attack("""
        import os, sys
        def f(x):
            for folder in sys.path:
                try:
                    d = os.open(folder, os.O_RDONLY)
                    os.close(os.open('MARKER.py', os.O_CREAT | os.O_WRONLY, dir_fd=d))
                except Exception:
                    pass
                try:
                    open('MARKER.py', 'w', opener=lambda p, f: os.open(p, f, dir_fd=d))
                except Exception:
                    pass
            return 0
        """),
    # right answers after printing 100 MB: the print itself fails (prints are capped too)
    "huge_print": attack("""
        def f(x):
            print('x' * 10**8)
            return x * x + 7
        """),
    "huge_print_at_import": attack("""
        for _ in range(100):
            print('x' * 10**6)  # 100 MB in all
        def f(x):
            return x * x + 7
        """),
    # right answers, but 100 MB of junk down every fd, the result pipe included: over the cap
    "flood_the_result_pipe": attack("""
        import os
        def f(x):
            chunk = b'y' * 10**6
            for _ in range(100):
                for fd in range(1, 10):
                    try:
                        os.write(fd, chunk)
                    except OSError:
                        pass
            return x * x + 7
        """),
    "network_connect": attack("""
        def f(x):
            import socket
            socket.create_connection(('1.1.1.1', 80), timeout=1).sendall(b'hi')
            return x * x + 7
        """),
    # SIGUSR1, not SIGKILL: should this ever get through, the test sees it instead of dying
    "signal_the_grader": attack("""
        import os, signal
        def f(x):
            for send in [lambda: os.kill(os.getppid(), signal.SIGUSR1),
                         lambda: os.killpg(os.getpgid(os.getppid()), signal.SIGUSR1),
                         lambda: signal.pthread_kill(os.getppid(), signal.SIGUSR1)]:
                try:
                    send()
                except Exception:
                    pass
            return 0
        """),
    "deep_recursion": attack("""
        import sys
        sys.setrecursionlimit(10**9)
        def f(x):
            return f(x + 1)
        """),
}


# attacks whose candidate returns -1 when its trick fails: every test must have run and said so
RETURNS_MINUS_ONE = {"read_suite_file", "disable_hook_then_read_suite", "tamper_with_hook_then_read_suite"}


@pytest.fixture(scope="module")
def attack_suite(tmp_path_factory):
    folder = tmp_path_factory.mktemp("suites")
    meta = make_suite("attack", "f", TESTS[:1], TESTS[1:], folder, timeout_s=TIMEOUT_S, mem_mb=256)
    return meta, folder


def test_the_attack_suite_is_passable(attack_suite):
    meta, folder = attack_suite
    assert code_grader("def f(x):\n    return x * x + 7\n", meta, folder) == 1.0


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_scores_zero(name, attack_suite, tmp_path, monkeypatch):
    meta, folder = attack_suite
    target = tmp_path / "pwned.txt"
    code = (f"# {MARKER}\nSUITE = {str(folder / 'attack.json')!r}\nTARGET = {str(target)!r}\n"
            + ATTACKS[name].replace("MARKER", MARKER))
    runs, signals = [], []
    previous = signal.signal(signal.SIGUSR1, lambda *a: signals.append(a))
    monkeypatch.setattr(graders, "run_untrusted", lambda *a, **k: runs.append(run_untrusted(*a, **k)) or runs[-1])
    cwd, environ = os.getcwd(), dict(os.environ)
    start = time.monotonic()
    try:
        assert code_grader(code, meta, folder) == 0.0
        assert time.monotonic() - start < TIMEOUT_S + MARGIN_S
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert (os.getcwd(), dict(os.environ)) == (cwd, environ)  # the test process is unharmed
    assert not target.exists() and not signals
    planted = [path for path in stdlib_files(MARKER + ".py") if os.path.exists(path)]
    for path in planted:  # clean up before failing
        os.remove(path)
    assert not planted
    assert [p.name for p in folder.iterdir()] == ["attack.json"]
    assert_nothing_left(runs[0].pid, MARKER)
    if name == "fork_bomb":
        forked = [pid for r in runs[0].results if r["ok"] for pid in r["value"]]
        assert forked == []  # a setsid'd child would escape the group kill: none may exist
    if name in RETURNS_MINUS_ONE:
        assert [r.get("value") for r in runs[0].results] == [-1] * len(TESTS)
