"""The code reward and its sandbox: correct answers pass, hostile completions end in reward 0, on time,
with nothing left behind and this (the trainer's) process unharmed.

Every hostile program is bounded by itself too, so a sandbox bug cannot take the machine down: the
fork test starts at most 300 processes, the allocation asks for 4 GB (over the 1 GB limit, under the
machine's memory), the print test writes 64 MB at most.
"""

from __future__ import annotations

import glob
import os
import socket
import time

import pytest

from anglerank.rewards import RewardError, code_reward, code_reward_all, load_reward
from anglerank.rewards.coding import extract_code, normalise_tests
from anglerank.rewards.sandbox import Limits, isolation, run_python
from helpers import ROOT

ADD = "```python\ndef add(a, b):\n    return a + b\n```"
ADD_TESTS = ["assert add(1, 2) == 3", "assert add(0, 0) == 0"]


def _fence(body: str) -> str:
    return "Here is my solution:\n```python\n" + body + "\n```\n"


def test_extract_and_normalise():
    assert extract_code("a\n```python\nx = 1\n```\nthen\n```py\nx = 2\n```") == "x = 2\n"
    assert extract_code("```\nprint(1)\n```") == "print(1)\n"
    assert extract_code("no fence at all") is None
    assert normalise_tests('{"inputs": ["1\\n"], "outputs": ["2\\n"]}') == [("io", ("1\n", "2\n"))]
    assert normalise_tests([{"input": "3", "output": "4"}, "assert f() == 1"]) == [("io", ("3", "4")),
                                                                                ("assert", "assert f() == 1")]
    with pytest.raises(ValueError):
        normalise_tests([42])


def test_code_reward_scores_the_share_of_tests_passed():
    comps = [ADD, _fence("def add(a, b):\n    return a - b"), "I cannot write code.",
             _fence("a, b = map(int, input().split())\nprint(a + b)")]
    tests = [ADD_TESTS, ADD_TESTS, ["assert True"], [{"input": "1 2\n", "output": "3\n"}, {"input": "5 5", "output": "11"}]]
    assert code_reward(None, comps, tests=tests) == [1.0, 0.5, 0.0, 0.5]  # a - b passes add(0, 0) only
    assert code_reward_all(None, comps, tests=tests) == [1.0, 0.0, 0.0, 0.0]
    assert load_reward("code") is code_reward and load_reward("builtin:code_all") is code_reward_all
    conversational = [[{"role": "assistant", "content": ADD}]]
    assert code_reward(None, conversational, tests=[ADD_TESTS]) == [1.0]
    with pytest.raises(RewardError, match="tests"):
        code_reward(None, [ADD])


HOSTILE = {
    "infinite loop": "while True:\n    pass",
    "fork bomb (bounded: 300 forks at most)": (
        "import os, time\nn = 0\nfor _ in range(300):\n    try:\n        if os.fork() == 0:\n"
        "            time.sleep(60)\n            os._exit(0)\n        n += 1\n    except OSError:\n        break\n"
        "time.sleep(60)"),
    "allocate 4 GB": "x = bytearray(4 * 2**30)\nx[::4096] = b'1' * len(x[::4096])",
    "print 64 MB": "import sys\nfor _ in range(64):\n    sys.stdout.write('x' * 2**20)\nsys.stdout.flush()",
    "kill the parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.killpg(0, signal.SIGKILL)",
    "read secrets from the environment": "import os\nassert os.environ['ANGLERANK_TEST_SECRET'] == 's3cret'",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_completions_get_zero_on_time(name, monkeypatch):
    monkeypatch.setenv("ANGLERANK_TEST_SECRET", "s3cret")
    before = set(glob.glob("/tmp/anglerank-sandbox-*"))
    t0 = time.perf_counter()
    got = code_reward(None, [_fence(HOSTILE[name] + "\ndef add(a, b):\n    return a + b")], tests=[ADD_TESTS])
    assert got == [0.0]
    assert time.perf_counter() - t0 < 2 * (Limits().timeout_s + 3)  # two tests, each timeout + start-up
    assert set(glob.glob("/tmp/anglerank-sandbox-*")) == before  # nothing left behind
    assert not glob.glob("/sys/fs/cgroup/pids/anglerank-sandbox-*")


def test_no_write_outside_and_no_network(tmp_path):
    target = tmp_path / "pwned.txt"
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        write = run_python(f"open({str(target)!r}, 'w').write('x')")
        net = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)")
        own = run_python("open('mine.txt', 'w').write('ok')\nprint(open('mine.txt').read())")
    finally:
        server.close()
    assert not target.exists()
    if isolation().get("private_root"):  # the directory is not even there
        assert write.returncode != 0 and "No such file or directory" in write.stderr
    elif isolation().get("read_only"):
        assert write.returncode != 0 and "Read-only" in write.stderr
    if isolation().get("namespaces"):
        assert net.returncode != 0
    assert own.returncode == 0 and own.stdout.strip() == "ok"  # its own directory stays writable


def test_processes_do_not_outlive_the_timeout():
    out = run_python("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\ntime.sleep(60)",
                     limits=Limits(timeout_s=1))
    assert out.timed_out and out.returncode is None
    time.sleep(0.2)
    leftover = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p).endswith("main.py")]
    assert not leftover


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


SOLUTIONS = {
    "scale": "def scale(x):\n    return x * int(__import__('re').search(r'multiplied by (\\d+)', Q).group(1))",
    "total": "def total(xs):\n    return sum(xs)",
    "rev": "def rev(s):\n    return s[::-1]",
    "vowels": "def vowels(s):\n    return sum(c in 'aeiou' for c in s)",
    "clamp": "def clamp(x):\n    hi = int(__import__('re').search(r'0 to (\\d+)', Q).group(1))\n    return min(max(x, 0), hi)",
}


def test_demo_code_tasks_are_solvable_and_train(tmp_path, tiny_model_dir):
    """The generated demo problems: a correct solution scores 1 on every row; a short training run works."""
    import sys

    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from anglerank.cli import app

    sys.path.insert(0, str(ROOT / "examples"))
    import code_tasks

    rows = code_tasks.make_rows(15, seed=3)
    question = lambda r: r["prompt"][0]["content"].split(" Answer with")[0]  # noqa: E731 - no ``` inside the block
    comps = [_fence(f"Q = {question(r)!r}\n" + SOLUTIONS[r["data_source"].split("-", 1)[1]]) for r in rows]
    assert code_reward(None, comps, tests=[r["tests"] for r in rows]) == [1.0] * len(rows)

    import pyarrow as pa

    data = tmp_path / "code.parquet"
    pq.write_table(pa.Table.from_pylist(rows), data)
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", str(data), "-o", str(run), "--model", str(tiny_model_dir), "--device",
                                   "cpu", "--dtype", "float32", "--reward", "code", "--num-generations", "2",
                                   "--max-new-tokens", "4", "--prompts-per-step", "2", "--subset-size", "4",
                                   "--sampler", "uniform", "--epochs", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    from anglerank.train.metrics import read_metrics

    steps = read_metrics(run, "step")
    assert len(steps) == 2 and all(s["reward_mean"] == 0.0 for s in steps)  # a random tiny model writes no code
