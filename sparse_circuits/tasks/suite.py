"""The task suite: generators of paired next-token prompts on Python code.

A task is a set of pairs of short Python contexts that differ in one decisive
detail; each prompt has a correct next token and an alternative, and the two
prompts of a pair swap them (`x = set()` ... `x` -> `.add` vs `+=`, and
`x = ""` ... `x` -> `+=` vs `.add`). The paper's 20 tasks (paper §2.2,
Table 1) carry the authors' names; their templates were never
released, so every generator here is ours. The other tasks are extras.

Every generator obeys two rules, checked on each pair with the tokenizer's
pre-tokenisation pattern, so they hold for any BPE of that pattern:
  * consistency: prompt + candidate + the code that really follows it splits
    into the prompt's pre-tokens, then the candidate (so the task asks for the
    token the model would actually see next in such code), for the target
    and for the alternative;
  * no bigram shortcut: both prompts of a pair end with the same pre-token,
    hence the same last token, so a model that sees only the last token is
    right on exactly one of the two. One paper task, `else_elif`, cannot obey
    it (its decisive detail, `else` vs `elif`, is the last token itself) and
    is marked `bigram_proof=False`.
Every candidate is in `tokenizer.REQUIRED_TOKENS`, so every tokenizer this
project trains has it as one token. Turning pairs into token arrays, loss and
accuracy live in `binary.py`.

`python -m sparse_circuits.tasks.suite --markdown` prints the task table of docs/tasks.md.
"""

import dataclasses
import sys
import zlib
from typing import Callable

import numpy as np

from sparse_circuits import tokenizer as tokenizer_lib
from sparse_circuits.errors import ConfigError


# --------------------------------------------------------------- vocabulary

IND = "    "
NAMES = (
    "item", "value", "name", "path", "line", "data", "result", "key", "node",
    "entry", "total", "text", "buf", "chunk", "record", "field", "token",
    "child", "obj", "arg", "elem", "row", "word", "msg", "info", "cache",
    "state", "index", "size", "offset", "prefix", "label", "target", "source",
    "module", "header", "body", "block", "frame", "event", "request",
    "response", "user", "group", "option", "param", "attr", "filename", "url",
    "host", "port", "mode", "flag", "limit", "width", "level", "depth",
    "score", "stamp", "seq", "tag", "part", "spec", "expr", "func", "base",
    "parent", "new_value", "old_name", "base_dir", "max_size", "line_no",
    "file_name", "out", "tmp", "current", "ret", "res", "stream", "handler")
COLLECTIONS = (
    "items", "values", "names", "lines", "keys", "nodes", "entries", "rows",
    "words", "parts", "records", "fields", "tokens", "children", "args",
    "chunks", "paths", "files", "blocks", "events", "groups", "options",
    "params", "attrs", "modules", "pending", "queue", "stack", "results")
FUNCS = (
    "process", "handle", "parse", "load", "update", "build", "check",
    "compute", "convert", "render", "encode", "decode", "validate", "resolve",
    "normalize", "collect", "register", "emit", "write", "read", "fetch",
    "apply", "merge", "split", "visit", "lookup", "transform", "get_value",
    "make_key", "find_node", "read_data", "to_string", "strip", "escape",
    "quote", "join", "clean", "expand", "wrap", "prepare")
BUILTINS = ("len", "str", "int", "sorted", "list", "tuple", "set", "repr",
            "abs", "max", "min", "sum", "bool", "iter", "next", "type", "id",
            "hash", "reversed", "float", "dict", "frozenset", "any", "all")
WORDS = (
    "invalid", "value", "missing", "file", "not", "found", "error", "cannot",
    "open", "unknown", "option", "expected", "got", "the", "name", "is", "too",
    "long", "empty", "string", "path", "must", "be", "a", "number", "list",
    "of", "items", "done", "warning", "failed", "to", "read", "write", "line",
    "key", "data", "bad", "type", "for", "argument", "with", "no", "default",
    "in", "this", "module", "object", "has", "attribute", "unexpected",
    "end", "input", "directory", "does", "exist", "already", "closed",
    "connection", "timeout", "while", "parsing", "header", "format")
CLASSES = (
    "Parser", "Handler", "Config", "Node", "Buffer", "Reader", "Writer",
    "Session", "Client", "Server", "Entry", "Record", "Manager", "Builder",
    "Token", "Message", "Request", "Response", "Item", "Context", "Registry",
    "Loader", "Cache", "Event", "Stream", "Table", "Result", "Options")
EXCEPTIONS = ("ValueError", "TypeError", "KeyError", "RuntimeError",
              "OSError", "IndexError", "AttributeError", "NotImplementedError")
MODULES = (
    "os", "sys", "re", "json", "time", "math", "random", "string", "struct",
    "socket", "shutil", "logging", "functools", "itertools", "collections",
    "typing", "pathlib", "subprocess", "threading", "warnings", "io", "copy",
    "types", "inspect", "datetime", "tempfile", "argparse", "textwrap",
    "operator", "abc", "enum", "contextlib", "dataclasses", "unittest",
    "hashlib", "base64", "pickle", "weakref", "heapq", "bisect", "glob",
    "fnmatch", "errno", "signal", "select", "codecs", "locale", "zipfile",
    "tarfile", "csv", "sqlite3", "os.path", "urllib.parse", "email.utils",
    "xml.dom", "http.client", "collections.abc", "importlib.util",
    "concurrent.futures", "unittest.mock", "email.message", "xml.sax")
# class_init and var_swap copy one of these names: each is in REQUIRED_TOKENS.
ATTRS = ("name", "value", "size", "path", "data", "key", "mode", "text",
         "source", "count", "index", "default", "filename", "stream")
# Spaces after "\n" that indent a line of depth 1, 2, 3 (the 4th space goes
# with the next word: "\n        x" splits as "\n", 7 spaces, " x").
INDENT_TOKENS = ("   ", "       ", "           ")


class _Gen:
  """Seeded random choices for the generators."""

  def __init__(self, rng: np.random.Generator):
    self.rng = rng

  def pick(self, seq):
    return seq[int(self.rng.integers(len(seq)))]

  def sample(self, seq, k):
    return [seq[i] for i in self.rng.choice(len(seq), k, replace=False)]

  def coin(self, p=0.5) -> bool:
    return bool(self.rng.random() < p)

  def randint(self, lo, hi) -> int:
    return int(self.rng.integers(lo, hi + 1))

  def number(self) -> str:
    return str(self.randint(0, 99))

  def words(self, lo=1, hi=4) -> str:
    return " ".join(self.sample(WORDS, self.randint(lo, hi)))

  def filler(self, ind: str, names: list[str], comment=True) -> str:
    """One neutral statement (no literals a task could key on), or, if
    `comment`, possibly a comment line."""
    a, b, c = names[:3]
    f = self.pick(FUNCS)
    return self.pick((
        f"{ind}{a} = {f}({b})\n",
        f"{ind}{a} = {b}.{f}({c})\n",
        f"{ind}{a} = {b}.{self.pick(NAMES)}\n",
        f"{ind}{f}({a}, {b})\n",
        f"{ind}{a} = {self.pick(BUILTINS)}({b})\n",
        f"{ind}{a}.{f}()\n",
    ) + ((f"{ind}# {self.words(2, 5)}\n",) if comment else ()))

  def function(self, avoid=(), ind="", max_fillers=2) -> tuple[str, str]:
    """(`def f(args):` + 0..max_fillers statements, body indentation)."""
    free = [n for n in NAMES if n not in avoid]
    names = self.sample(free, 3 * max_fillers + 2)
    args = ", ".join(names[:self.randint(0, 2)])
    head = f"{ind}def {self.pick(FUNCS)}({args}):\n"
    body = ind + IND
    for i in range(self.randint(0, max_fillers)):
      head += self.filler(body, names[2 + 3 * i:])
    return head, body

  def imports(self, hi=2) -> str:
    out = ""
    for m in self.sample(MODULES, self.randint(0, hi)):
      out += (f"import {m}\n" if self.coin() else
              f"from {m} import {self.pick(NAMES)}\n")
    return out


# A side of a pair: (prompt, target, rest), where rest is the code that really
# follows the target (it decides how the target's text splits into tokens).
Side = tuple[str, str, str]


@dataclasses.dataclass(frozen=True)
class Generator:
  name: str
  description: str   # what the model must tell apart
  fn: Callable[[_Gen], tuple[Side, Side]]
  paper: bool        # one of the paper's 20 tasks
  bigram_proof: bool = True


GENERATORS: dict[str, Generator] = {}


def _task(name: str, description: str, paper: bool = False,
          bigram_proof: bool = True):
  def register(fn):
    GENERATORS[name] = Generator(name, description, fn, paper, bigram_proof)
    return fn
  return register


# ------------------------------------------------------- the paper's tasks


@_task("single_double_quote",
       "close a string with the quote that opened it: ' vs \"", paper=True)
def _single_double_quote(g: _Gen):
  content = g.words(1, 4)
  if g.coin(0.25):  # module-level constant
    pre = g.imports()
    var = g.pick(NAMES).upper()
    line = lambda q: f"{var} = {q}{content}"
    # Not a blank line next: "'\n\n" would be one pre-token.
    close, rest = "\n", g.pick((f"{g.pick(NAMES).upper()} = None\n",
                                f"import {g.pick(MODULES)}\n"))
  else:
    pre, ind = g.function(avoid=("msg",))
    kind = g.randint(0, 4)
    if kind == 1:  # a return needs a following line at a shallower depth
      pre += f"{ind}if {g.pick(NAMES)}:\n"
      ind += IND
    var, obj = g.sample(NAMES, 2)
    exc, meth = g.pick(EXCEPTIONS), g.pick(("warning", "info", "debug",
                                            "error", "write", "append"))
    line = lambda q: {
        0: f"{ind}{var} = {q}{content}",
        1: f"{ind}return {q}{content}",
        2: f"{ind}raise {exc}({q}{content}",
        3: f"{ind}print({q}{content}",
        4: f"{ind}{obj}.{meth}({q}{content}",
    }[kind]
    close = "\n" if kind < 2 else ")\n"
    rest = f"{IND}return {obj}\n" if kind == 1 else f"{ind}return {var}\n"
  return ((pre + line("'"), "'" + close, rest),
          (pre + line('"'), '"' + close, rest))



@_task("final_kwarg",
       "after a parameter with a default, the next one needs one too (=None); "
       "without earlier defaults the signature may close (\"):\\n\")",
       paper=True)
def _final_kwarg(g: _Gen):
  params = g.sample(NAMES, g.randint(2, 5))
  last, earlier = params[-1], params[:-1]
  n_pos = g.randint(0, len(earlier) - 1)  # at least one earlier default
  defaults = [g.pick(("None", "None", "0", "1", "True", "False", "''", "()",
                      "-1", "{}")) for _ in earlier[n_pos:]]
  with_kw = earlier[:n_pos] + [f"{p}={d}" for p, d in
                               zip(earlier[n_pos:], defaults)]
  if g.coin():  # a method
    cls = g.pick(CLASSES)
    pre, ind = f"class {cls}:\n", IND
    if g.coin():
      pre += f"{IND}def __init__(self):\n{IND}{IND}self.{g.pick(NAMES)} = None\n\n"
    with_kw, earlier = ["self"] + with_kw, ["self"] + earlier
  else:
    pre, ind = g.imports(), ""
  head = f"{pre}{ind}def {g.pick(FUNCS)}("
  body = f"{ind}{IND}return {last}\n"
  return ((f"{head}{', '.join(with_kw + [last])}", "=None", "):\n" + body),
          (f"{head}{', '.join(earlier + [last])}", "):\n", body))


def _accumulate(g: _Gen, var: str, inits: tuple[str, str],
                ops: tuple[str, str], increments: tuple[str, str]):
  """`var = <init>` ... `var` -> the operation that fits the init's type."""
  pre, ind = g.function(avoid=(var,))
  coll, it = g.pick(COLLECTIONS), g.pick([n for n in NAMES if n != var])
  mid, body = "", ind
  loop = g.randint(0, 2)
  if loop == 0:
    mid, body = f"{ind}for {it} in {coll}:\n", ind + IND
  elif loop == 1:
    mid, body = f"{ind}for {it} in {g.pick(FUNCS)}({coll}):\n", ind + IND
  else:
    mid = f"{ind}{it} = {g.pick(FUNCS)}({coll})\n"
  if g.coin(0.3):
    mid += f"{body}if not {it}:\n{body}{IND}continue\n"
  end = f"{ind}return {var}\n"
  return tuple(
      (f"{pre}{ind}{var} = {init}\n{mid}{body}{var}", op,
       (f"({it})" if op.startswith(".") else f" {inc.format(it=it)}")
       + "\n" + end)
      for init, op, inc in zip(inits, ops, increments))


@_task("set_or_string",
       "a variable initialised as set() grows with .add, one set to \"\" "
       "with +=", paper=True)
def _set_or_string(g: _Gen, var=None):
  var = var or g.pick(NAMES)
  empty = g.pick(('""', "''"))
  return _accumulate(g, var, ("set()", empty), (".add", " +="),
                     ("", "{it}"))


@_task("set_or_string_fixedvarname",
       "set_or_string with the variable always named `current`", paper=True)
def _set_or_string_fixed(g: _Gen):
  return _set_or_string(g, var="current")


@_task("class_init",
       "in __init__, `self.x =` is assigned the parameter named x",
       paper=True)
def _class_init(g: _Gen):
  params = g.sample(ATTRS, g.randint(2, 3))
  cls = g.pick(CLASSES)
  head = (f"class {cls}:\n{IND}def __init__(self, {', '.join(params)}):\n")
  ind = IND + IND
  if g.coin(0.3):
    head += f"{ind}super().__init__()\n"
  p, q = params[:2]
  extra = "".join(f"{ind}self.{r} = {r}\n" for r in params[2:])
  return ((f"{head}{extra}{ind}self.{p} =", " " + p,
           f"\n{ind}self.{q} = {q}\n"),
          (f"{head}{extra}{ind}self.{q} =", " " + q,
           f"\n{ind}self.{p} = {p}\n"))


@_task("with_as",
       "`with open(...` closes with \")\" (then ` as`), `f = open(...` with "
       "\")\\n\"", paper=True)
def _with_as(g: _Gen):
  path, fp, mode, d = g.sample(NAMES, 4)
  pre, ind = g.function(avoid=(path, fp, mode, d))
  opener = g.pick(("open", "open", "io.open", "gzip.open", "codecs.open",
                   "zipfile.ZipFile", "tarfile.open", "self.open"))
  args = g.pick(("", f", {mode}", f", encoding={mode}", f", {mode}, {d}"))
  call = f"{opener}({path}{args}"
  return ((f"{pre}{ind}with {call}", ")",
           f" as {fp}:\n{ind}{IND}{d} = {fp}.read()\n"),
          (f"{pre}{ind}{fp} = {call}", ")\n", f"{ind}{d} = {fp}.read()\n"))


def _args(g: _Gen, lo=2, hi=4) -> list[str]:
  return [g.number() if g.coin(0.25) else n
          for n in g.sample(NAMES, g.randint(lo, hi))]


@_task("bracket_brace",
       "a string key in a dict literal is followed by ': , a list item by ',",
       paper=True)
def _bracket_brace(g: _Gen):
  pre, ind = (g.function() if g.coin() else (g.imports(), ""))
  var = g.pick(NAMES)
  keys = g.sample(NAMES, g.randint(2, 4))
  vals = _args(g, len(keys), len(keys))
  q = g.pick(("'", '"'))
  d = ", ".join(f"{q}{k}{q}: {v}" for k, v in zip(keys[:-1], vals))
  l = ", ".join(f"{q}{k}{q}" for k in keys[:-1])
  rest = (f"{ind}return {var}\n" if ind else
          f"{g.pick(NAMES)} = {g.pick(FUNCS)}({var})\n")
  return ((f"{pre}{ind}{var} = {{{d}, {q}{keys[-1]}", q + ":",
           f" {vals[-1]}}}\n{rest}"),
          (f"{pre}{ind}{var} = [{l}, {q}{keys[-1]}", q + ",",
           f" {q}{g.pick(NAMES)}{q}]\n{rest}"))


# Names that say a file is read or written; pair i differs only in that.
IN_FILES = ("input_path", "in_path", "src_path", "source_file", "input_file",
            "infile", "in_file", "read_path", "src", "input_name",
            "source_path", "in_name")
OUT_FILES = ("output_path", "out_path", "dst_path", "dest_file", "output_file",
             "outfile", "out_file", "write_path", "dst", "output_name",
             "dest_path", "out_name")


@_task("with_open",
       "open a file named like an input with 'r', one named like an output "
       "with 'w'", paper=True)
def _with_open(g: _Gen):
  i = g.randint(0, len(IN_FILES) - 1)
  fp, d = g.pick(("f", "fp", "fh", "handle", "stream", "fd")), "data"
  pre, ind = g.function(avoid=(d,))
  q = g.pick(("'", '"'))
  base = g.pick(NAMES)
  wrap = g.pick(("{}", "{}", f"os.path.join({base}, {{}})",
                 "self.{}", "str({})"))
  opener = g.pick(("with open(", "with open(", "with io.open(",
                   f"{fp} = open("))

  def side(name, mode, body):
    rest = (f"{q}) as {fp}:\n{ind}{IND}{body}\n" if opener.startswith("with")
            else f"{q})\n{ind}{body}\n")
    return f"{pre}{ind}{opener}{wrap.format(name)}, {q}", mode, rest
  return (side(IN_FILES[i], "r", f"{d} = {fp}.read()"),
          side(OUT_FILES[i], "w", f"{fp}.write({d})"))


@_task("bracket_counting",
       "close a nested list literal with ]] and a flat one with ]", paper=True)
def _bracket_counting(g: _Gen):
  pre, ind = (g.function() if g.coin() else (g.imports(), ""))
  var = g.pick(NAMES)
  elem = g.number if g.coin() else (lambda: g.pick(NAMES))
  inner = [[elem() for _ in range(g.randint(2, 3))]
           for _ in range(g.randint(1, 3))]
  nested = "[" + "], [".join(", ".join(r) for r in inner)
  flat = ", ".join(x for r in inner for x in r)
  rest = (f"{ind}return {var}\n" if ind else
          f"{g.pick(NAMES)} = {g.pick(FUNCS)}({var})\n")
  return ((f"{pre}{ind}{var} = [{nested}", "]]\n", rest),
          (f"{pre}{ind}{var} = [{flat}", "]\n", rest))


@_task("for_while",
       "`for x` continues with in, `while x` with \":\\n\"", paper=True)
def _for_while(g: _Gen):
  pre, ind = g.function()
  it = g.pick(NAMES + COLLECTIONS)
  coll, f = g.pick(COLLECTIONS), g.pick(FUNCS)
  body = f"{ind}{IND}{f}({it})\n"
  return ((f"{pre}{ind}for {it}", " in", f" {coll}:\n{body}"),
          (f"{pre}{ind}while {it}", ":\n", body))


# The first token of an elif condition: " not" or a name of ATTRS (each in
# REQUIRED_TOKENS).
_ELIF_STARTS = ("not",) * 4 + ATTRS


@_task("else_elif",
       "`else` is followed by \":\\n\", `elif` by a condition",
       paper=True, bigram_proof=False)
def _else_elif(g: _Gen):
  pre, ind = g.function()
  a, b = g.sample(NAMES, 2)
  cond = g.pick((a, f"not {a}", f"{a} is None", f"{a} in {b}"))
  body = g.filler(ind + IND, g.sample(NAMES, 3), comment=False)
  pre += f"{ind}if {cond}:\n{body}{ind}"
  start = g.pick(_ELIF_STARTS)
  tail = f" {b}:\n" if start == "not" else g.pick((":\n", " is None:\n"))
  after = g.filler(ind + IND, g.sample(NAMES, 3), comment=False)
  return ((f"{pre}else", ":\n", after),
          (f"{pre}elif", " " + start, tail + after))


@_task("fstring_brace",
       "the text of an f-string goes on with a {placeholder}, a plain "
       "string's text closes the string", paper=True)
def _fstring_brace(g: _Gen):
  pre, ind = g.function()
  var, obj = g.sample(NAMES, 2)
  call = g.pick(("print", "print", "log.info", "logger.debug",
                 "warnings.warn", f"raise {g.pick(EXCEPTIONS)}",
                 f"{obj}.write", None))
  q = g.pick(("'", '"'))
  text = g.words(2, 4)
  expr = g.pick((var, var, f"{var}.{g.pick(NAMES)}", f"{var}!r",
                 f"len({var})"))
  if call is None:  # an assignment: the string ends its line
    head, close = f"{ind}{g.pick(NAMES)} = ", q + "\n"
    end = "\n"
  else:
    head, close = f"{ind}{call}(", q + ")\n"
    end = ")\n"
  rest = f"{ind}return {var}\n"
  return ((f"{pre}{head}f{q}{text}", " {", f"{expr}}}{q}{end}{rest}"),
          (f"{pre}{head}{q}{text}", close, rest))


@_task("if_ternary",
       "after an `if` statement's condition comes \":\\n\", after a "
       "conditional expression's condition comes else", paper=True)
def _if_ternary(g: _Gen):
  pre, ind = g.function()
  x, a, b, var = g.sample(NAMES, 4)
  cond = g.pick((x, f"not {x}", f"{x} is None", f"{x} is not None",
                 f"{x} > {g.number()}", f"{x} in {g.pick(COLLECTIONS)}",
                 f"{x} == {g.number()}"))
  lead = g.pick((f"{var} = ", f"{var} = ", "return ", f"self.{var} = "))
  after = "" if lead == "return " else f"{ind}return {var}\n"
  return ((f"{pre}{ind}if {cond}", ":\n",
           f"{ind}{IND}{var} = {a}\n{ind}return {var}\n"),
          (f"{pre}{ind}{lead}{a} if {cond}", " else", f" {b}\n{after}"))


@_task("var_swap",
       "finish a swap `a, b = b, a`: the name that came first on the left",
       paper=True)
def _var_swap(g: _Gen):
  a, b = g.sample(ATTRS, 2)
  pre, ind = g.function(avoid=(a, b))
  rest = f"\n{ind}return {a}, {b}\n"
  if g.coin(0.6):  # the usual guard of a swap
    cond = g.pick((f"{a} > {b}", f"{b} < {a}", f"not {a}", f"{a} is None"))
    pre += f"{ind}if {cond}:\n"
    ind += IND
  return ((f"{pre}{ind}{a}, {b} = {b},", " " + a, rest),
          (f"{pre}{ind}{b}, {a} = {a},", " " + b, rest))


@_task("indent_for",
       "the body of a `for ...:` line is indented one level deeper than the "
       "`for` (the indent token after \":\\n\")", paper=True)
def _indent_for(g: _Gen):
  a, b, c = g.sample(NAMES, 3)
  coll = g.pick(COLLECTIONS)
  if g.coin():
    pre, ind = g.function(avoid=(a, b, c), max_fillers=1)
  else:
    pre, ind = g.imports(), ""
  outer = g.pick((f"for {a} in {coll}", f"if {a}", f"with {a}",
                  f"while {a}", f"if not {a}"))
  loop = g.pick((f"for {b} in {a}", f"for {b} in {coll}",
                 f"for {b}, {c} in {a}.items()", f"for {b} in range({a})",
                 f"for {b} in sorted({a})"))
  stmt = g.filler("", [c, a, b], comment=False)
  pre += f"{ind}{outer}:\n{ind}{IND}{stmt}"
  depth = len(ind) // 4
  return tuple((f"{pre}{i}{loop}:\n", INDENT_TOKENS[d],
                f" {g.pick(FUNCS)}({b})\n")
               for i, d in ((ind, depth), (ind + IND, depth + 1)))


@_task("lambda_func",
       "`lambda f` goes on with \":\", `def f` with its parameter list",
       paper=True)
def _lambda_func(g: _Gen):
  name, attr = g.pick(NAMES + FUNCS), g.pick(NAMES)
  other = g.pick([n for n in NAMES if n != name])
  if g.coin():  # in a class: `def f(self`
    cls = g.pick(CLASSES)
    head = f"class {cls}:\n"
    if g.coin():
      head += (f"{IND}def __init__(self, {other}):\n"
               f"{IND}{IND}self.{other} = {other}\n\n")
    d_ind, paren, d_rest = IND, "(self", f"):\n{IND}{IND}return self.{other}\n"
    lam, lam_rest = g.pick((
        (f"{IND}{other} = lambda {name}", f" {name}.{attr}\n"),
        (f"{IND}key = staticmethod(lambda {name}", f" {name}.{attr})\n")))
  else:
    head, d_ind, paren = g.imports(), "", "():\n"
    d_rest = f"{IND}return {other}\n"
    coll = g.pick(COLLECTIONS)
    lam, lam_rest = g.pick((
        (f"{other} = lambda {name}", f" {name}.{attr}\n"),
        (f"{other} = sorted({coll}, key=lambda {name}", f" {name}.{attr})\n"),
        (f"{other} = map(lambda {name}", f" {name}.{attr}, {coll})\n")))
  return ((f"{head}{lam}", ":", lam_rest),
          (f"{head}{d_ind}def {name}", paren, d_rest))


@_task("if_equals",
       "`if x` compares with ==, a statement starting with x assigns with =",
       paper=True)
def _if_equals(g: _Gen):
  pre, ind = g.function()
  a, b = g.sample(NAMES, 2)
  val = g.pick((g.number(), f"'{g.pick(WORDS)}'", "None", b))
  kw = "if "
  if g.coin(0.3):
    pre += f"{ind}if {b}:\n{ind}{IND}return {g.number()}\n"
    kw = "elif "
  return ((f"{pre}{ind}{kw}{a}", " ==",
           f" {val}:\n{ind}{IND}return {b}\n"),
          (f"{pre}{ind}{a}", " =", f" {val}\n"))


# Loop indices for enumerate / range.
INDICES = ("i", "j", "k", "n", "idx", "index", "pos", "num", "lineno", "count")


@_task("enumerate_range",
       "`for i, x in` goes on with enumerate, `for i in` with range",
       paper=True)
def _enumerate_range(g: _Gen):
  i = g.pick(INDICES)
  x = g.pick([n for n in NAMES if n != i])
  pre, ind = g.function(avoid=(i, x))
  coll = g.pick(COLLECTIONS + tuple(f"self.{c}" for c in COLLECTIONS[:8]))
  body = f"{ind}{IND}{g.pick(FUNCS)}({i})\n"
  return ((f"{pre}{ind}for {i}, {x} in", " enumerate", f"({coll}):\n{body}"),
          (f"{pre}{ind}for {i} in", " range", f"(len({coll})):\n{body}"))


@_task("var_if",
       "`if x == True` goes on with \":\\n\", `x = True` with a newline",
       paper=True)
def _var_if(g: _Gen):
  pre, ind = g.function()
  x, y = g.sample(NAMES, 2)
  val = g.pick(("True", "True", "False", "None", g.number()))
  kw = g.pick(("if", "if", "while", "elif"))
  if kw == "elif":
    pre += f"{ind}if {y}:\n{ind}{IND}return {y}\n"
  return ((f"{pre}{ind}{kw} {x} == {val}", ":\n",
           f"{ind}{IND}{g.pick(FUNCS)}({x})\n"),
          (f"{pre}{ind}{x} = {val}", "\n", f"{ind}return {x}\n"))


@_task("while_return_true",
       "`while True` is followed by \":\\n\", `return True` by a newline",
       paper=True)
def _while_return_true(g: _Gen):
  pre, ind = g.function()
  a, b = g.sample(NAMES, 2)
  cond = g.pick((a, f"not {a}", f"{a} is None", f"{a} in {b}",
                 f"{a}.{g.pick(FUNCS)}()", f"{a} == {g.number()}"))
  pre += f"{ind}if {cond}:\n"
  inner = ind + IND
  return ((f"{pre}{inner}while True", ":\n",
           f"{inner}{IND}{b} = {g.pick(FUNCS)}({a})\n"),
          (f"{pre}{inner}return True", "\n", f"{ind}return False\n"))


# ------------------------------------------------------------------ extras


@_task("list_or_int",
       "a variable initialised as [] grows with .append, one set to 0 with +=")
def _list_or_int(g: _Gen):
  var = g.pick(NAMES)
  return _accumulate(g, var, ("[]", "0"), (".append", " +="),
                     ("", g.pick(("1", "{it}", "len({it})"))))


@_task("from_or_import",
       "`from m` continues with import, `import m` ends the line")
def _from_or_import(g: _Gen):
  pre = g.imports(3)
  mod = g.pick(MODULES)
  nxt = g.imports(1) or f"import {g.pick(MODULES)}\n"
  return ((f"{pre}from {mod}", " import", f" {g.pick(NAMES)}\n{nxt}"),
          (f"{pre}import {mod}", "\n", nxt))


@_task("classmethod_cls",
       "the first parameter is (cls under @classmethod, (self under other "
       "decorators")
def _classmethod_cls(g: _Gen):
  cls, base = g.sample(CLASSES, 2)
  a, b = g.sample(NAMES, 2)
  head = f"class {cls}({base}):\n" if g.coin() else f"class {cls}:\n"
  if g.coin(0.7):
    head += (f"{IND}def __init__(self, {a}):\n"
             f"{IND}{IND}self.{a} = {a}\n\n")
  meth = g.pick(("create", f"from_{b}", f"get_{b}", b, f"make_{b}",
                 f"{b}_count", "default", "parse"))
  other = g.pick(("@property", "@abstractmethod", "@functools.cached_property",
                  "@abc.abstractmethod"))
  return ((f"{head}{IND}@classmethod\n{IND}def {meth}", "(cls",
           f", {b}):\n{IND}{IND}return cls({b})\n"),
          (f"{head}{IND}{other}\n{IND}def {meth}", "(self",
           f"):\n{IND}{IND}return self.{a}\n"))


@_task("close_paren_or_bracket",
       "close a call's arguments with ) and a list's items with ]")
def _close_paren_or_bracket(g: _Gen):
  pre, ind = g.function()
  var = g.pick(NAMES)
  items = ", ".join(_args(g))
  fn = g.pick((g.pick(FUNCS), f"self.{g.pick(FUNCS)}",
               f"{g.pick(NAMES)}.{g.pick(FUNCS)}"))
  rest = f"{ind}return {var}\n"
  return ((f"{pre}{ind}{var} = {fn}({items}", ")\n", rest),
          (f"{pre}{ind}{var} = [{items}", "]\n", rest))


@_task("close_brace_or_bracket",
       "close a set literal with } and a list literal with ]")
def _close_brace_or_bracket(g: _Gen):
  pre, ind = (g.function() if g.coin() else (g.imports(), ""))
  var = g.pick(NAMES).upper() if not ind else g.pick(NAMES)
  items = ", ".join(_args(g))
  rest = (f"{ind}return {var}\n" if ind else
          f"{g.pick(NAMES)} = {g.pick(FUNCS)}({var})\n")
  return ((f"{pre}{ind}{var} = {{{items}", "}\n", rest),
          (f"{pre}{ind}{var} = [{items}", "]\n", rest))


@_task("paren_counting",
       "close two open calls with ))\\n and one with )\\n")
def _paren_counting(g: _Gen):
  pre, ind = g.function()
  var = g.pick(NAMES)
  outer = g.pick((g.pick(BUILTINS), g.pick(FUNCS), f"self.{g.pick(FUNCS)}",
                  f"os.path.{g.pick(('join', 'exists', 'basename'))}"))
  inner = g.pick((g.pick(BUILTINS), g.pick(FUNCS), f"self.{g.pick(FUNCS)}"))
  items = ", ".join(_args(g, 1, 3))
  lead = g.pick((f"{var} = ", "return ", ""))
  rest = (f"{ind}{g.pick(FUNCS)}({var})\n" if lead != "return " else
          f"{ind}{g.pick(FUNCS)}()\n")
  return ((f"{pre}{ind}{lead}{outer}({inner}({items}", "))\n", rest),
          (f"{pre}{ind}{lead}{outer}({items}", ")\n", rest))


@_task("def_or_call",
       "a def's parameter list closes with ):\\n, a call's arguments with )\\n")
def _def_or_call(g: _Gen):
  fn = g.pick(FUNCS)
  params = ", ".join(g.sample(NAMES, g.randint(1, 3)))
  if g.coin():
    pre, ind = g.function()
  else:
    pre, ind = g.imports(), ""
  return ((f"{pre}{ind}def {fn}({params}", "):\n",
           f"{ind}{IND}return None\n"),
          (f"{pre}{ind}{fn}({params}", ")\n", f"{ind}{g.pick(FUNCS)}()\n"))


@_task("fstring_close",
       "an expression inside f\"{...\" closes with }, a call argument "
       "with \")\\n\"")
def _fstring_close(g: _Gen):
  pre, ind = g.function()
  obj, attr = g.pick(("self",) + NAMES), g.pick(NAMES)
  call = g.pick(("print", "log.info", "logger.debug", "warnings.warn",
                 f"raise {g.pick(EXCEPTIONS)}", f"{g.pick(NAMES)} = str"))
  w1, w2 = g.words(1, 3), g.words(1, 3)
  q = g.pick(("'", '"'))
  rest = f"{ind}return {obj}\n"
  return ((f"{pre}{ind}{call}(f{q}{w1} {{{obj}.{attr}", "}",
           f" {w2}{q})\n{rest}"),
          (f"{pre}{ind}{call}({q}{w1}{q}, {obj}.{attr}", ")\n", rest))


@_task("true_false_pattern",
       "complete a run of True (or False) assignments with the same value")
def _true_false_pattern(g: _Gen):
  keys = g.sample(NAMES, g.randint(3, 4))
  if g.coin():  # attributes in __init__
    head = f"class {g.pick(CLASSES)}:\n{IND}def __init__(self):\n"
    ind = IND + IND
    lhs, sep = [f"self.{k} =" for k in keys], ""
    after = f"\n{ind}self.{g.pick(NAMES)} = None\n"
  else:  # a dict literal of flags
    head, ind = f"{g.pick(NAMES).upper()} = {{\n", IND
    lhs, sep = [f"'{k}':" for k in keys], ","
    after = ",\n}\n"

  def side(v):
    lines = "".join(f"{ind}{x} {v}{sep}\n" for x in lhs[:-1])
    return f"{head}{lines}{ind}{lhs[-1]}", " " + v, after
  return side("True"), side("False")


@_task("except_or_else",
       "after a try body the block continues with except, after an if body "
       "with else")
def _except_or_else(g: _Gen):
  pre, ind = g.function()
  a, b = g.sample(NAMES, 2)
  if g.coin(0.4):
    coll = g.pick(COLLECTIONS)
    pre += f"{ind}for {a} in {coll}:\n"
    ind += IND
  body = ind + IND
  stmt = g.filler(body, g.sample(NAMES, 3), comment=False)
  cond = g.pick((b, f"not {b}", f"{b} is None", f"{a} in {b}"))
  after = f":\n{body}{b} = None\n"
  return ((f"{pre}{ind}try:\n{stmt}{ind[:-1]}", " except",
           f" {g.pick(EXCEPTIONS)}{after}"),
          (f"{pre}{ind}if {cond}:\n{stmt}{ind[:-1]}", " else", after))


@_task("is_not_none_or_not_in",
       "`x is not` continues with None, `x not` with in")
def _is_not_none_or_not_in(g: _Gen):
  pre, ind = g.function()
  a, b = g.sample(NAMES, 2)
  coll = g.pick(COLLECTIONS)
  kw = g.pick(("if", "if", "while", "return", "assert", "elif"))
  if kw == "elif":
    pre += f"{ind}if {b}:\n{ind}{IND}return {b}\n"
  end = ("\n" if kw in ("return", "assert") else
         f":\n{ind}{IND}{g.pick(FUNCS)}({a})\n")
  return ((f"{pre}{ind}{kw} {a} is not", " None", end),
          (f"{pre}{ind}{kw} {a} not", " in", f" {coll}{end}"))




PAPER_TASKS: tuple[str, ...] = (
    "single_double_quote", "final_kwarg", "set_or_string",
    "set_or_string_fixedvarname", "class_init", "with_as", "bracket_brace",
    "with_open", "bracket_counting", "for_while", "else_elif", "fstring_brace",
    "if_ternary", "var_swap", "indent_for", "lambda_func", "if_equals",
    "enumerate_range", "var_if", "while_return_true")  # the paper's Table 1
EXTRA_TASKS: tuple[str, ...] = tuple(
    n for n, gen in GENERATORS.items() if not gen.paper)
TASK_NAMES: tuple[str, ...] = PAPER_TASKS + EXTRA_TASKS
SUITES = {"paper": PAPER_TASKS, "all": TASK_NAMES}
assert set(PAPER_TASKS) == {n for n, gen in GENERATORS.items() if gen.paper}


def suite(name: str) -> tuple[str, ...]:
  """The task names of a suite: "paper" (the paper's 20) or "all"."""
  if name not in SUITES:
    raise ConfigError(f"config.tasks.suite: unknown task suite {name!r}; "
                      f"choose from {sorted(SUITES)}")
  return SUITES[name]


# ------------------------------------------------------------------ checks


def _check_side(name: str, prompt: str, cand: str, rest: str) -> list[str]:
  """The prompt's pre-tokens, after checking that cand + rest follows it as
  one pre-token (what the model really sees next); raises on a generator bug."""
  p = tokenizer_lib.pretokens(prompt)
  full = tokenizer_lib.pretokens(prompt + cand + rest)
  if full[:len(p) + 1] != p + [cand]:
    raise AssertionError(
        f"task {name!r}: {cand!r} is not the next pre-token after the prompt "
        f"in real code: ...{full[max(0, len(p) - 3):len(p) + 2]} for "
        f"prompt ...{prompt[-60:]!r} + {(cand + rest)[:40]!r}")
  return p


def _check_pair(gen: Generator, a: Side, b: Side) -> None:
  name = gen.name
  if a[1] == b[1] or a[0] == b[0]:
    raise AssertionError(f"task {name!r}: degenerate pair {a!r} / {b!r}")
  pa = _check_side(name, a[0], a[1], a[2])
  pb = _check_side(name, b[0], b[1], b[2])
  _check_side(name, a[0], b[1], b[2])  # the alternative, continued as in b
  _check_side(name, b[0], a[1], a[2])
  if gen.bigram_proof and pa[-1] != pb[-1]:
    raise AssertionError(
        f"task {name!r}: the prompts of a pair end with different pre-tokens "
        f"{pa[-1]!r} / {pb[-1]!r}; a bigram model could tell them apart")


def rng(seed: int, name: str, split: str) -> np.random.Generator:
  return np.random.default_rng(
      [int(seed), zlib.crc32(name.encode()), zlib.crc32(split.encode())])


def generate(name: str, n_pairs: int, seed: int, split: str,
             exclude: frozenset[str] = frozenset()) -> list[tuple[Side, Side]]:
  """n_pairs distinct checked pairs of task `name`, none of whose prompts is in
  `exclude`; deterministic in (name, seed, split, n_pairs)."""
  if name not in GENERATORS:
    raise ConfigError(f"unknown task {name!r}; built-in tasks: {TASK_NAMES}")
  gen = GENERATORS[name]
  g = _Gen(rng(seed, name, split))
  pairs, seen = [], set(exclude)
  for _ in range(50 * n_pairs + 100):
    if len(pairs) == n_pairs:
      break
    a, b = gen.fn(g)
    _check_pair(gen, a, b)
    if a[0] in seen or b[0] in seen:
      continue
    seen.update((a[0], b[0]))
    pairs.append((a, b))
  else:
    if len(pairs) < n_pairs:
      raise ValueError(f"task {name!r}: only {len(pairs)} distinct pairs "
                       f"after many tries; {n_pairs} wanted")
  return pairs


# --------------------------------------------------------------- the table


def _code(s: str) -> str:
  """s as a markdown code span inside a table cell."""
  s = s.replace("\\", "\\\\").replace("\n", "\\n").replace("|", "\\|")
  return f"`{s}`" if "`" not in s else f"`` {s} ``"


def markdown_table(tail_chars: int = 48) -> str:
  """One line per task (paper tasks first): what it contrasts, the end of an
  example prompt (the first test pair of seed 0) and its two candidates."""
  rows = ["| task | paper | the model must tell apart | example prompt (end) "
          "| target | alternative |", "|---|---|---|---|---|---|"]
  for name in TASK_NAMES:
    gen = GENERATORS[name]
    (prompt, target, _), (_, alternative, _) = generate(name, 1, 0, "test")[0]
    tail = prompt[-tail_chars:]
    tail = ("…" if len(prompt) > tail_chars else "") + tail
    rows.append(f"| `{name}` | {'yes' if gen.paper else ''} | "
                f"{gen.description.replace('|', '&#124;')} | "
                f"{_code(tail)} | {_code(target)} | {_code(alternative)} |")
  return "\n".join(rows)


if __name__ == "__main__":
  if sys.argv[1:] != ["--markdown"]:
    sys.exit("usage: python -m sparse_circuits.tasks.suite --markdown")
  print(markdown_table())
