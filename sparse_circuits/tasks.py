"""Binary next-token tasks on Python code (method.md §4), their loss and metrics.

A task is a set of pairs of short Python contexts that differ in one decisive
detail; each prompt has a correct next token and an alternative, and the two
prompts of a pair swap them (`x = set()` ... `x` -> `.add` vs `+=`, and
`x = ""` ... `x` -> `+=` vs `.add`). Task loss is the binary cross-entropy over
the two candidates at the last position; accuracy is how often the target's
logit wins.

Every built-in generator obeys two rules, checked on each example with the
tokenizer's pre-tokenisation pattern, so they hold for any BPE of that pattern:
  * consistency: prompt + target + the code that really follows it splits into
    the prompt's pre-tokens, then the target (so the task asks for the token
    the model would actually see next in such code), and the same holds for
    the alternative;
  * no bigram shortcut: both prompts of a pair end with the same pre-token,
    hence the same last token, so a model that sees only the last token is
    right on exactly one of the two.
All candidates are in `tokenizer.REQUIRED_TOKENS`, so every tokenizer this
project trains has them as single tokens; `build` checks it anyway.

Shapes: N examples, T prompt length (left-padded), V vocab.
"""

import dataclasses
import functools
import json
import logging
import math
import zlib
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sparse_circuits import model as model_lib
from sparse_circuits import tokenizer as tokenizer_lib
from sparse_circuits.errors import ConfigError, TaskFileError


@dataclasses.dataclass
class TaskData:
  """One split. Rows 2i and 2i+1 of a built-in task form pair i."""
  tokens: np.ndarray       # int32 [N, T], left-truncated, left-padded with eot
  target: np.ndarray       # int32 [N]
  alternative: np.ndarray  # int32 [N]
  pair: np.ndarray         # int32 [N]
  texts: list[str]         # the prompts before truncation

  def __len__(self):
    return len(self.target)


@dataclasses.dataclass
class Task:
  name: str
  description: str
  train: TaskData
  test: TaskData


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
# init_attr_copy copies one of these names: each is in REQUIRED_TOKENS.
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
_GENERATORS: dict[str, tuple[str, Callable[[_Gen], tuple[Side, Side]]]] = {}


def _task(name: str, description: str):
  def register(fn):
    _GENERATORS[name] = (description, fn)
    return fn
  return register


# ------------------------------------------------------ the published five


@_task("single_double_quote",
       "close a string with the quote that opened it: ' vs \"")
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


@_task("bracket_counting",
       "close a nested list literal with ]] and a flat one with ]")
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
       "with +=")
def _set_or_string(g: _Gen, var=None):
  var = var or g.pick(NAMES)
  empty = g.pick(('""', "''"))
  return _accumulate(g, var, ("set()", empty), (".add", " +="),
                     ("", "{it}"))


@_task("set_or_string_fixedvarname",
       "set_or_string with the variable always named `current`")
def _set_or_string_fixed(g: _Gen):
  return _set_or_string(g, var="current")


@_task("while_return_true",
       "`while True` is followed by :\\n, `return True` by a newline")
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


# ----------------------------------------------------------------- more


@_task("list_or_int",
       "a variable initialised as [] grows with .append, one set to 0 with +=")
def _list_or_int(g: _Gen):
  var = g.pick(NAMES)
  return _accumulate(g, var, ("[]", "0"), (".append", " +="),
                     ("", g.pick(("1", "{it}", "len({it})"))))


@_task("for_in_or_assign",
       "`for x` continues with in; a statement starting with x with =")
def _for_in_or_assign(g: _Gen):
  pre, ind = g.function()
  it, coll = g.pick(NAMES), g.pick(COLLECTIONS)
  return ((f"{pre}{ind}for {it}", " in",
           f" {coll}:\n{ind}{IND}{g.pick(FUNCS)}({it})\n"),
          (f"{pre}{ind}{it}", " =", f" {g.pick(FUNCS)}({coll})\n"))


@_task("if_eq_or_assign",
       "`if x` compares with ==; a statement starting with x assigns with =")
def _if_eq_or_assign(g: _Gen):
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


@_task("with_open_as",
       "`with open(...)` continues with `) as`, `f = open(...)` with )\\n")
def _with_open_as(g: _Gen):
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


@_task("fstring_brace",
       "an expression inside f\"{...\" closes with }, a call argument "
       "with )\\n")
def _fstring_brace(g: _Gen):
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


@_task("indent_depth",
       "after a block opener the body is indented one level deeper than the "
       "opener (indent token after :\\n)")
def _indent_depth(g: _Gen):
  a, b, c = g.sample(NAMES, 3)
  coll = g.pick(COLLECTIONS)
  if g.coin():
    pre, ind = g.function(avoid=(a, b, c), max_fillers=1)
  else:
    pre, ind = g.imports(), ""
  outer = g.pick((f"for {a} in {coll}", f"if {a}", f"with {a}",
                  f"while {a}", f"if not {a}"))
  opener = g.pick((f"if {b}", f"for {b} in {a}", f"while {b}",
                   f"if {b} is None", f"with {b} as {c}"))
  stmt = g.filler("", [c, a, b], comment=False)
  pre += f"{ind}{outer}:\n{ind}{IND}{stmt}"
  depth = len(ind) // 4
  return tuple((f"{pre}{i}{opener}:\n", INDENT_TOKENS[d],
                f" {g.pick(FUNCS)}({b})\n")
               for i, d in ((ind, depth), (ind + IND, depth + 1)))


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


@_task("dict_or_list_sep",
       "a string key in a dict literal is followed by ': , a list item by ',")
def _dict_or_list_sep(g: _Gen):
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


@_task("init_attr_copy",
       "in __init__, `self.x =` is assigned the parameter named x")
def _init_attr_copy(g: _Gen):
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


TASK_NAMES: tuple[str, ...] = tuple(_GENERATORS)


# ------------------------------------------------------------------ building


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


def _check_pair(name: str, a: Side, b: Side) -> None:
  if a[1] == b[1] or a[0] == b[0]:
    raise AssertionError(f"task {name!r}: degenerate pair {a!r} / {b!r}")
  pa = _check_side(name, a[0], a[1], a[2])
  pb = _check_side(name, b[0], b[1], b[2])
  _check_side(name, a[0], b[1], b[2])  # the alternative, continued as in b
  _check_side(name, b[0], a[1], a[2])
  if pa[-1] != pb[-1]:
    raise AssertionError(
        f"task {name!r}: the prompts of a pair end with different pre-tokens "
        f"{pa[-1]!r} / {pb[-1]!r}; a bigram model could tell them apart")


def _rng(seed: int, name: str, split: str) -> np.random.Generator:
  return np.random.default_rng(
      [int(seed), zlib.crc32(name.encode()), zlib.crc32(split.encode())])


def _generate(name: str, n_pairs: int, seed: int, split: str,
              exclude: set[str]) -> list[tuple[Side, Side]]:
  gen = _GENERATORS[name][1]
  g = _Gen(_rng(seed, name, split))
  pairs, seen = [], set(exclude)
  for _ in range(50 * n_pairs + 100):
    if len(pairs) == n_pairs:
      break
    a, b = gen(g)
    _check_pair(name, a, b)
    if a[0] in seen or b[0] in seen:
      continue
    seen.update((a[0], b[0]))
    pairs.append((a, b))
  else:
    if len(pairs) < n_pairs:
      raise ValueError(f"task {name!r}: only {len(pairs)} distinct pairs "
                       f"after many tries; {n_pairs} wanted")
  return pairs


def _candidate_id(tok, task: str, s: str, where: str = "") -> int:
  try:
    return tok.single_token(s)
  except ValueError as e:
    raise ValueError(
        f"task {task!r}{where}: candidate {s!r} is not a single token of the "
        f"tokenizer at {tok.path} ({e}); the task cannot compare its logit"
    ) from None


def _task_data(tok, task: str, prompts: list[str], targets: list[str],
               alternatives: list[str], pair: np.ndarray,
               max_len: int) -> TaskData:
  if max_len < 1:
    raise ValueError(f"max_len must be positive, got {max_len}")
  ids = {s: _candidate_id(tok, task, s) for s in {*targets, *alternatives}}
  encoded = [p[-max_len:] for p in tok.encode_batch(prompts)] if prompts else []
  if any(not p for p in encoded):
    raise ValueError(f"task {task!r}: an empty prompt")
  t_len = max((len(p) for p in encoded), default=1)
  tokens = np.full((len(encoded), t_len), tok.eot_id, np.int32)
  for i, p in enumerate(encoded):
    tokens[i, t_len - len(p):] = p
  return TaskData(tokens=tokens,
                  target=np.array([ids[s] for s in targets], np.int32),
                  alternative=np.array([ids[s] for s in alternatives],
                                       np.int32),
                  pair=np.asarray(pair, np.int32).reshape(-1),
                  texts=list(prompts))


def _pairs_data(tok, task, pairs, max_len) -> TaskData:
  prompts, targets, alternatives = [], [], []
  for a, b in pairs:
    prompts += [a[0], b[0]]
    targets += [a[1], b[1]]
    alternatives += [b[1], a[1]]
  data = _task_data(tok, task, prompts, targets, alternatives,
                    np.arange(len(prompts)) // 2, max_len)
  last = data.tokens[:, -1]
  if np.any(last[0::2] != last[1::2]):
    raise AssertionError(f"task {task!r}: a pair's last tokens differ")
  return data


def build(name: str, tok, *, n_train: int, n_test: int, seed: int,
          max_len: int) -> Task:
  """A built-in task; deterministic in (name, seed, n_test, n_train).

  The test pairs come from their own random stream (so they do not depend
  on n_train); train pairs are drawn from another and skip every test text.
  """
  if name not in _GENERATORS:
    raise ValueError(f"unknown task {name!r}; built-in tasks: {TASK_NAMES}")
  for n, field in ((n_train, "n_train"), (n_test, "n_test")):
    if n < 0 or n % 2:
      raise ValueError(f"{field} must be even and >= 0 (prompts come in "
                       f"pairs), got {n}")
  description = _GENERATORS[name][0]
  test = _generate(name, n_test // 2, seed, "test", set())
  held = {s[0] for p in test for s in p}
  train = _generate(name, n_train // 2, seed, "train", held)
  return Task(name, description, _pairs_data(tok, name, train, max_len),
              _pairs_data(tok, name, test, max_len))


def build_all(config, tok, names=None) -> dict[str, Task]:
  """The tasks named (default: config.tasks.names, and if that is empty every
  built-in task, then the user tasks)."""
  t = config.tasks
  max_len = config.model.block_size
  user = {}
  for path in [p.strip() for p in str(t.user_tasks or "").split(",")]:
    if path:
      loaded = load_user_tasks(path, tok, seed=t.seed, max_len=max_len)
      clash = sorted((set(loaded) & set(user)) | (set(loaded) &
                                                  set(TASK_NAMES)))
      if clash:
        raise TaskFileError(f"{path}: task names {clash} are already taken "
                            "by a built-in task or another user task file")
      user.update(loaded)
  if names is None:
    names = tuple(t.get("names", ())) or list(TASK_NAMES) + list(user)
  names = list(names)
  unknown = [n for n in names if n not in _GENERATORS and n not in user]
  if unknown:
    raise ConfigError(f"unknown tasks {unknown}; known: "
                      f"{list(TASK_NAMES) + list(user)}")
  return {n: user[n] if n in user else build(
      n, tok, n_train=t.n_train, n_test=t.n_test, seed=t.seed,
      max_len=max_len) for n in names}


# --------------------------------------------------------------- user tasks


def _read_user_rows(path: str, tok) -> dict[str, list[tuple[int, dict]]]:
  from etils import epath  # pylint: disable=g-import-not-at-top
  p = epath.Path(path)
  default = p.name.split(".")[0]
  tasks: dict[str, list[tuple[int, dict]]] = {}
  seen = set()
  try:
    text = p.read_text()
  except (OSError, UnicodeDecodeError) as e:
    raise TaskFileError(f"config.tasks.user_tasks: cannot read {path} ({e})"
                        ) from None
  for lineno, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    where = f"{path}:{lineno}"
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise TaskFileError(f"{where}: not a JSON object ({e})") from None
    if not isinstance(row, dict):
      raise TaskFileError(f"{where}: not a JSON object")
    bad = [k for k in ("prompt", "target", "alternative")
           if not isinstance(row.get(k), str) or not row[k]]
    if bad:
      raise TaskFileError(f"{where}: needs non-empty strings {bad} (a row is "
                          '{"prompt", "target", "alternative"[, "task"]})')
    name = str(row.get("task") or default)
    for key in ("target", "alternative"):
      _candidate_id(tok, name, row[key], f" ({where}, {key})")
    if row["target"] == row["alternative"]:
      raise TaskFileError(f"{where}: task {name!r}: target and alternative "
                          f"are both {row['target']!r}")
    ids = tok.encode(row["prompt"])
    if tok.encode(row["prompt"] + row["target"]) != ids + [
        tok.single_token(row["target"])]:
      logging.warning("%s: task %r: prompt + %r does not tokenize as the "
                      "prompt's tokens then the target; the model may never "
                      "see this token split in real text", where, name,
                      row["target"])
    key = (name, row["prompt"], row["target"], row["alternative"])
    if key not in seen:  # an exact repeat adds nothing
      seen.add(key)
      tasks.setdefault(name, []).append((lineno, row))
  if not tasks:
    raise TaskFileError(f"{path}: no rows")
  return tasks


def load_user_tasks(path: str, tok, *, n_test_frac: float = 0.2,
                    seed: int = 0, max_len: int) -> dict[str, Task]:
  """Tasks from a .jsonl of {"prompt", "target", "alternative"[, "task"]}.

  Rows of one task (named by "task", default the file's stem) are split into
  train and test by seeded shuffle, n_test_frac of them for test. Two
  consecutive rows with swapped candidates are kept together as a pair
  (same `pair` id); any other row is a pair of its own. A candidate that is
  not a single token is an error naming the line, the task and the token.
  """
  out = {}
  for name, rows in _read_user_rows(path, tok).items():
    groups, i = [], 0
    while i < len(rows):
      r = rows[i][1]
      nxt = rows[i + 1][1] if i + 1 < len(rows) else None
      if nxt is not None and (nxt["target"], nxt["alternative"]) == (
          r["alternative"], r["target"]):
        groups.append([r, nxt])
        i += 2
      else:
        groups.append([r])
        i += 1
    if len(groups) < 2:
      raise TaskFileError(f"{path}: task {name!r} has {len(rows)} rows; it "
                          "needs at least two (pairs) to have train and test "
                          "examples")
    order = _rng(seed, name, "user").permutation(len(groups))
    n_test = min(max(1, round(n_test_frac * len(groups))), len(groups) - 1)
    test = [groups[k] for k in order[:n_test]]
    train = [groups[k] for k in order[n_test:]]
    train_texts = {r["prompt"] for g in train for r in g}
    overlap = [g for g in test if any(r["prompt"] in train_texts for r in g)]
    test = [g for g in test if g not in overlap]
    train += overlap  # the same prompt never sits in both splits

    def data(groups):
      flat = [(k, r) for k, g in enumerate(groups) for r in g]
      return _task_data(tok, name, [r["prompt"] for _, r in flat],
                        [r["target"] for _, r in flat],
                        [r["alternative"] for _, r in flat],
                        np.array([k for k, _ in flat]), max_len)
    out[name] = Task(name, f"user task from {path}", data(train), data(test))
  return out


# ----------------------------------------------------------- loss, metrics


def logit_diff(logits_NxV, target_N, alternative_N):
  """logit[target] - logit[alternative], [N]."""
  take = lambda ids: jnp.take_along_axis(
      logits_NxV, jnp.asarray(ids, jnp.int32)[:, None], axis=-1)[:, 0]
  return (take(target_N) - take(alternative_N)).astype(jnp.float32)


def per_example_loss(logits_NxV, target_N, alternative_N):
  """Binary cross-entropy over the two candidates, [N]: softplus(-d)."""
  return jax.nn.softplus(-logit_diff(logits_NxV, target_N, alternative_N))


def binary_loss(logits_NxV, target_N, alternative_N):
  """(mean binary cross-entropy, accuracy) over the two candidates."""
  d_N = logit_diff(logits_NxV, target_N, alternative_N)
  return (jnp.mean(jax.nn.softplus(-d_N)),
          jnp.mean((d_N > 0).astype(jnp.float32)))


@functools.partial(jax.jit, static_argnames=("cfg",))
def _stats(params, tokens_BxT, target_B, alternative_B, interventions, cfg):
  logits_BxTxV, _ = model_lib.forward(params, tokens_BxT, cfg, interventions)
  d_B = logit_diff(logits_BxTxV[:, -1], target_B, alternative_B)
  return jax.nn.softplus(-d_B), d_B > 0


def evaluate_task(params, cfg: model_lib.ModelConfig, data: TaskData,
                  batch_size: int = 256, interventions=None) -> dict:
  """Task loss and accuracy at the last position: {loss, accuracy, n}."""
  n = len(data.target)
  if n == 0:
    return dict(loss=math.nan, accuracy=math.nan, n=0)
  bs = min(batch_size, n)
  losses, correct = [], []
  for start in range(0, n, bs):
    idx = np.arange(start, start + bs) % n  # the last batch wraps around
    loss_B, ok_B = _stats(params, data.tokens[idx], data.target[idx],
                          data.alternative[idx], interventions, cfg)
    k = min(bs, n - start)
    losses.append(np.asarray(loss_B)[:k])
    correct.append(np.asarray(ok_B)[:k])
  return dict(loss=float(np.mean(np.concatenate(losses))),
              accuracy=float(np.mean(np.concatenate(correct))), n=n)
