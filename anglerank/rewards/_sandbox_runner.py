"""The program side of the code judge, and the value format both sides speak. Standard library only.

Runs inside the sandbox as ``python -I -S -B runner.py [--serve] /work/main.py``:

- without ``--serve`` it runs the program as ``__main__`` (stdin/stdout tests);
- with ``--serve`` it loads the program as ``__main__`` and then answers the
  judge's requests over two pipes (fd 3 in, fd 4 out): call a function, get an
  attribute, iterate, index... Results travel as plain values or, for anything
  else, as references to objects that stay here.

Nothing this process sends is trusted: the judge (:mod:`anglerank.rewards._sandbox_judge`)
decodes every answer into exact built-in values and runs the tests itself. So
this module only has to be right for honest programs, and :func:`decode` has to
be strict for hostile ones.
"""

import builtins
import itertools
import marshal
import os
import sys

from _json import encode_basestring_ascii as _json_str  # the json package costs tens of ms at start-up

MAX_DEPTH = 100
MAX_ITEMS = 1_000_000  # elements in one value
MAX_FRAME = 16 << 20  # bytes in one message
NAME_ITEMS = 10_000  # a larger global travels as a reference
REQUEST_FD, REPLY_FD = 3, 4

_SCALARS = (int, float, complex, str, bytes)
_CONTAINERS = (list, tuple, dict, set, frozenset)
_TAGS = {int: "i", float: "f", complex: "c", str: "s", bytes: "y", list: "l", tuple: "t", dict: "d", set: "S",
         frozenset: "F"}


class NotPlain(Exception):
    """A value with no exact built-in form (its own class, its own equality, too deep or too big)."""


def plain_type(x):
    """The built-in type ``x`` travels as, or None. A subclass counts only if it keeps the base's equality
    (a namedtuple, a defaultdict), since the judge compares the base's data with the base's rules."""
    t = type(x)
    if t is bool or t is type(None) or t in _TAGS:
        return t
    for base in _SCALARS + _CONTAINERS:
        if isinstance(x, base):
            same_eq = t.__eq__ is base.__eq__ and t.__ne__ is base.__ne__
            return base if same_eq or _dict_like(x, base) else None
    return None


def _dict_like(x, base) -> bool:
    """OrderedDict and Counter: standard mappings judged as plain dicts of their items."""
    import collections

    return base is dict and isinstance(x, (collections.OrderedDict, collections.Counter))


class Encoder:
    """Plain values as tagged JSON; ``ref(x)`` decides what happens to anything else."""

    def __init__(self, ref=None, limit: int = MAX_ITEMS):
        self.ref, self.left = ref, limit

    def __call__(self, x, depth: int = 0):
        self.left -= 1
        if self.left < 0 or depth > MAX_DEPTH:
            raise NotPlain("value too large or too deep")
        t = plain_type(x)
        if t is None:
            if self.ref is None:
                raise NotPlain(type(x).__name__)
            return self.ref(x)
        if t is type(None):
            return ["N"]
        if t is bool:
            return ["b", x]
        if t is int:
            return ["i", format(int.__index__(x), "x")]
        if t is float:
            return ["f", float.hex(x)]
        if t is complex:
            return ["c", float.hex(x.real), float.hex(x.imag)]
        if t is str:
            return ["s", str.__str__(x)]
        if t is bytes:
            return ["y", bytes(x).hex()]
        if t is dict:
            return ["d", [[self(k, depth + 1), self(v, depth + 1)] for k, v in dict.items(x)]]
        return [_TAGS[t], [self(v, depth + 1) for v in t.__iter__(x)]]


def decode(v, ref=None, depth: int = 0):
    """Exact built-in values from the tagged form; ``ref(id)`` for references. ValueError on anything else."""
    if depth > MAX_DEPTH or type(v) is not list or not v or type(v[0]) is not str:
        raise ValueError("malformed value")
    tag, args = v[0], v[1:]
    if tag == "N" and not args:
        return None
    if len(args) == 2 and tag == "c" and all(type(a) is str for a in args):
        return complex(float.fromhex(args[0]), float.fromhex(args[1]))
    if len(args) != 1:
        raise ValueError("malformed value")
    a = args[0]
    if tag == "b" and type(a) is bool or tag == "s" and type(a) is str:
        return a
    if type(a) is str and tag in ("i", "f", "y"):
        return int(a, 16) if tag == "i" else float.fromhex(a) if tag == "f" else bytes.fromhex(a)
    if tag == "r" and type(a) is int and ref is not None:
        return ref(a)
    if type(a) is not list:
        raise ValueError("malformed value")
    if tag == "d":
        if not all(type(p) is list and len(p) == 2 for p in a):
            raise ValueError("malformed value")
        return {decode(k, ref, depth + 1): decode(x, ref, depth + 1) for k, x in a}
    kind = {"l": list, "t": tuple, "S": set, "F": frozenset}.get(tag)
    if kind is None:
        raise ValueError("malformed value")
    return kind(decode(x, ref, depth + 1) for x in a)


def request_frame(message) -> bytes:
    """Judge to program: trusted, plain data, so marshal (built in, fast)."""
    data = marshal.dumps(message)
    return len(data).to_bytes(4, "big") + data


def reply_frame(message) -> bytes:
    """Program to judge: JSON, which the judge parses strictly; ``message`` holds lists, str, int, bool, dict."""
    data = _dump(message).encode("ascii")
    return len(data).to_bytes(4, "big") + data


def _dump(x) -> str:
    t = type(x)
    if t is str:
        return _json_str(x)
    if t is bool:
        return "true" if x else "false"
    if t is int:
        return str(x)
    if t is dict:
        return "{" + ",".join(_json_str(k) + ":" + _dump(v) for k, v in x.items()) + "}"
    return "[" + ",".join(map(_dump, x)) + "]"


# --------------------------------------------------------------------------- #
# The program side
# --------------------------------------------------------------------------- #


def _load(path: str):
    """The program as ``__main__``, with the ``exit``/``quit`` helpers ``site`` would have added (-S skips it)."""
    import site

    site.setquit()
    sys.argv = [os.path.basename(path)]
    module = type(sys)("__main__")
    module.__file__ = path
    sys.modules["__main__"] = module
    with open(path, encoding="utf-8") as f:
        source = f.read()
    exec(compile(source, path, "exec"), module.__dict__)
    return module


def _read_exact(n: int) -> bytes:
    chunks = []
    while n:
        chunk = os.read(REQUEST_FD, n)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _send(data: bytes) -> None:
    while data:
        data = data[os.write(REPLY_FD, data):]


class Server:
    """Answers the judge's requests about the loaded program's objects."""

    def __init__(self):
        self.objects = []

    def ref(self, x):
        self.objects.append(x)
        return ["r", len(self.objects) - 1]

    def value(self, x, limit: int = MAX_ITEMS):
        try:
            return Encoder(limit=limit)(x)
        except NotPlain:
            return self.ref(x)

    def names(self, module) -> dict:
        out = {}
        for name, x in list(vars(module).items()):
            if name.startswith("__") and name.endswith("__"):
                continue
            out[name] = ["m", x.__name__] if isinstance(x, type(sys)) else self.value(x, NAME_ITEMS)
        return out

    def answer(self, op: str, args: list):
        arg = lambda v: decode(v, self.objects.__getitem__)  # noqa: E731
        obj = self.objects[args[0]] if args and type(args[0]) is int else None
        if op == "call":
            return self.value(obj(*arg(args[1]), **arg(args[2])))
        if op in ("getattr", "setattr"):
            return self.value(getattr(obj, args[1]) if op == "getattr" else setattr(obj, args[1], arg(args[2])))
        if op in ("getitem", "setitem"):
            return self.value(obj[arg(args[1])] if op == "getitem" else obj.__setitem__(arg(args[1]), arg(args[2])))
        if op == "iter":
            items = list(itertools.islice(iter(obj), MAX_ITEMS + 1))
            if len(items) > MAX_ITEMS:
                raise MemoryError("too many items")
            return ["l", [self.value(x) for x in items]]
        if op == "contains":
            return self.value(arg(args[1]) in obj)
        return self.value({"len": len, "next": next, "str": str, "repr": repr}[op](obj))

    def serve(self, path: str) -> None:
        _send(reply_frame(["ready", self.names(_load(path))]))
        while True:
            try:
                seq, op, args = marshal.loads(_read_exact(int.from_bytes(_read_exact(4), "big")))
            except EOFError:
                return
            try:
                reply = [seq, "ok", self.answer(op, args)]
            except BaseException as exc:  # the program's error goes to the judge, which decides
                reply = [seq, "exc", _builtin_name(exc), _message(exc)]
            data = reply_frame(reply)
            _send(data if len(data) <= MAX_FRAME else reply_frame([seq, "exc", "MemoryError", "result too large"]))


def _builtin_name(exc: BaseException) -> str:
    """The nearest built-in class of ``exc`` (a ValueError subclass is reported as ValueError)."""
    for cls in type(exc).__mro__:
        if getattr(builtins, cls.__name__, None) is cls:
            return cls.__name__
    return "BaseException"


def _message(exc: BaseException) -> str:
    try:
        return str(exc)[:1000]
    except BaseException:
        return ""


def main() -> None:
    if sys.argv[1] == "--serve":
        Server().serve(sys.argv[2])
    else:
        _load(sys.argv[1])


if __name__ == "__main__":
    main()
