"""Where the input files are: paths, directories, globs, ``datasets`` folders and Hub datasets.

An input is a file (its format from its name or first bytes), a glob, a ``save_to_disk``
folder of ``datasets`` (its ``state.json`` lists the Arrow files in order), another
directory (its files of the first format found, in the order Parquet, JSON Lines,
Arrow, JSON, so a ``datasets`` cache folder gives its Arrow files and not its
``dataset_info.json``), or ``hf://datasets/OWNER/NAME[@REVISION][/PATH]`` on the
Hugging Face Hub: the files are downloaded into the Hub cache (once) and read from
there, so a later ``--resume``, ``rank`` or ``sample`` finds them offline too.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from anglerank.data.fragments import FORMATS, InputError, format_of
from anglerank.errors import one_line

__all__ = ["HubPath", "locate", "parse_hub_path"]

_ORDER = ("parquet", "jsonl", "arrow", "json")  # the format a directory is read in, when it holds several
_GLOB = "*?["


def locate(spec: str) -> list[tuple[Path, str]]:
    """The files of one input spec, in order, each with the path the manifest records for it."""
    if spec.startswith("hf://"):
        return [(p, str(p.absolute())) for p in hub_files(spec)]  # the cache's link, whose name has the format
    p = Path(spec).expanduser()
    if p.is_dir():
        files = _directory(p)
    elif p.exists():
        files = [p]
    elif any(ch in spec for ch in _GLOB):
        found = sorted(Path(x) for x in glob.glob(os.path.expanduser(spec)))
        if not found:
            raise InputError(f"no files match {spec}")
        files = [f for x in found for f in (_directory(x) if x.is_dir() else [x])]
    else:
        raise InputError(f"input not found: {spec}")
    return [(f, str(f.resolve())) for f in files]


def _directory(p: Path) -> list[Path]:
    if (p / "dataset_dict.json").is_file():
        raise InputError(f"{p} holds a datasets DatasetDict ({_splits(p)}); pass one split's folder, e.g. "
                         f"{p / (_splits(p).split(', ')[0] or 'train')}")
    if (p / "state.json").is_file():
        return _saved_dataset(p)
    found = _by_format(f for f in p.iterdir() if f.is_file())
    if not found:
        raise InputError(f"directory {p} contains no .parquet, .jsonl, .arrow or .json files")
    return found


def _by_format(files) -> list[Path]:
    """The files of the first format of ``_ORDER`` among ``files``, sorted by name."""
    groups: dict[str, list[Path]] = {}
    for f in files:
        kind = format_of(f, sniff=False)
        if kind:
            groups.setdefault(kind, []).append(f)
    for kind in _ORDER:
        if kind in groups:
            return sorted(groups[kind])
    return []


def _splits(p: Path) -> str:
    try:
        return ", ".join(map(str, json.loads((p / "dataset_dict.json").read_text()).get("splits", [])))
    except (OSError, ValueError, AttributeError):
        return "several splits"


def _saved_dataset(p: Path) -> list[Path]:
    """The Arrow files of a ``Dataset.save_to_disk`` folder, in the order its ``state.json`` lists them."""
    try:
        names = [f["filename"] for f in json.loads((p / "state.json").read_text())["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{p / 'state.json'} is not the state of a datasets save_to_disk folder "
                         f"({one_line(exc, 120)})") from None
    files = [p / n for n in names]
    for f in files:
        if not f.is_file():
            raise InputError(f"{f}, listed in {p / 'state.json'}, is missing")
    if not files:
        raise InputError(f"{p} is a datasets folder without data files")
    return files


# --------------------------------------------------------------------------- the Hub

@dataclass(frozen=True)
class HubPath:
    repo_id: str
    revision: str | None
    path: str  # inside the repository: a file, a folder, a glob, or "" for all of it


def parse_hub_path(spec: str) -> HubPath:
    """``hf://datasets/OWNER/NAME[@REVISION][/PATH]``; a revision such as ``refs/convert/parquet``
    may be written as it is or URL-encoded (``refs%2Fconvert%2Fparquet``), as ``HfFileSystem`` does."""
    form = "expected hf://datasets/OWNER/NAME[@REVISION][/PATH]"
    if not spec.startswith("hf://datasets/"):
        raise InputError(f"{spec}: only Hub dataset repositories are read; {form}")
    parts = spec[len("hf://datasets/"):].split("/")
    if len(parts) < 2 or not parts[0] or not parts[1] or parts[1].startswith("@"):
        raise InputError(f"{spec}: {form}")
    name, _, revision = parts[1].partition("@")
    rest = parts[2:]
    if revision == "refs" and rest[:1] == ["convert"] and len(rest) >= 2:
        revision, rest = "/".join(["refs", *rest[:2]]), rest[2:]
    elif revision == "refs" and rest[:1] == ["pr"] and len(rest) >= 2:
        revision, rest = "/".join(["refs", *rest[:2]]), rest[2:]
    return HubPath(f"{parts[0]}/{name}", unquote(revision) or None, "/".join(rest).strip("/"))


def _patterns(path: str) -> list[str]:
    """What to download: the file or glob itself, else every data file under the folder."""
    if any(ch in path for ch in _GLOB) or format_of(Path(path), sniff=False):
        return [path]
    return [f"{path}/*{ext}" if path else f"*{ext}" for ext in FORMATS]


def hub_files(spec: str) -> list[Path]:
    """The files of a Hub path, downloaded into (or found in) the Hub cache."""
    hp = parse_hub_path(spec)
    try:
        from huggingface_hub import snapshot_download

        root = Path(snapshot_download(hp.repo_id, repo_type="dataset", revision=hp.revision,
                                      allow_patterns=_patterns(hp.path)))
    except Exception as exc:  # the Hub's errors have no common base beyond OSError / HTTP errors
        raise InputError(_hub_problem(spec, hp, exc)) from None
    if any(ch in hp.path for ch in _GLOB):
        files = sorted(p for p in root.glob(hp.path) if p.is_file())
    elif (root / hp.path).is_file():
        files = [root / hp.path]
    else:
        files = _by_format(p for p in (root / hp.path).rglob("*") if p.is_file())
    if not files:
        raise InputError(f"{spec}: no Parquet, JSON Lines, Arrow or JSON files there")
    return files


def _hub_problem(spec: str, hp: HubPath, exc: Exception) -> str:
    kind = type(exc).__name__
    if kind == "RepositoryNotFoundError":
        return f"{spec}: no dataset {hp.repo_id} on the Hugging Face Hub (a private or gated one needs `hf auth login`)"
    if kind == "RevisionNotFoundError":
        return f"{spec}: the dataset {hp.repo_id} has no revision {hp.revision!r}"
    if kind in ("LocalEntryNotFoundError", "OfflineModeIsEnabled") or isinstance(exc, ConnectionError):
        return (f"cannot download {spec}: the Hugging Face Hub is not reachable (offline) and the files are not in "
                f"the Hub cache; download them when online (hf download {hp.repo_id} --repo-type dataset) "
                "or pass local files")
    return f"cannot download {spec} from the Hugging Face Hub ({one_line(exc, 200)})"
