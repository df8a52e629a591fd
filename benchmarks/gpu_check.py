"""GPU benchmark of `anglerank score` in one call, with nothing but the repository and a small bundle.

Two stages:

  prepare  (here, with the data and the embedded model at hand): copies the embedded
           model's tokenizer and the GSM8K training prompts into a bundle folder
           (benchmarks/gpu_bundle/, gitignored: the data must not be committed), at most 64 MiB.
  run      (on the GPU machine): for Qwen2 shapes of 0.5B and 1.5B parameters with random
           weights (speed needs no trained weights), built from configs and saved as a
           model folder next to the bundle's tokenizer, it measures
             - `anglerank score` with its defaults, as a subprocess (start-up included) and
               its scoring loop alone (the manifest's elapsed time): tokens/s, MFU, peak memory;
             - the authors' loop (benchmarks/common.py: bs1, float32, full model + LM head,
               L x L matrix) on a subset: tokens/s and the speed-up of ours over it;
             - Spearman of the default (bf16) scores against float32 scores and the authors';
             - memory (gpu_check_memory.py): the budget `anglerank score` picks from the free
               memory against the peak it measures, a back-off forced by capping the
               process's memory, and a load up to a middle layer against a full one
               (parameters, memory, identical scores), also with --device-map auto;
             - a sweep of --batch-tokens (in process, through the library) plus one point
               without the prefix cache.
           Results: gpu_check.json and gpu_check.md in --out (default $OUT).

FLOPs and MFU. Per prompt token the scorer runs 2 x P_run FLOPs, P_run = non-embedding
parameters less the last layer's MLP and the final norm (the forward stops at the hooked
input of the last MLP; no LM head); the attention term (2 x layers x context x hidden)
is left out: under 1% at GSM8K's ~200 tokens. `mfu` counts the tokens that actually ran
(the shared prompt prefix runs once, padding excluded) against the card's dense bf16 peak
(a table by card name; else a measured bf16 matmul, which is always recorded too);
`mfu_all_tokens` counts every prompt token as if each ran (the work a scorer without the
prefix cache would have to do). The authors' loop runs 2 x (non-embedding + LM head) per token.

The run stage imports only torch, transformers, tokenizers, pyarrow, numpy, typer and rich
(via anglerank): polars, gguf, math_verify and sympy are watched (recorded if anything
asks for them) or, with --block-imports (on in --smoke), made unimportable.

  python benchmarks/gpu_check.py prepare
  bash benchmarks/gpu_check.sh run --out "$OUT"          # on the GPU machine
  bash benchmarks/gpu_check.sh run --smoke               # the same code paths on CPU, tiny shapes
"""

from __future__ import annotations

# Only the standard library at the top, here and at the top of the sibling modules: the `_cli`
# stage must start like the real CLI.
import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

# benchmarks/ is not a package: its modules import each other by name from this folder, which is
# on sys.path when this file runs as a script
from gpu_check_measure import (SHAPES, build_model, environment, free_memory, load_model, run_authors, run_cli,
                               score_inprocess)
from gpu_check_memory import run_memory
from gpu_check_report import markdown, problems, summarise, targets

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_BUNDLE = HERE / "gpu_bundle"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "gsm8k_train.parquet"
PROMPTS_FILE = "gsm8k_prompts.parquet"
MAX_BUNDLE_BYTES = 64 * 2**20
WATCHED = ("polars", "gguf", "math_verify", "sympy")  # must not be needed to score
# sympy cannot be blocked: transformers 5.x loads models through torch.distributed.tensor, which
# imports torch.fx.experimental.symbolic_shapes -> sympy (torch itself depends on it); it is
# watched, and the import chain recorded.
BLOCKABLE = ("polars", "gguf", "math_verify")


# --- imports that the scoring path must not need ---------------------------------------------------

class ImportWatch:
    """A meta-path finder that records who asks for a watched module (and finds nothing itself)."""

    def __init__(self, names):
        self.names = set(names)
        self.asked: dict[str, str] = {}

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in self.names and top not in self.asked:
            self.asked[top] = import_chain()
        return None


def import_chain() -> str:
    """Who is importing: the project's frames (outermost first), then the library frames that lead
    to the import (the first four and the last four), as file:line."""
    frames = [f for f in traceback.extract_stack()[:-2]
              if "importlib" not in f.filename and not f.filename.startswith("<")]
    ours = [f for f in frames if f.filename.startswith(str(ROOT)) and "site-packages" not in f.filename]
    rest = frames[frames.index(ours[-1]) + 1:] if ours else frames
    rest = rest if len(rest) <= 8 else rest[:4] + rest[-4:]

    def name(f):
        parts = Path(f.filename).parts
        return f"{'/'.join(parts[-2:])}:{f.lineno}"

    return " -> ".join([name(f) for f in ours[-4:]] + [name(f) for f in rest])


def guard_imports(block: bool) -> ImportWatch:
    """Watch the modules the scoring path must not need; with ``block`` make BLOCKABLE unimportable.

    A None entry in sys.modules is what Python itself uses for "not importable": `import x`
    raises ModuleNotFoundError and importlib.util.find_spec(x) returns None, as on a machine
    without the package.
    """
    watch = ImportWatch(WATCHED)
    sys.meta_path.insert(0, watch)
    if block:
        for name in BLOCKABLE:
            if sys.modules.get(name) is None:
                sys.modules[name] = None
    return watch


def import_report(watch: ImportWatch, block: bool) -> dict:
    loaded = [n for n in WATCHED if sys.modules.get(n) is not None]
    return {"blocked": list(BLOCKABLE) if block else [], "asked_for": watch.asked, "loaded": loaded}


# --- prepare ---------------------------------------------------------------------------------------

def portable_tokenizer_config(src: Path) -> dict:
    """tokenizer_config.json that transformers 4.x loads too (5.x writes class TokenizersBackend
    and keeps the chat template in a separate .jinja file)."""
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    for key in ("backend", "is_local", "local_files_only"):
        cfg.pop(key, None)
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    jinja = src / "chat_template.jinja"
    if jinja.exists() and not cfg.get("chat_template"):
        cfg["chat_template"] = jinja.read_text()
    return cfg


def write_prompts(data: Path, rows: int | None, target: Path) -> int:
    """The verl-layout columns scoring reads: the `prompt` messages and the `extra_info.index` id."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(data, columns=["data_source", "prompt", "extra_info"])
    if rows:
        table = table.slice(0, rows)
    index = table.column("extra_info").combine_chunks().field("index")
    table = table.set_column(2, "extra_info", pa.StructArray.from_arrays([index], names=["index"]))
    pq.write_table(table, target, compression="zstd")
    return table.num_rows


def check_bundle_tokenizer(src: Path, bundle: Path) -> None:
    """The bundle's tokenizer must render GSM8K prompts to the same ids as the original."""
    from anglerank.data.reader import ParquetSource
    from anglerank.model.loading import load_tokenizer
    from anglerank.model.render import Renderer

    a, b = Renderer(load_tokenizer(src), "gainrl"), Renderer(load_tokenizer(bundle), "gainrl")
    for rec in ParquetSource([str(bundle / PROMPTS_FILE)]).iter_records(stop_row=16):
        ra, rb = a.render(rec.question, rec.history), b.render(rec.question, rec.history)
        if (ra.ids, ra.n_prefix, ra.q_end) != (rb.ids, rb.n_prefix, rb.q_end):
            raise SystemExit(f"error: the bundled tokenizer renders row {rec.row} differently")


def cmd_prepare(args) -> None:
    from anglerank.model import loading

    src = Path(args.tokenizer_from) if args.tokenizer_from else loading.prepare_embedded()
    bundle = Path(args.bundle)
    tmp = Path(tempfile.mkdtemp(prefix=".gpu_bundle-", dir=bundle.parent))
    try:
        shutil.copy2(src / "tokenizer.json", tmp / "tokenizer.json")
        (tmp / "tokenizer_config.json").write_text(json.dumps(portable_tokenizer_config(src), indent=2) + "\n")
        rows = write_prompts(Path(args.data), args.rows, tmp / PROMPTS_FILE)
        check_bundle_tokenizer(src, tmp)
        size = sum(f.stat().st_size for f in tmp.iterdir())
        meta = {"tokenizer_from": str(src), "data": str(args.data), "rows": rows, "bytes": size,
                "created": time.strftime("%Y-%m-%d %H:%M:%S")}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if size > MAX_BUNDLE_BYTES:
            raise SystemExit(f"error: the bundle is {size / 2**20:.1f} MiB, over the 64 MiB a device run carries")
        if bundle.exists():
            shutil.rmtree(bundle)
        os.replace(tmp, bundle)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"bundle {bundle}: {rows} prompts, {size / 2**20:.2f} MiB ({size:,} bytes)")
    for f in sorted(bundle.iterdir()):
        print(f"  {f.name}: {f.stat().st_size:,} bytes")


# --- the `_cli` stage: `anglerank score` as a user runs it, plus a peak-memory record ---------------

def cmd_cli(args) -> None:
    """Run the anglerank CLI in this process; at exit write peak memory and the import record."""
    import atexit
    import resource

    watch = guard_imports(args.block_imports)

    def record():
        torch = sys.modules.get("torch")
        cuda = torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized()
        stats = {"peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
                 "peak_gpu_reserved_mib": round(torch.cuda.max_memory_reserved() / 2**20, 1) if cuda else None,
                 "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                 "imports": import_report(watch, args.block_imports)}
        Path(args.stats).write_text(json.dumps(stats))

    atexit.register(record)
    cli_args = args.cli_args[1:] if args.cli_args[:1] == ["--"] else args.cli_args
    sys.argv = ["anglerank", *cli_args]
    from anglerank.cli import main

    main()


# --- run: bookkeeping ------------------------------------------------------------------------------

class Budget:
    """Wall-clock budget: sections that would not fit are skipped, and the results still written."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


class Report:
    """The results dict, written (JSON and markdown) after every section so a kill loses little."""

    def __init__(self, out: Path, data: dict):
        self.out, self.data = out, data
        out.mkdir(parents=True, exist_ok=True)

    def save(self) -> None:
        (self.out / "gpu_check.json").write_text(json.dumps(self.data, indent=2) + "\n")
        (self.out / "gpu_check.md").write_text(markdown(self.data))


def guarded(results: dict, name: str, report: Report, fn, *args, **kwargs):
    """Run one section; an error is recorded (not raised) so the other sections still run."""
    t0 = time.perf_counter()
    try:
        value = fn(*args, **kwargs)
    except Exception as exc:  # one failed section must not lose the whole GPU run
        value = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}",
                 "traceback": traceback.format_exc()[-3000:]}
        print(f"  {name}: {value['error']}", file=sys.stderr, flush=True)
    # what the report keeps: no per-row scores (the caller has them) and no model objects
    record = {k: v for k, v in value.items() if k != "scores"} if isinstance(value, dict) else {"ok": True}
    record.setdefault("section_s", round(time.perf_counter() - t0, 2))
    results[name] = record
    report.save()
    return value


def run_sweep(res: dict, loaded, ctx, dtype: str) -> None:
    """--batch-tokens values (and one point without the prefix cache) on the same prompts."""
    args, budget = ctx.args, ctx.budget
    sweep = res.setdefault("sweep", {})
    # untimed warm-up: the first batches pay for kernel selection and allocator growth
    score_inprocess(loaded, ctx.prompts, ctx.work / "warm", min(64, args.n_sweep), dtype, ctx.device)
    points = [(bt, True) for bt in args.sweep] + [(args.nocache_batch_tokens, False)]
    for bt, cache in points:
        name = str(bt) if cache else f"{bt} --no-prefix-cache"
        if budget.left() < args.min_section_s + args.reserve_s:
            sweep[name] = {"skipped": "time budget"}
            continue
        guarded(sweep, name, ctx.report, score_inprocess, loaded, ctx.prompts, ctx.work / "sweep",
                args.n_sweep, dtype, ctx.device, bt, cache)


def run_float32(res: dict, path: str, ctx, scores: dict) -> None:
    """The authors' loop and our float32 scores share one float32 model."""
    args, budget = ctx.args, ctx.budget
    loaded = guarded(res, "load_float32", ctx.report, load_model, path, ctx.device, "float32")
    if isinstance(loaded, dict):
        return
    cap = min(args.authors_cap_s, budget.left() - args.reserve_s - args.min_section_s)
    if cap > 0:
        value = guarded(res, "authors", ctx.report, run_authors, loaded, ctx.prompts, args.n_authors, cap,
                        ctx.device, args.authors_chunk)
        scores["authors"] = value.get("scores")
    else:
        res["authors"] = {"skipped": "time budget"}
    if budget.left() > args.min_section_s + args.reserve_s:
        value = guarded(res, "float32", ctx.report, score_inprocess, loaded, ctx.prompts, ctx.work / "fp32",
                        args.n_fp32, "float32", ctx.device)
        scores["float32"] = value.get("scores")
    else:
        res["float32"] = {"skipped": "time budget"}
    del loaded
    free_memory()


def run_shape(shape: str, ctx) -> None:
    args, budget, report = ctx.args, ctx.budget, ctx.report
    res = report.data["shapes"].setdefault(shape, {})
    if budget.left() < 4 * args.min_section_s + args.reserve_s:
        res["skipped"] = "time budget"
        report.save()
        return
    print(f"[{shape}] building the model", file=sys.stderr, flush=True)
    built = guarded(res, "model", report, build_model, shape, ctx.bundle, ctx.work, ctx.device, args.seed)
    if "error" in built:
        return
    scores = {}
    print(f"[{shape}] anglerank score (CLI)", file=sys.stderr, flush=True)
    cli = guarded(res, "cli", report, run_cli, built["path"], ctx.prompts, args.n, ctx.work / f"cli-{shape}",
                  args.block_imports, args.cli_extra, max(10.0, budget.left() - args.reserve_s))
    scores["cli"] = cli.get("scores")
    summarise(res, scores, ctx.env)  # after every stage: a run killed later still has its rates
    print(f"[{shape}] authors' loop and float32", file=sys.stderr, flush=True)
    run_float32(res, built["path"], ctx, scores)
    summarise(res, scores, ctx.env)
    print(f"[{shape}] memory: budget against peak, forced back-off, truncated loading", file=sys.stderr, flush=True)
    run_memory(res, built["path"], ctx, cli.get("dtype") or ctx.default_dtype, guarded)
    if budget.left() > 2 * args.min_section_s + args.reserve_s:
        print(f"[{shape}] --batch-tokens sweep", file=sys.stderr, flush=True)
        dtype = cli.get("dtype") or ctx.default_dtype
        loaded = guarded(res, "load_sweep", report, load_model, built["path"], ctx.device, dtype)
        if not isinstance(loaded, dict):
            res["load_sweep"]["dtype"] = dtype
            run_sweep(res, loaded, ctx, dtype)
            del loaded
            free_memory()
    else:
        res["sweep"] = {"skipped": "time budget"}
    summarise(res, scores, ctx.env)
    report.save()
    shutil.rmtree(built["path"], ignore_errors=True)  # gigabytes; the next shape needs the disk


# --- run: main -------------------------------------------------------------------------------------

MODE_DEFAULTS = {
    "gpu": dict(device="auto", shapes="1.5b,0.5b", n=0, n_authors=512, n_fp32=2048, n_sweep=2048, n_memory=1024,
                sweep="4096,8192,16384,32768,65536", nocache_batch_tokens=16384, authors_cap_s=40.0,
                authors_chunk=32, budget_s=400.0, reserve_s=20.0, min_section_s=15.0, block_imports=False,
                cli_extra=""),
    "smoke": dict(device="cpu", shapes="tiny,tiny2", n=64, n_authors=16, n_fp32=64, n_sweep=64, n_memory=32,
                  sweep="1024,4096", nocache_batch_tokens=1024, authors_cap_s=20.0, authors_chunk=8,
                  budget_s=240.0, reserve_s=5.0, min_section_s=3.0, block_imports=True,
                  cli_extra="--device cpu --dtype bfloat16"),
}


class Context:
    """What every section needs: options, budget, report, paths, device."""

    def __init__(self, args, budget: Budget, report: Report, work: Path, device: str, env: dict):
        self.args, self.budget, self.report, self.work, self.device, self.env = args, budget, report, work, device, env
        self.bundle = Path(args.bundle)
        self.prompts = self.bundle / PROMPTS_FILE
        from anglerank.model.device import resolve_dtype

        self.default_dtype = resolve_dtype("auto", device)


def resolve_run_args(args) -> None:
    """Fill options not given from the mode's defaults (--smoke or GPU) and parse lists."""
    import shlex

    for key, value in MODE_DEFAULTS["smoke" if args.smoke else "gpu"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in args.shapes if s not in SHAPES]
    if unknown:
        raise SystemExit(f"error: unknown shape(s) {', '.join(unknown)}; choose from {', '.join(SHAPES)}")
    args.sweep = [int(x) for x in str(args.sweep).split(",") if x.strip()]
    args.cli_extra = shlex.split(args.cli_extra)
    if args.out is None:
        args.out = os.environ.get("OUT") or str(HERE / "results" / ("gpu_check_smoke" if args.smoke else "gpu_check"))


def cmd_run(args) -> None:
    t0 = time.perf_counter()
    resolve_run_args(args)
    budget = Budget(args.budget_s)  # from the start: imports count against the device's time too
    prompts = Path(args.bundle) / PROMPTS_FILE
    if not prompts.exists() or not (Path(args.bundle) / "tokenizer.json").exists():
        raise SystemExit(f"error: no bundle in {args.bundle}; run `python benchmarks/gpu_check.py prepare` "
                         "where the data and the embedded model are, and carry the folder along")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is reachable: never wait on the hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    watch = guard_imports(args.block_imports)
    import pyarrow.parquet as pq

    from anglerank.model.device import resolve_device

    rows = pq.read_metadata(prompts).num_rows
    args.n = rows if not args.n or args.n > rows else args.n  # 0: every prompt in the bundle
    device = resolve_device(args.device)
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    report = Report(Path(args.out), {"settings": settings, "shapes": {}, "complete": False})
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        report.data["environment"] = environment(device, args.smoke)
        report.save()
        ctx = Context(args, budget, report, work, device, report.data["environment"])
        for shape in args.shapes:
            try:
                run_shape(shape, ctx)
            except Exception as exc:  # a bug outside the guarded sections: keep the other shape
                report.data["shapes"].setdefault(shape, {})["error"] = f"{type(exc).__name__}: {exc}"[:300]
                report.data["shapes"][shape]["traceback"] = traceback.format_exc()[-3000:]
                free_memory()
        report.data["complete"] = not problems(report.data["shapes"])
    finally:
        report.data["imports"] = {"main": import_report(watch, args.block_imports),
                                  **{f"cli {s}": (r.get("cli") or {}).get("imports")
                                     for s, r in report.data["shapes"].items()}}
        report.data["targets"] = targets(report.data)
        report.data["elapsed_s"] = round(time.perf_counter() - t0, 1)
        report.save()
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    print((Path(args.out) / "gpu_check.md").read_text())


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="stage", required=True)
    p = sub.add_parser("prepare", help="build the bundle (tokenizer + GSM8K prompts) here")
    p.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="bundle folder to write (default: %(default)s)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="verl-layout GSM8K Parquet (default: %(default)s)")
    p.add_argument("--rows", type=int, default=None, help="keep the first N rows (default: all)")
    p.add_argument("--tokenizer-from", default=None,
                   help="model folder to take the tokenizer from (default: the embedded model's converted folder)")
    p.set_defaults(func=cmd_prepare)
    r = sub.add_parser("run", help="run the benchmark (GPU machine; --smoke: tiny shapes on CPU)",
                       description="Defaults in brackets are GPU / --smoke.")
    r.add_argument("--smoke", action="store_true", help="tiny shapes, 64 prompts, CPU, imports blocked: "
                                                        "every code path in a few minutes")
    r.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="bundle from `prepare` (default: %(default)s)")
    r.add_argument("--out", default=None, help="results folder [$OUT, else benchmarks/results/gpu_check(_smoke)]")
    r.add_argument("--work", default=None, help="scratch folder for model weights and scores [a temp dir, removed]")
    r.add_argument("--keep-work", action="store_true", help="keep the scratch folder")
    r.add_argument("--device", default=None, help="auto, cuda, cuda:N or cpu [auto / cpu]")
    r.add_argument("--shapes", default=None, help=f"comma list of {', '.join(SHAPES)} [1.5b,0.5b / tiny,tiny2]")
    r.add_argument("--n", type=int, default=None, help="prompts for `anglerank score`; 0 = all in the bundle [0 / 64]")
    r.add_argument("--n-authors", type=int, default=None, help="prompts for the authors' loop at most [512 / 16]")
    r.add_argument("--authors-cap-s", type=float, default=None, help="seconds for the authors' loop at most [40 / 20]")
    r.add_argument("--authors-chunk", type=int, default=None, help="prompts per authors' call (time checks) [32 / 8]")
    r.add_argument("--n-fp32", type=int, default=None, help="prompts scored in float32 for Spearman [2048 / 64]")
    r.add_argument("--n-sweep", type=int, default=None, help="prompts per --batch-tokens point [2048 / 64]")
    r.add_argument("--n-memory", type=int, default=None, help="prompts per memory section (budget against peak, "
                                                                 "forced back-off, truncated loading) [1024 / 32]")
    r.add_argument("--sweep", default=None, help="comma list of --batch-tokens values [4096..65536 / 1024,4096]")
    r.add_argument("--nocache-batch-tokens", type=int, default=None,
                   help="--batch-tokens of the extra --no-prefix-cache point [16384 / 1024]")
    r.add_argument("--budget-s", type=float, default=None, help="wall-clock budget; later sections are skipped "
                                                                "when it runs out [400 / 240]")
    r.add_argument("--reserve-s", type=float, default=None, help="seconds kept back for writing results [20 / 5]")
    r.add_argument("--min-section-s", type=float, default=None, help="a section starts only with this much left "
                                                                     "(besides the reserve) [15 / 3]")
    r.add_argument("--block-imports", action=argparse.BooleanOptionalAction, default=None,
                   help=f"make {', '.join(BLOCKABLE)} unimportable; {', '.join(WATCHED)} are always watched "
                        "(who imports them is recorded) [off / on]")
    r.add_argument("--cli-extra", default=None, help="extra `anglerank score` options, one string "
                                                     "['' / '--device cpu --dtype bfloat16']")
    r.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: %(default)s)")
    r.set_defaults(func=cmd_run)
    c = sub.add_parser("_cli", help="internal: run `anglerank` recording peak memory and imports")
    c.add_argument("--stats", required=True, help="JSON file written at exit")
    c.add_argument("--block-imports", action="store_true", help=f"make {', '.join(BLOCKABLE)} unimportable")
    c.add_argument("cli_args", nargs=argparse.REMAINDER, help="arguments of `anglerank` (after --)")
    c.set_defaults(func=cmd_cli)
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
