"""Options generated from the settings dataclasses give the same outputs as the hand-written commands did.

The reference is the package before options were derived from the fields (every command declared its own).
The same `score` and `sample` command lines, run by both, must write byte-identical score parts and
curriculum files, and equal manifests and ``sample.json`` (times aside).
"""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import package_at

REFERENCE_COMMIT = "c7ff9f92fb953b61ebf2c9a930b16f8c69b9a0d4"
TIMES = {"started_at", "updated_at", "finished_at", "elapsed_s", "tokens_per_s", "rows_per_s", "anglerank_version"}

# command lines that exercise the options now generated from the fields (defaults included)
SCORE_CASES = {
    "defaults": [],
    "gainrl": ["--preset", "gainrl", "--estimator", "gainrl-code", "--w-intra", "2", "--layers", "0:2"],
    "residual": ["--site", "residual", "--layer", "0", "--no-prefix-cache", "--batch-tokens", "300",
                 "--max-length", "20", "--system", "Be brief."],
}
SAMPLE_CASES = {
    "defaults": ["--subset", "4", "--epochs", "5"],
    "wrap": ["--subset", "0.2", "--epochs", "9", "--mu0", "3", "--sigma", "0.3", "--step", "5", "--wrap",
             "--ranking", "random", "--seed", "7", "--keep-order"],
    "length": ["--subset", "3", "--epochs", "4", "--ranking", "length", "--sigma", "6"],
}


def _run(pythonpath: str | None, argv: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    code = "import sys; from anglerank.cli import main; sys.argv = ['anglerank', *sys.argv[1:]]; main()"
    res = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, timeout=600,
                         cwd=pythonpath or None)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.fixture(scope="module")
def both(tmp_path_factory, tiny_model_dir):
    """Every case run by the reference package and by this one."""
    base = tmp_path_factory.mktemp("identity")
    ref_pkg = str(package_at(REFERENCE_COMMIT, base / "reference"))
    qs = [f"Tom has {i} apples and buys {i + 3} more. How many apples does he have?" for i in range(17)]
    data = base / "q.parquet"
    pq.write_table(pa.table({"prompt": [[{"role": "user", "content": q}] for q in qs],
                             "extra_info": [{"index": i} for i in range(len(qs))]}), data)
    for who, path in (("ref", ref_pkg), ("new", None)):
        for name, extra in SCORE_CASES.items():
            _run(path, ["score", str(data), "-o", str(base / who / f"score-{name}"), "--model", str(tiny_model_dir),
                        "--dtype", "float32", "--device", "cpu", "-q", *extra])
        for name, extra in SAMPLE_CASES.items():
            _run(path, ["sample", str(base / "ref" / "score-defaults"), "-o", str(base / who / f"sample-{name}"),
                        "-q", *extra])
    return base


def _json(path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in TIMES}


@pytest.mark.parametrize("case", list(SCORE_CASES))
def test_score_writes_the_same_parts_and_manifest(both, case):
    ref, new = both / "ref" / f"score-{case}", both / "new" / f"score-{case}"
    m_ref, m_new = _json(ref / "manifest.json"), _json(new / "manifest.json")
    parts = [p["file"] for p in m_ref["parts"]]
    assert parts and all(filecmp.cmp(ref / p, new / p, shallow=False) for p in parts)
    for m in (m_ref, m_new):
        m.pop("output", None)
        m.pop("parts")
    assert m_new == m_ref


@pytest.mark.parametrize("case", list(SAMPLE_CASES))
def test_sample_writes_the_same_curriculum(both, case):
    ref, new = both / "ref" / f"sample-{case}", both / "new" / f"sample-{case}"
    files = sorted(p.name for p in ref.glob("epoch_*.parquet"))
    assert files and files == sorted(p.name for p in new.glob("epoch_*.parquet"))
    assert all(filecmp.cmp(ref / f, new / f, shallow=False) for f in files)
    s_ref, s_new = _json(ref / "sample.json"), _json(new / "sample.json")
    s_ref.pop("output", None)
    s_new.pop("output", None)
    assert s_new == s_ref
