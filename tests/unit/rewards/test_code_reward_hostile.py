"""The code reward pays only for solving: completions that game the judge score 0, correct ones score 1.

``HOSTILE`` and ``CORRECT`` are reusable: name -> (program, tests). Every hostile program answers
wrongly (or not at all) and tries to be paid anyway: exiting 0 before the tests, objects that equal
anything, reading the tests or the data, forging protocol messages, patching builtins... Each is
bounded by itself (a fork bomb of 300 processes at most, 64 MB of output at most).
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from anglerank.rewards import code_reward, code_reward_all
from anglerank.rewards.coding import pass_fractions
from anglerank.rewards.sandbox import Limits, SandboxUnavailable, UNISOLATED_ENV, isolation, run_python
from helpers import ROOT

ADD = ["assert add(1, 2) == 3", "assert add(5, 7) == 12", "assert add(-4, 4) == 0", "assert add(10, 20) == 30"]
EVEN = ["assert is_even(4)", "assert not is_even(3)"]
REV = ["assert rev('abc') == 'cba'", "assert rev('') == ''"]
FLOAT = ["from math import isclose\nassert isclose(area(2.0), 12.566370614359172)",
         "assert abs(area(1.0) - 3.141592653589793) < 1e-6"]
IO = [{"input": "1 2\n", "output": "3\n"}, {"input": "5 7\n", "output": "12\n"}, {"input": "-4 4\n", "output": "0\n"}]
FAST = Limits(timeout_s=1.0, total_timeout_s=8.0)  # for the programs that hang or hog


def _p(src: str) -> str:
    return textwrap.dedent(src).strip("\n") + "\n"


def _fence(program: str) -> str:
    return "My answer:\n```python\n" + program + "```\n"


# A forged judge message (4-byte length, then JSON), as a hostile program would build it.
_FORGE = "import json, os\ndef frame(m):\n    d = json.dumps(m).encode()\n    return len(d).to_bytes(4, 'big') + d\n"

HOSTILE = {
    # exit 0 before (or instead of) the tests
    "sys.exit(0)": (_p("import sys\ndef add(a, b):\n    return 0\nsys.exit(0)"), ADD),
    "os._exit(0)": (_p("import os\ndef add(a, b):\n    return 0\nos._exit(0)"), ADD),
    "raise SystemExit(0)": (_p("def add(a, b):\n    return 0\nraise SystemExit(0)"), ADD),
    "atexit hook exits 0": (_p("""
        import atexit, os
        atexit.register(os._exit, 0)
        def add(a, b):
            return 0
        raise RuntimeError('stop here')"""), ADD),
    "excepthook exits 0": (_p("""
        import os, sys
        sys.excepthook = lambda *a: os._exit(0)
        def add(a, b):
            raise RuntimeError('no')
        raise RuntimeError('stop here')"""), ADD),
    "exit 0 inside the function": (_p("import sys\ndef add(a, b):\n    sys.exit(0)"), ADD),
    "os._exit(0) inside the function": (_p("import os\ndef add(a, b):\n    os._exit(0)"), ADD),
    "KeyboardInterrupt inside the function": (_p("def add(a, b):\n    raise KeyboardInterrupt"), ADD),
    "signal handler exits 0": (_p("""
        import os, signal
        signal.signal(signal.SIGALRM, lambda *a: os._exit(0))
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        def add(a, b):
            while True:
                pass"""), ADD),
    "kill itself": (_p("import os, signal\ndef add(a, b):\n    os.kill(os.getpid(), signal.SIGKILL)"), ADD),
    "kill its parent, its group, everyone": (_p("""
        import os, signal
        for target in (os.getppid(), 1, 0, -1):
            try:
                os.kill(target, signal.SIGKILL)
            except OSError:
                pass
        def add(a, b):
            return 0"""), ADD),
    # results that claim to be right
    "__eq__ always True": (_p("class E:\n    __eq__ = lambda s, o: True\ndef add(a, b):\n    return E()"), ADD),
    "__eq__ returns NotImplemented": (_p("""
        class E:
            def __eq__(self, o):
                return NotImplemented
            __ne__ = __eq__
        def add(a, b):
            return E()"""), ADD),
    "returns NotImplemented": (_p("def add(a, b):\n    return NotImplemented"), ADD),
    "int subclass equal to anything": (_p("""
        class I(int):
            def __eq__(self, o):
                return True
            __hash__ = int.__hash__
        def add(a, b):
            return I(0)"""), ADD),
    "str subclass equal to anything": (_p("""
        class S(str):
            __eq__ = lambda s, o: True
            __hash__ = str.__hash__
        def rev(s):
            return S('nope')"""), REV),
    "list subclass equal to anything": (_p("""
        class L(list):
            __eq__ = lambda s, o: True
        def add(a, b):
            return L()"""), ADD),
    "float subclass that subtracts to zero": (_p("""
        class F(float):
            __sub__ = lambda s, o: 0.0
            __rsub__ = __sub__
            __eq__ = lambda s, o: True
            __hash__ = float.__hash__
        def area(r):
            return F(1.0)"""), FLOAT),
    "__class__ claims int": (_p("""
        class Fake:
            __class__ = int
            __eq__ = lambda s, o: True
            __hash__ = lambda s: 0
        def add(a, b):
            return Fake()"""), ADD),
    "__bool__ that flips": (_p("""
        class B:
            n = 0
            def __bool__(self):
                B.n += 1
                return B.n % 2 == 1
        def is_even(x):
            return B()"""), EVEN),
    # reading the tests or the data
    "parse the tests from __file__": (_p("""
        import re
        src = open(__file__).read()
        table = {(int(a), int(b)): int(c) for a, b, c in re.findall(r'add\\((-?\\d+), (-?\\d+)\\) == (-?\\d+)', src)}
        def add(a, b):
            return table[(a, b)]"""), ADD),
    "parse the tests from sys.argv and /proc/self/cmdline": (_p("""
        import re, sys
        src = ' '.join(sys.argv) + open('/proc/self/cmdline').read()
        for path in sys.argv:
            try:
                src += open(path).read()
            except OSError:
                pass
        table = {(int(a), int(b)): int(c) for a, b, c in re.findall(r'add\\((-?\\d+), (-?\\d+)\\) == (-?\\d+)', src)}
        def add(a, b):
            return table[(a, b)]"""), ADD),
    "read the judge through /proc": (_p("""
        import os, re
        src = ''
        for pid in [p for p in os.listdir('/proc') if p.isdigit()] + [str(os.getppid())]:
            for what in ('cmdline', 'environ', 'mem', 'root/tmp', 'cwd', 'fd/0'):
                try:
                    src += open(f'/proc/{pid}/{what}', errors='replace').read(1 << 20)
                except OSError:
                    pass
        table = {(int(a), int(b)): int(c) for a, b, c in re.findall(r'add\\((-?\\d+), (-?\\d+)\\) == (-?\\d+)', src)}
        def add(a, b):
            return table[(a, b)]"""), ADD),
    "scan the file system for the tests": (_p("""
        import os, re, time
        src, t0 = '', time.time()
        for top in ('/', '/tmp', '/work', '/home', '/root', '/data', '/mnt'):
            for d, dirs, files in os.walk(top):
                dirs[:] = [x for x in dirs if os.path.join(d, x) not in ('/usr', '/proc', '/sys')]
                for f in files:
                    try:
                        text = open(os.path.join(d, f), errors='replace').read(1 << 16)
                    except OSError:
                        continue
                    if 'add(' in text:
                        src += text
                if time.time() - t0 > 0.5:
                    break
        table = {(int(a), int(b)): int(c) for a, b, c in re.findall(r'add\\((-?\\d+), (-?\\d+)\\) == (-?\\d+)', src)}
        def add(a, b):
            return table[(a, b)]"""), ADD),
    # patching what the test uses
    "patch builtins and AssertionError": (_p("""
        import builtins
        builtins.AssertionError = type('Nothing', (Exception,), {})
        builtins.abs = lambda x: 0
        builtins.isinstance = lambda *a: True
        builtins.type = lambda *a: float
        abs = lambda x: 0
        def area(r):
            return 1.0"""), FLOAT),
    "a global named like the test's module": (_p("""
        class math:
            isclose = staticmethod(lambda *a, **k: True)
        def area(r):
            return 1.0"""), ["assert math.isclose(area(2.0), 12.566370614359172)"]),
    # the protocol
    "forged ready message": (_p(_FORGE + "os.write(4, frame(['ready', {'add': ['b', True]}]))\nos._exit(0)"), ADD),
    "forged answers from a thread": (_p(_FORGE + """
        import threading, time
        def answer():
            n = 0
            while True:
                size = int.from_bytes(os.read(3, 4), 'big')
                os.read(3, size)
                n += 1
                os.write(4, frame([n, 'ok', ['b', True]]))
        os.write(4, frame(['ready', {'add': ['r', 0]}]))
        threading.Thread(target=answer, daemon=True).start()
        time.sleep(60)"""), ADD),
    "garbage on the answer pipe": (_p("import os\nos.write(4, b'\\xff' * 4 + b'x' * 100)\n"
                                      "def add(a, b):\n    return 0"), ADD),
    "closes the protocol pipes": (_p("import os\nos.close(3)\nos.close(4)\ndef add(a, b):\n    return a + b"), ADD),
    # printing the answer
    "prints PASS and the expected values": (_p("print('PASS')\nprint(3, 12, 0, 30)\n"
                                               "def add(a, b):\n    print(a + b)\n    return None"), ADD),
}

SLOW_HOSTILE = {  # need the timeout, so judged with FAST limits
    "infinite loop": (_p("def add(a, b):\n    while True:\n        pass"), ADD),
    "infinite loop at load": (_p("while True:\n    pass\ndef add(a, b):\n    return a + b"), ADD),
    "fork bomb (300 forks at most)": (_p("""
        import os, time
        def add(a, b):
            for _ in range(300):
                try:
                    if os.fork() == 0:
                        time.sleep(60)
                        os._exit(0)
                except OSError:
                    break
            time.sleep(60)"""), ADD),
    "gigantic output, then the right answer": (_p("""
        import sys
        for _ in range(64):
            sys.stdout.write('x' * 2**20)
        sys.stdout.flush()
        def add(a, b):
            return a + b"""), ADD),
    "gigantic answer": (_p("def add(a, b):\n    return 'x' * (64 << 20)"), ADD),
    "io: prints forever": (_p("while True:\n    print('3 12 0')"), IO),
}

CORRECT = {
    "ints": (_p("def add(a, b):\n    return a + b"), ADD + ["assert add(a=2, b=3) == 5", "assert add(*[1, 1]) == 2"]),
    "floats with tolerances": (_p("import math\ndef area(r):\n    return math.pi * r * r"), FLOAT),
    "strings": (_p("def rev(s):\n    return s[::-1]"), REV),
    "bools": (_p("def is_even(x):\n    return x % 2 == 0"), EVEN + ["assert is_even(0) is True"]),
    "None": (_p("def find(xs, x):\n    return xs.index(x) if x in xs else None"),
             ["assert find([], 1) is None", "assert find([4, 5], 5) == 1"]),
    "lists, tuples, dicts, sets, nesting": (_p("""
        from collections import Counter, defaultdict, namedtuple
        P = namedtuple('P', 'x y')
        def pairs(xs):
            return [(a, b) for a, b in zip(xs, xs[1:])]
        def count(s):
            return Counter(s)
        def groups(xs):
            d = defaultdict(list)
            for x in xs:
                d[x % 2].append(x)
            return d
        def uniq(xs):
            return set(xs)
        def point():
            return P(1, 2)
        def frozen():
            return frozenset({1, 2})"""),
        ["assert pairs([1, 2, 3]) == [(1, 2), (2, 3)]", "assert count('aab') == {'a': 2, 'b': 1}",
         "assert groups([1, 2, 3]) == {1: [1, 3], 0: [2]}", "assert uniq([1, 1, 2]) == {1, 2}",
         "assert point() == (1, 2)", "assert frozen() == {1, 2}", "assert sorted(uniq('ab')) == ['a', 'b']"]),
    "recursion, big ints, bytes, complex": (_p("""
        import sys
        sys.setrecursionlimit(5000)
        def fact(n):
            return 1 if n < 2 else n * fact(n - 1)
        def depth(n):
            return 0 if n == 0 else 1 + depth(n - 1)
        def raw(s):
            return s.encode()
        def root():
            return (-1) ** 0.5"""),
        ["assert fact(30) == 265252859812191058636308480000000", "assert depth(2000) == 2000",
         "assert raw('hé') == b'h\\xc3\\xa9'", "assert abs(root() - 1j) < 1e-12", "assert fact(600) > 10 ** 1000"]),
    "standard-library imports and printing": (_p("""
        from functools import lru_cache
        import itertools, math
        @lru_cache(None)
        def fib(n):
            print('fib', n)
            return n if n < 2 else fib(n - 1) + fib(n - 2)
        def lcm_all(xs):
            out = 1
            for x in xs:
                out = out * x // math.gcd(out, x)
            return out
        def perms(s):
            return sorted(''.join(p) for p in itertools.permutations(s))"""),
        ["assert fib(30) == 832040", "assert lcm_all([4, 6]) == 12", "assert perms('ab') == ['ab', 'ba']",
         "import math\nassert math.gcd(lcm_all([3, 5]), 10) == 5"]),
    "stdin/stdout program": (_p("""
        import sys
        a, b = map(int, sys.stdin.read().split())
        print(a + b)
        exit(0)"""), IO),
    "stdin/stdout program using input()": (_p("a, b = map(int, input().split())\nprint(a + b)"), IO),
    "HumanEval check(candidate)": (_p("""
        from typing import List
        def below_zero(operations: List[int]) -> bool:
            balance = 0
            for op in operations:
                balance += op
                if balance < 0:
                    return True
            return False"""),
        [_p("""
            METADATA = {'author': 'jt', 'dataset': 'test'}

            def check(candidate):
                assert candidate([]) == False
                assert candidate([1, 2, -3, 1, 2, -3]) == False
                assert candidate([1, 2, -4, 5, 6]) == True

            check(below_zero)""")]),
    "class-based solution": (_p("""
        class Solution:
            def __init__(self):
                self.calls = 0
            def two_sum(self, nums, target):
                self.calls += 1
                seen = {}
                for i, x in enumerate(nums):
                    if target - x in seen:
                        return [seen[target - x], i]
                    seen[x] = i"""),
        ["assert Solution().two_sum([2, 7, 11], 9) == [0, 1]",
         "s = Solution()\ns.two_sum([3, 3], 6)\nassert s.calls == 1 and s.two_sum([1, 5], 6) == [0, 1]"]),
    "generators, exceptions, objects passed back": (_p("""
        def count_up(n):
            yield from range(n)
        def safe_div(a, b):
            if b == 0:
                raise ZeroDivisionError('b is 0')
            return a / b
        class Node:
            def __init__(self, val, next=None):
                self.val, self.next = val, next
        def total(node):
            return 0 if node is None else node.val + total(node.next)"""),
        ["assert list(count_up(3)) == [0, 1, 2]", "g = count_up(2)\nassert next(g) == 0",
         "try:\n    safe_div(1, 0)\nexcept ZeroDivisionError:\n    pass\nelse:\n    assert False",
         "assert total(Node(1, Node(2, Node(3)))) == 6", "assert Node(4).val == 4"]),
}


def _scores(cases: dict, limits: Limits = Limits()) -> dict:
    names = list(cases)
    got = pass_fractions([_fence(cases[n][0]) for n in names], [cases[n][1] for n in names], limits)
    return dict(zip(names, got))


def test_hostile_completions_score_zero():
    assert {n: s for n, s in _scores(HOSTILE).items() if s != 0.0} == {}


def test_hostile_completions_that_hang_or_hog_score_zero():
    assert {n: s for n, s in _scores(SLOW_HOSTILE, FAST).items() if s != 0.0} == {}


def test_correct_solutions_score_one():
    assert {n: s for n, s in _scores(CORRECT).items() if s != 1.0} == {}


def test_partial_solutions_and_all_or_nothing():
    comps = [_fence("def add(a, b):\n    return a + b if a == 1 else -1\n"),  # 1 of 4
             _fence("a, b = map(int, input().split())\nprint(a + b if a > 0 else 99)\n"),  # io: 2 of 3
             _fence("def add(a, b):\n    if a == 10:\n        raise ValueError\n    return a + b\n")]  # 3 of 4
    tests = [ADD, IO, ADD]
    assert code_reward(None, comps, tests=tests) == [0.25, 2 / 3, 0.75]
    assert code_reward_all(None, comps + [_fence(CORRECT["ints"][0])], tests=tests + [ADD]) == [0.0, 0.0, 0.0, 1.0]


def test_a_test_that_crashes_the_program_does_not_take_the_others_down():
    program = "import os\ndef add(a, b):\n    if a == 5:\n        os._exit(1)\n    return a + b\n"
    assert code_reward(None, [_fence(program)], tests=[ADD]) == [0.75]


def test_the_program_sees_only_the_interpreter_and_its_own_directory(tmp_path):
    """The data, the run directory, /tmp, home directories, the trainer's directory: all out of sight."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"tests": [ADD], "answer": ["3 12 0 30"]}), data)
    (tmp_path / "answers.txt").write_text("3 12 0 30\n")
    secret_paths = [str(data), str(tmp_path / "answers.txt"), str(tmp_path), os.getcwd(), "/tmp", "/home",
                    "/root", str(ROOT), sys.prefix,
                    "/proc/1/root/tmp", "/proc/1/environ", "/proc/1/mem", "/sys/fs/cgroup", "/etc/passwd"]
    probe = _p(f"""
        import os
        seen = []
        for path in {secret_paths!r}:
            try:
                seen.append(path + ': ' + str(os.listdir(path) if os.path.isdir(path) else open(path, 'rb').read(64)))
            except OSError:
                pass
        print('SEEN', seen)
        print('ROOT', sorted(os.listdir('/')))
        print('ENV', dict(os.environ))""")
    assert data.exists() and os.access(data, os.R_OK)  # readable here, by the trainer
    out = run_python(probe)
    assert out.returncode == 0, out.stderr
    if not isolation().get("private_root"):
        pytest.skip("no private root on this machine")
    assert "SEEN []" in out.stdout, out.stdout
    root = eval(out.stdout.split("ROOT ", 1)[1].splitlines()[0])
    assert set(root) <= {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sandbox", "sbin", "usr",
                         "work"} | {sys.base_prefix.strip("/").split("/")[0]}, root
    assert "ENV {'LANG': 'C.UTF-8'}" in out.stdout


def test_isolation_report_and_no_site_packages():
    rep = isolation()
    assert {"namespaces", "private_root", "read_only", "pids_cgroup"} <= rep.keys()
    out = run_python("import importlib.util as u\n"
                     "print([m for m in ('anglerank', 'torch', 'pyarrow') if u.find_spec(m)])")
    assert out.returncode == 0 and out.stdout.strip() == "[]", out


def test_fails_closed_without_isolation_unless_waived(monkeypatch):
    """A machine where the private root cannot be built (here: the Python installation cannot be bound into
    it) refuses with one clear error; the documented switch runs the tests unisolated instead."""
    monkeypatch.setattr(sys, "base_prefix", "/nonexistent-python-prefix")
    monkeypatch.delenv(UNISOLATED_ENV, raising=False)
    with pytest.raises(SandboxUnavailable, match=UNISOLATED_ENV) as err:
        pass_fractions([_fence(CORRECT["ints"][0])], [ADD])
    assert "\n" not in str(err.value)
    monkeypatch.setenv(UNISOLATED_ENV, "1")
    assert pass_fractions([_fence(CORRECT["ints"][0]), _fence(HOSTILE["sys.exit(0)"][0])], [ADD, ADD]) == [1.0, 0.0]
    assert run_python("print(1)", limits=Limits(require_isolation=False)).isolation["private_root"] is False


def test_training_stops_with_one_line_when_programs_cannot_be_isolated(tmp_path, tiny_model_dir, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from anglerank.cli import app
    from helpers import one_error_line

    rows = [{"prompt": [{"role": "user", "content": f"Write add. ({i})"}], "tests": ADD, "data_source": "add",
             "extra_info": {"index": i}} for i in range(4)]
    data = tmp_path / "code.parquet"
    pq.write_table(pa.Table.from_pylist(rows), data)
    monkeypatch.setattr(sys, "base_prefix", "/nonexistent-python-prefix")
    monkeypatch.delenv(UNISOLATED_ENV, raising=False)
    res = CliRunner().invoke(app, ["train", str(data), "-o", str(tmp_path / "run"), "--model", str(tiny_model_dir),
                                   "--device", "cpu", "--dtype", "float32", "--reward", "code", "--num-generations",
                                   "2", "--max-new-tokens", "4", "--prompts-per-step", "2", "--subset-size", "2",
                                   "--sampler", "uniform", "--epochs", "1", "--quiet"])
    one_error_line(res, "code sandbox cannot isolate programs", UNISOLATED_ENV)


def test_the_judge_works_when_the_package_lives_under_tmp(tmp_path):
    """The private root is a tmpfs over /tmp in the judge's namespace: a checkout or venv under /tmp (a CI
    clone, a notebook's scratch copy) must still find the judge's own modules."""
    import shutil
    import subprocess
    import sys
    import tempfile

    from anglerank import rewards

    home = Path(tempfile.mkdtemp(prefix="anglerank-under-tmp-", dir="/tmp"))
    try:
        shutil.copytree(Path(rewards.__file__).parents[1], home / "anglerank",
                        ignore=shutil.ignore_patterns("__pycache__"))
        code = ("import sys; from anglerank.rewards import code_reward\n"
                "assert __import__('anglerank').__file__.startswith(sys.argv[1])\n"
                "print(code_reward(None, ['```python\\ndef add(a, b):\\n    return a + b\\n```'], "
                "tests=[['assert add(2, 3) == 5']]))\n")
        p = subprocess.run([sys.executable, "-c", code, str(home)], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(home)}, cwd=home)
        assert p.returncode == 0 and p.stdout.strip() == "[1.0]", p.stderr[-1500:]
    finally:
        shutil.rmtree(home, ignore_errors=True)
