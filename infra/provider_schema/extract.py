#!/usr/bin/env python3
"""Extract the configuration schema of chosen hashicorp/google or hashicorp/google-beta provider types from the
provider's Go source.

Reads a git directory of github.com/hashicorp/terraform-provider-google (or terraform-provider-google-beta) at
one tag (no work tree, no network, no Go toolchain), interprets the small subset of Go that builds
`schema.Resource` values (composite literals, helper functions, package-level variables and the provider's few
schema helpers) and writes, for each type in types.txt (google) or types-beta.txt (google-beta), the schema
Terraform sees: attributes (required/optional/computed) and nested blocks, converted the way
terraform-plugin-sdk/v2 does it (computed-only nested resources are attributes; `id` and `timeouts` are added).
The output is <provider>-<version>.json (google-6.50.0.json, google-beta-6.50.0.json); an older file of the same
provider is removed, the other provider's files are left alone.

    python infra/provider_schema/extract.py --git-dir /path/to/terraform-provider-google.git --ref v6.50.0
    python infra/provider_schema/extract.py --provider google-beta \
        --git-dir /path/to/terraform-provider-google-beta.git --ref v6.50.0

Stdlib only, Python 3.11+.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Provider:
    """Where one provider's code lives: its Go module path and the source directory (google, google-beta)."""

    name: str  # google or google-beta: the registry name, the source directory and the output file's prefix
    module: str  # Go module path, with a trailing slash
    types_file: Path

    @property
    def source(self) -> str:
        return f"hashicorp/{self.name}"

    @property
    def provider_dir(self) -> str:
        return f"{self.name}/provider"

    def output_name(self, version: str) -> str:
        return f"{self.name}-{version}.json"

    def owns(self, path: Path) -> bool:
        """Whether `path` is a schema file this provider writes (google-beta-*.json is not google's)."""
        return re.fullmatch(rf"{re.escape(self.name)}-\d+\.\d+\.\d+\.json", path.name) is not None


PROVIDERS = {
    "google": Provider("google", "github.com/hashicorp/terraform-provider-google/", HERE / "types.txt"),
    "google-beta": Provider("google-beta", "github.com/hashicorp/terraform-provider-google-beta/",
                            HERE / "types-beta.txt"),
}


# --------------------------------------------------------------------------------------------- git access


class GitTree:
    """Read-only access to files of one commit of a bare (or normal) git directory."""

    def __init__(self, git_dir: str, ref: str) -> None:
        self.git_dir = git_dir
        self.ref = ref
        self.commit = self._git("rev-parse", "--verify", f"{ref}^{{commit}}").strip()
        self._cat = subprocess.Popen(["git", "--git-dir", git_dir, "cat-file", "--batch"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)
        self._dirs: dict[str, list[str]] = {}

    def _git(self, *args: str) -> str:
        return subprocess.run(["git", "--git-dir", self.git_dir, *args], check=True, capture_output=True,
                              text=True).stdout

    def list_dir(self, path: str) -> list[str]:
        """Names of the files directly in `path` at the commit."""
        if path not in self._dirs:
            out = self._git("ls-tree", "--name-only", self.commit, path.rstrip("/") + "/")
            self._dirs[path] = [line.rsplit("/", 1)[-1] for line in out.splitlines()]
        return self._dirs[path]

    def read(self, path: str) -> str:
        """The text of one file at the commit."""
        assert self._cat.stdin and self._cat.stdout
        self._cat.stdin.write(f"{self.commit}:{path}\n".encode())
        self._cat.stdin.flush()
        header = self._cat.stdout.readline().decode().split()
        if len(header) < 3 or header[1] != "blob":
            raise FileNotFoundError(f"{path} at {self.ref}: {' '.join(header)}")
        data = self._cat.stdout.read(int(header[2]))
        self._cat.stdout.read(1)
        return data.decode("utf-8")

    def close(self) -> None:
        if self._cat.stdin:
            self._cat.stdin.close()
        self._cat.wait()


# --------------------------------------------------------------------------------------------- Go tokens


@dataclass(frozen=True)
class Tok:
    kind: str  # ident, int, float, imag, char, string, op
    text: str
    line: int


_TOKEN_RE = re.compile(r"""
    (?P<nl>\n)
  | (?P<ws>[ \t\r\f]+)
  | (?P<lcomment>//[^\n]*)
  | (?P<bcomment>/\*.*?\*/)
  | (?P<raw>`[^`]*`)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<char>'(?:[^'\\\n]|\\.)+')
  | (?P<float>(?:\d[\d_]*\.\d*|\.\d+)(?:[eE][+-]?\d+)?i?|\d[\d_]*[eE][+-]?\d+i?)
  | (?P<int>0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+|\d[\d_]*i?)
  | (?P<ident>[^\W\d]\w*)
  | (?P<op><<=|>>=|&\^=|\.\.\.|&&|\|\||<-|\+\+|--|==|!=|<=|>=|:=|\+=|-=|\*=|/=|%=|&=|\|=|\^=|<<|>>|&\^
          |[-+*/%&|^<>=!()\[\]{},;.:~])
""", re.VERBOSE | re.DOTALL)
_SEMI_AFTER = {"break", "continue", "fallthrough", "return", "++", "--", ")", "]", "}"}


def tokenize(src: str) -> list[Tok]:
    """Go tokens, with the semicolons Go inserts at line ends."""
    toks: list[Tok] = []
    pos, line = 0, 1

    def newline() -> None:
        if toks and (toks[-1].kind != "op" or toks[-1].text in _SEMI_AFTER) and toks[-1].text != ";":
            toks.append(Tok("op", ";", line))

    while pos < len(src):
        m = _TOKEN_RE.match(src, pos)
        if not m:
            raise SyntaxError(f"line {line}: cannot tokenize {src[pos:pos + 20]!r}")
        kind, text = m.lastgroup, m.group()
        pos = m.end()
        if kind == "nl":
            newline()
            line += 1
        elif kind == "ws" or kind == "lcomment":
            pass
        elif kind == "bcomment":
            if "\n" in text:
                newline()
                line += text.count("\n")
        elif kind == "raw":
            toks.append(Tok("string", text, line))
            line += text.count("\n")
        elif kind == "ident" and text in ("break", "continue", "fallthrough", "return"):
            toks.append(Tok("ident", text, line))
        else:
            toks.append(Tok(kind or "op", text, line))
    newline()
    return toks


def _int_value(text: str) -> int | str:
    """The value of a Go integer literal (imaginary literals stay text)."""
    text = text.replace("_", "")
    if text.endswith("i"):
        return text
    if re.fullmatch(r"0[0-7]+", text):
        return int(text, 8)
    return int(text, 0)


def string_value(tok: Tok) -> str:
    """The value of a Go string literal token."""
    if tok.text.startswith("`"):
        return tok.text[1:-1]
    try:
        return json.loads(tok.text)
    except json.JSONDecodeError:  # Go-only escapes (\x41, \a, \'): names never use them
        return tok.text[1:-1]


# --------------------------------------------------------------------------------------------- Go AST


@dataclass
class Node:
    kind: str
    args: tuple
    line: int = 0


_OPEN = {"(": ")", "[": "]", "{": "}"}
_BINARY_PREC = {"||": 1, "&&": 2, "==": 3, "!=": 3, "<": 3, "<=": 3, ">": 3, ">=": 3, "+": 4, "-": 4, "|": 4,
                "^": 4, "*": 5, "/": 5, "%": 5, "<<": 5, ">>": 5, "&": 5, "&^": 5}


class Parser:
    """A recursive-descent parser for the expression subset schema code uses."""

    def __init__(self, toks: list[Tok], start: int = 0, end: int | None = None) -> None:
        self.toks = toks
        self.i = start
        self.end = len(toks) if end is None else end

    def peek(self, k: int = 0) -> Tok | None:
        j = self.i + k
        return self.toks[j] if j < self.end else None

    def at(self, text: str, k: int = 0) -> bool:
        t = self.peek(k)
        return t is not None and t.text == text and t.kind in ("op", "ident")

    def next(self) -> Tok:
        t = self.peek()
        if t is None:
            raise SyntaxError("unexpected end of expression")
        self.i += 1
        return t

    def expect(self, text: str) -> Tok:
        t = self.next()
        if t.text != text:
            raise SyntaxError(f"line {t.line}: expected {text!r}, got {t.text!r}")
        return t

    def skip_balanced(self) -> None:
        """Skip from an opening bracket to after its match."""
        depth = 0
        while True:
            t = self.next()
            if t.kind == "op" and t.text in _OPEN:
                depth += 1
            elif t.kind == "op" and t.text in (")", "]", "}"):
                depth -= 1
                if depth == 0:
                    return

    # types ---------------------------------------------------------------------------------------------
    def parse_type(self) -> str:
        """A type expression, returned as its (space-free) text."""
        t = self.peek()
        if t is None:
            raise SyntaxError("expected a type")
        if t.text == "*":
            self.next()
            return "*" + self.parse_type()
        if t.text == "[":
            self.next()
            size = ""
            while not self.at("]"):
                size += self.next().text
            self.expect("]")
            return f"[{size}]" + self.parse_type()
        if t.text == "map":
            self.next()
            self.expect("[")
            key = self.parse_type()
            self.expect("]")
            return f"map[{key}]" + self.parse_type()
        if t.text == "chan":
            self.next()
            return "chan " + self.parse_type()
        if t.text in ("interface", "struct"):
            self.next()
            start = self.i
            self.skip_balanced()
            return t.text + "".join(x.text for x in self.toks[start:self.i])
        if t.text == "func":
            self.next()
            start = self.i
            self.skip_balanced()
            result = self.parse_result_type()
            return "func" + "".join(x.text for x in self.toks[start:self.i]) + result
        if t.text == "(":
            self.next()
            inner = self.parse_type()
            self.expect(")")
            return inner
        name = self.next().text
        if self.at("."):
            self.next()
            name += "." + self.next().text
        if self.at("["):  # generic instantiation
            start = self.i
            self.skip_balanced()
            name += "".join(x.text for x in self.toks[start:self.i])
        return name

    def parse_result_type(self) -> str:
        """Result type(s) of a signature: nothing, one type, or a parenthesised list."""
        t = self.peek()
        if t is None or t.text in ("{", ";", ",", ")", "]", "}", "=") or t.kind in ("string",):
            return ""
        if t.text == "(":
            start = self.i
            self.skip_balanced()
            return "".join(x.text for x in self.toks[start:self.i])
        return self.parse_type()

    # expressions ---------------------------------------------------------------------------------------
    def parse_expr(self, prec: int = 1) -> Node:
        left = self.parse_unary()
        while True:
            t = self.peek()
            if t is None or t.kind != "op" or t.text not in _BINARY_PREC or _BINARY_PREC[t.text] < prec:
                return left
            self.next()
            right = self.parse_expr(_BINARY_PREC[t.text] + 1)
            left = Node("binary", (t.text, left, right), t.line)

    def parse_expr_list(self) -> list[Node]:
        exprs = [self.parse_expr()]
        while self.at(","):
            self.next()
            exprs.append(self.parse_expr())
        return exprs

    def parse_unary(self) -> Node:
        t = self.peek()
        if t is not None and t.kind == "op" and t.text in ("+", "-", "!", "^", "&", "<-"):
            self.next()
            return Node("unary", (t.text, self.parse_unary()), t.line)
        if t is not None and t.kind == "op" and t.text == "*":
            self.next()
            return Node("unary", ("*", self.parse_unary()), t.line)
        return self.parse_primary()

    def parse_operand(self) -> Node:
        t = self.peek()
        if t is None:
            raise SyntaxError("unexpected end of expression")
        line = t.line
        if t.kind == "int":
            self.next()
            return Node("lit", (_int_value(t.text),), line)
        if t.kind in ("float", "imag", "char"):
            self.next()
            return Node("lit", (t.text,), line)
        if t.kind == "string":
            self.next()
            return Node("lit", (string_value(t),), line)
        if t.text == "(" and t.kind == "op":
            self.next()
            inner = self.parse_expr()
            self.expect(")")
            return Node("paren", (inner,), line)
        if t.text == "func":
            self.next()
            self.skip_balanced()  # parameters
            self.parse_result_type()
            if self.at("{"):
                self.skip_balanced()
                return Node("funclit", (), line)
            return Node("type", ("func",), line)
        if t.text in ("[", "map", "struct", "interface", "chan") or (t.text == "*" and t.kind == "op"):
            return Node("type", (self.parse_type(),), line)
        if t.kind == "ident":
            self.next()
            return Node("ident", (t.text,), line)
        raise SyntaxError(f"line {line}: unexpected {t.text!r}")

    def parse_primary(self) -> Node:
        x = self.parse_operand()
        while True:
            t = self.peek()
            if t is None or t.kind != "op":
                return x
            if t.text == ".":
                self.next()
                if self.at("("):  # type assertion
                    self.next()
                    if self.at("type"):
                        self.next()
                    else:
                        self.parse_type()
                    self.expect(")")
                    x = Node("assert", (x,), t.line)
                else:
                    x = Node("sel", (x, self.next().text), t.line)
            elif t.text == "(":
                self.next()
                args: list[Node] = []
                ellipsis = False
                while not self.at(")"):
                    args.append(self.parse_expr())
                    if self.at("..."):
                        self.next()
                        ellipsis = True
                    if self.at(","):
                        self.next()
                self.expect(")")
                x = Node("call", (x, args, ellipsis), t.line)
            elif t.text == "[":
                self.next()
                parts: list[Node | None] = [None]
                while not self.at("]"):
                    if self.at(":"):
                        self.next()
                        parts.append(None)
                    else:
                        parts[-1] = self.parse_expr()
                self.expect("]")
                x = Node("index", (x, parts[0]), t.line) if len(parts) == 1 else Node("slice", (x,), t.line)
            elif t.text == "{" and self._is_type_like(x):
                x = Node("composite", (_type_text(x), self.parse_elements()), t.line)
            else:
                return x

    @staticmethod
    def _is_type_like(x: Node) -> bool:
        if x.kind == "type":
            return True
        if x.kind == "ident":
            return True
        return x.kind == "sel" and x.args[0].kind == "ident"

    def parse_elements(self) -> list[tuple[Node | None, Node]]:
        """`{ [key:] value, ... }` with elided `{...}` values allowed."""
        self.expect("{")
        elems: list[tuple[Node | None, Node]] = []
        while not self.at("}"):
            if self.at(";"):  # never inserted inside a literal unless a line ends oddly
                self.next()
                continue
            first = self._element_value()
            if self.at(":"):
                self.next()
                elems.append((first, self._element_value()))
            else:
                elems.append((None, first))
            if self.at(","):
                self.next()
        self.expect("}")
        return elems

    def _element_value(self) -> Node:
        if self.at("{"):
            t = self.peek()
            return Node("composite", (None, self.parse_elements()), t.line if t else 0)
        return self.parse_expr()


def _type_text(x: Node) -> str:
    if x.kind == "type":
        return x.args[0]
    if x.kind == "ident":
        return x.args[0]
    return f"{x.args[0].args[0]}.{x.args[1]}"


# --------------------------------------------------------------------------------------------- packages


@dataclass
class FuncDecl:
    name: str
    file: "GoFile"
    params: list[tuple[str, str, bool]]  # name, type, variadic
    result: str
    body: tuple[int, int] | None  # token range inside the braces


@dataclass
class VarDecl:
    name: str
    file: "GoFile"
    expr: tuple[int, int] | None
    index: int = 0  # position in a multi-name spec


@dataclass
class GoFile:
    path: str
    package: "Package"
    toks: list[Tok]
    imports: dict[str, str] = field(default_factory=dict)  # local name -> import path


@dataclass
class Package:
    path: str  # repository-relative directory
    funcs: dict[str, FuncDecl] = field(default_factory=dict)
    vars: dict[str, VarDecl] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)


def _statement_end(toks: list[Tok], i: int, end: int) -> int:
    """Index of the `;` ending the statement that starts at i (at bracket depth 0)."""
    depth = 0
    while i < end:
        t = toks[i]
        if t.kind == "op":
            if t.text in _OPEN:
                depth += 1
            elif t.text in (")", "]", "}"):
                depth -= 1
                if depth < 0:
                    return i
            elif t.text == ";" and depth == 0:
                return i
        i += 1
    return end


def _matching(toks: list[Tok], i: int) -> int:
    """Index of the bracket closing the one at i."""
    depth = 0
    while True:
        t = toks[i]
        if t.kind == "op" and t.text in _OPEN:
            depth += 1
        elif t.kind == "op" and t.text in (")", "]", "}"):
            depth -= 1
            if depth == 0:
                return i
        i += 1


def _parse_params(toks: list[Tok], start: int, end: int) -> list[tuple[str, str, bool]]:
    """Parameter list between parentheses: [(name, type, variadic)], Go's `a, b T` grouping resolved."""
    groups: list[list[Tok]] = [[]]
    depth = 0
    for t in toks[start:end]:
        if t.kind == "op" and t.text in _OPEN:
            depth += 1
        elif t.kind == "op" and t.text in (")", "]", "}"):
            depth -= 1
        if t.kind == "op" and t.text == "," and depth == 0:
            groups.append([])
        else:
            groups[-1].append(t)
    groups = [g for g in groups if g]
    named = any(len(g) >= 2 and g[0].kind == "ident" and g[1].text not in (".",) for g in groups)
    params: list[tuple[str, str, bool]] = []
    pending: list[str] = []
    for g in groups:
        if named and len(g) == 1:
            pending.append(g[0].text)
            continue
        if named:
            name, type_toks = g[0].text, g[1:]
        else:
            name, type_toks = "_", g
        variadic = bool(type_toks) and type_toks[0].text == "..."
        type_text = "".join(t.text for t in (type_toks[1:] if variadic else type_toks))
        for p in pending:
            params.append((p, type_text, False))
        pending = []
        params.append((name, type_text, variadic))
    for p in pending:
        params.append((p, "", False))
    return params


def index_file(gofile: GoFile) -> None:
    """Record a file's imports, functions and package-level variables/constants in its package."""
    toks, i, n = gofile.toks, 0, len(gofile.toks)
    pkg = gofile.package
    while i < n:
        t = toks[i]
        if t.text == ";":
            i += 1
            continue
        if t.kind == "ident" and t.text == "import":
            end = _matching(toks, i + 1) if toks[i + 1].text == "(" else _statement_end(toks, i, n)
            j = i + 1 + (toks[i + 1].text == "(")
            while j < end:
                if toks[j].kind == "string":
                    path = string_value(toks[j])
                    alias = toks[j - 1].text if toks[j - 1].kind == "ident" or toks[j - 1].text == "." else None
                    if alias in (None, "import"):
                        parts = path.split("/")
                        alias = parts[-1] if not re.fullmatch(r"v\d+", parts[-1]) else parts[-2]
                    gofile.imports[alias] = path
                j += 1
            i = end + 1
        elif t.kind == "ident" and t.text == "func":
            j = i + 1
            method = toks[j].text == "("
            if method:
                j = _matching(toks, j) + 1
            name = toks[j].text
            j += 1
            if toks[j].text == "[":  # type parameters
                j = _matching(toks, j) + 1
            pend = _matching(toks, j)
            params = _parse_params(toks, j + 1, pend)
            p = Parser(toks, pend + 1)
            result = p.parse_result_type()
            j = p.i
            body = None
            if j < n and toks[j].text == "{":
                close = _matching(toks, j)
                body = (j + 1, close)
                j = close + 1
            if not method:
                pkg.funcs[name] = FuncDecl(name, gofile, params, result, body)
            i = j
        elif t.kind == "ident" and t.text in ("var", "const"):
            if toks[i + 1].text == "(":
                close = _matching(toks, i + 1)
                j = i + 2
                while j < close:
                    if toks[j].text == ";":
                        j += 1
                        continue
                    end = _statement_end(toks, j, close)
                    _index_spec(gofile, j, end)
                    j = end + 1
                i = close + 1
            else:
                end = _statement_end(toks, i + 1, n)
                _index_spec(gofile, i + 1, end)
                i = end + 1
        else:  # package, type
            if t.kind == "ident" and t.text == "type" and toks[i + 1].text == "(":
                i = _matching(toks, i + 1) + 1
            else:
                i = _statement_end(toks, i, n) + 1


def _index_spec(gofile: GoFile, start: int, end: int) -> None:
    toks = gofile.toks
    names: list[str] = []
    j = start
    while j < end and toks[j].kind == "ident":
        names.append(toks[j].text)
        j += 1
        if j < end and toks[j].text == ",":
            j += 1
        else:
            break
    eq = next((k for k in range(j, end) if toks[k].text == "="), None)
    for idx, name in enumerate(names):
        gofile.package.vars[name] = VarDecl(name, gofile, (eq + 1, end) if eq is not None else None, idx)


# --------------------------------------------------------------------------------------------- values


class Opaque:
    """A value the interpreter does not model (a function, a validator, a runtime value)."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __repr__(self) -> str:
        return f"<{self.what}>"

    def __deepcopy__(self, memo: dict) -> "Opaque":
        return self


@dataclass
class Sym:
    """A qualified identifier from outside the provider (schema.TypeString, time.Minute)."""
    name: str

    def __deepcopy__(self, memo: dict) -> "Sym":
        return self


class GoStruct(dict):
    """A struct value: field name -> value, with its type's name (schema.Schema, schema.Resource)."""

    def __init__(self, type_name: str, fields: dict[str, Any] | None = None) -> None:
        super().__init__(fields or {})
        self.type_name = type_name

    def __deepcopy__(self, memo: dict) -> "GoStruct":
        return GoStruct(self.type_name, {k: copy.deepcopy(v, memo) for k, v in self.items()})


class GoMap(dict):
    """A map value."""

    def __deepcopy__(self, memo: dict) -> "GoMap":
        return GoMap({k: copy.deepcopy(v, memo) for k, v in self.items()})


@dataclass
class FuncRef:
    decl: FuncDecl


class Return(Exception):
    def __init__(self, value: Any) -> None:
        self.value = value


def _base_type(type_text: str) -> str:
    return type_text.lstrip("*&")


def _elem_type(type_text: str | None) -> str | None:
    """The element type of a map/slice/array type text, for elided composite literals."""
    if not type_text:
        return None
    t = _base_type(type_text)
    if t.startswith("map["):
        depth = 0
        for k, ch in enumerate(t):
            if ch == "[":
                depth += 1
            elif ch == "]":
                depth -= 1
                if depth == 0:
                    return t[k + 1:]
    m = re.match(r"\[[^\]]*\](.*)", t)
    return m.group(1) if m else None


# --------------------------------------------------------------------------------------------- interpreter


class Interpreter:
    """Evaluates schema-building Go code of the provider."""

    def __init__(self, tree: GitTree, provider: Provider = PROVIDERS["google"]) -> None:
        self.tree = tree
        self.provider = provider
        self.packages: dict[str, Package] = {}
        self.warnings: list[str] = []
        self.depth = 0
        tpg = f"{provider.name}/tpgresource"
        self.builtins: dict[str, Callable[..., Any]] = {
            f"{tpg}.MergeSchemas": self._merge_schemas,
            f"{tpg}.DatasourceSchemaFromResourceSchema": self._datasource_schema,
            f"{tpg}.FixDatasourceSchemaFlags": self._fix_flags,
            f"{tpg}.AddRequiredFieldsToSchema": lambda s, *k: self._fix_flags(s, True, *k),
            f"{tpg}.AddOptionalFieldsToSchema": lambda s, *k: self._fix_flags(s, False, *k),
            f"{tpg}.DeleteFieldsFromSchema": self._delete_fields,
        }

    # packages --------------------------------------------------------------------------------------------
    def package(self, path: str) -> Package:
        if path not in self.packages:
            pkg = Package(path)
            self.packages[path] = pkg
            for name in self.tree.list_dir(path):
                if name.endswith(".go") and not name.endswith("_test.go"):
                    gofile = GoFile(f"{path}/{name}", pkg, tokenize(self.tree.read(f"{path}/{name}")))
                    index_file(gofile)
        return self.packages[path]

    def resolve_package(self, gofile: GoFile, alias: str) -> str | None:
        path = gofile.imports.get(alias)
        if path and path.startswith(self.provider.module):
            return path[len(self.provider.module):]
        return None

    def package_member(self, pkg_path: str, name: str) -> Any:
        pkg = self.package(pkg_path)
        if name in pkg.funcs:
            return FuncRef(pkg.funcs[name])
        if name in pkg.vars:
            if name not in pkg.cache:
                decl = pkg.vars[name]
                pkg.cache[name] = Opaque(f"recursive {name}")
                if decl.expr is None:
                    value: Any = None
                else:
                    exprs = Parser(decl.file.toks, *decl.expr).parse_expr_list()
                    value = self.eval(exprs[min(decl.index, len(exprs) - 1)], decl.file, [{}])
                pkg.cache[name] = value
            return copy.deepcopy(pkg.cache[name])
        return Sym(f"{pkg_path}.{name}")

    # expressions -----------------------------------------------------------------------------------------
    def lookup(self, name: str, gofile: GoFile, scopes: list[dict[str, Any]]) -> Any:
        for scope in reversed(scopes):
            if name in scope:
                return scope[name]
        if name in ("true", "false"):
            return name == "true"
        if name == "nil":
            return None
        pkg = gofile.package
        if name in pkg.funcs or name in pkg.vars:
            return self.package_member(pkg.path, name)
        if name == "make":
            return "make"
        return Sym(name)

    def eval(self, node: Node, gofile: GoFile, scopes: list[dict[str, Any]], type_hint: str | None = None) -> Any:
        kind, a = node.kind, node.args
        if kind == "lit":
            return a[0]
        if kind == "paren":
            return self.eval(a[0], gofile, scopes, type_hint)
        if kind == "ident":
            return self.lookup(a[0], gofile, scopes)
        if kind == "sel":
            x, name = a
            if x.kind == "ident" and not any(x.args[0] in s for s in scopes):
                pkg_path = self.resolve_package(gofile, x.args[0])
                if pkg_path is not None:
                    return self.package_member(pkg_path, name)
                if x.args[0] in gofile.imports:
                    return Sym(f"{x.args[0]}.{name}")
            value = self.eval(x, gofile, scopes)
            if isinstance(value, GoStruct):
                return value.get(name)
            return Opaque(f"field {name}")
        if kind == "unary":
            op, x = a
            value = self.eval(x, gofile, scopes, type_hint)
            if op == "-" and isinstance(value, int):
                return -value
            if op == "!" and isinstance(value, bool):
                return not value
            if op in ("&", "*", "+"):
                return value
            return Opaque(f"unary {op}")
        if kind == "binary":
            op, x, y = a
            left, right = self.eval(x, gofile, scopes), self.eval(y, gofile, scopes)
            if isinstance(left, int) and isinstance(right, int) and not isinstance(left, bool):
                ops = {"+": lambda p, q: p + q, "-": lambda p, q: p - q, "*": lambda p, q: p * q,
                       "<<": lambda p, q: p << q}
                if op in ops:
                    return ops[op](left, right)
            return Opaque(f"binary {op}")
        if kind == "composite":
            return self.eval_composite(node, gofile, scopes, type_hint)
        if kind == "call":
            return self.eval_call(node, gofile, scopes)
        if kind == "index":
            x, idx = a
            value = self.eval(x, gofile, scopes)
            key = self.eval(idx, gofile, scopes) if idx is not None else None
            if isinstance(value, (GoMap, dict)) and isinstance(key, str):
                return value.get(key)
            if isinstance(value, list) and isinstance(key, int) and 0 <= key < len(value):
                return value[key]
            return Opaque("index")
        if kind in ("funclit", "assert", "slice", "type"):
            return Opaque(kind)
        raise ValueError(f"unknown node {kind}")

    def eval_composite(self, node: Node, gofile: GoFile, scopes: list[dict[str, Any]], type_hint: str | None) -> Any:
        type_text, elems = node.args
        type_text = type_text or type_hint or "?"
        base = _base_type(type_text)
        if base.startswith("map["):
            sub = _elem_type(base)
            result = GoMap()
            for key, value in elems:
                k = self.eval(key, gofile, scopes) if key is not None else None
                result[k if isinstance(k, str) else repr(k)] = self.eval(value, gofile, scopes, sub)
            return result
        if base.startswith("["):
            sub = _elem_type(base)
            return [self.eval(value, gofile, scopes, sub) for _, value in elems]
        struct = GoStruct(base)
        for key, value in elems:
            if key is not None and key.kind == "ident":
                struct[key.args[0]] = self.eval(value, gofile, scopes, _FIELD_TYPES.get((base, key.args[0])))
        return struct

    def eval_call(self, node: Node, gofile: GoFile, scopes: list[dict[str, Any]]) -> Any:
        fn_node, arg_nodes, ellipsis = node.args
        fn = self.eval(fn_node, gofile, scopes)
        if fn == "make":
            return GoMap() if arg_nodes and arg_nodes[0].kind == "type" and "map[" in arg_nodes[0].args[0] else []
        if isinstance(fn, Sym) and fn.name in ("delete",):
            target = self.eval(arg_nodes[0], gofile, scopes)
            key = self.eval(arg_nodes[1], gofile, scopes)
            if isinstance(target, dict):
                target.pop(key, None)
            return None
        if isinstance(fn, FuncRef) and f"{fn.decl.file.package.path}.{fn.decl.name}" in self.builtins:
            fn = Sym(f"{fn.decl.file.package.path}.{fn.decl.name}")
        if isinstance(fn, Sym) and fn.name in self.builtins:
            args = [self.eval(x, gofile, scopes) for x in arg_nodes]
            if ellipsis and args and isinstance(args[-1], list):
                args = args[:-1] + args[-1]
            return self.builtins[fn.name](*args)
        if isinstance(fn, FuncRef):
            decl = fn.decl
            if not _builds_schema(decl):
                return Opaque(f"call {decl.name}")
            args = [self.eval(x, gofile, scopes, decl.params[min(k, len(decl.params) - 1)][1] if decl.params else None)
                    for k, x in enumerate(arg_nodes)]
            return self.call(decl, args, ellipsis)
        return Opaque("call")

    def call(self, decl: FuncDecl, args: list[Any], ellipsis: bool = False) -> Any:
        """Run a function's body with its parameters bound."""
        if decl.body is None:
            return Opaque(f"bodiless {decl.name}")
        if self.depth > 60:
            raise RecursionError(f"schema recursion too deep at {decl.name}")
        scope: dict[str, Any] = {}
        for k, (name, _type, variadic) in enumerate(decl.params):
            if variadic:
                scope[name] = args[k] if ellipsis else args[k:]
            else:
                scope[name] = args[k] if k < len(args) else None
        self.depth += 1
        try:
            self.exec_block(decl.file, *decl.body, [scope], decl)
        except Return as r:
            return r.value
        finally:
            self.depth -= 1
        return None

    # statements ------------------------------------------------------------------------------------------
    def exec_block(self, gofile: GoFile, start: int, end: int, scopes: list[dict[str, Any]], decl: FuncDecl) -> None:
        toks = gofile.toks
        i = start
        scopes = scopes + [{}]
        while i < end:
            if toks[i].text == ";":
                i += 1
                continue
            stop = _statement_end(toks, i, end)
            self.exec_statement(gofile, i, stop, scopes, decl)
            i = stop + 1

    def exec_statement(self, gofile: GoFile, i: int, stop: int, scopes: list[dict[str, Any]], decl: FuncDecl) -> None:
        toks = gofile.toks
        first = toks[i]
        if first.kind == "ident" and first.text == "return":
            if i + 1 >= stop:
                raise Return(None)
            raise Return(self.eval(Parser(toks, i + 1, stop).parse_expr_list()[0], gofile, scopes))
        if first.kind == "ident" and first.text in ("if", "for", "switch", "select", "go", "defer", "goto") \
                or first.text == "{":
            if "Schema" in "".join(t.text for t in toks[i:stop]):
                self.warnings.append(f"{gofile.path}:{first.line}: skipped `{first.text}` statement in "
                                     f"{decl.name} (mentions Schema)")
            return
        if first.kind == "ident" and first.text in ("var", "const"):
            eq = next((k for k in range(i, stop) if toks[k].text == "="), None)
            name = toks[i + 1].text
            if eq is None:
                scopes[-1][name] = None
            else:
                scopes[-1][name] = self.eval(Parser(toks, eq + 1, stop).parse_expr_list()[0], gofile, scopes)
            return
        depth, assign = 0, None
        for k in range(i, stop):
            t = toks[k]
            if t.kind == "op" and t.text in _OPEN:
                depth += 1
            elif t.kind == "op" and t.text in (")", "]", "}"):
                depth -= 1
            elif depth == 0 and t.kind == "op" and t.text in ("=", ":="):
                assign = k
                break
            elif depth == 0 and t.kind == "op" and t.text.endswith("=") and t.text not in ("==", "!=", "<=", ">="):
                return  # op-assignment: not schema building
        if assign is None:
            if toks[stop - 1].text in ("++", "--"):
                return
            expr = Parser(toks, i, stop).parse_expr()
            if expr.kind == "call":
                self.eval(expr, gofile, scopes)
            return
        targets = Parser(toks, i, assign).parse_expr_list()
        values = Parser(toks, assign + 1, stop).parse_expr_list()
        evaluated = [self.eval(v, gofile, scopes) for v in values]
        for k, target in enumerate(targets):
            value = evaluated[k] if k < len(evaluated) else Opaque("multi-value")
            self.assign(target, value, toks[assign].text == ":=", gofile, scopes)

    def assign(self, target: Node, value: Any, define: bool, gofile: GoFile, scopes: list[dict[str, Any]]) -> None:
        if target.kind == "ident":
            name = target.args[0]
            if name == "_":
                return
            if not define:
                for scope in reversed(scopes):
                    if name in scope:
                        scope[name] = value
                        return
            scopes[-1][name] = value
        elif target.kind == "index":
            container = self.eval(target.args[0], gofile, scopes)
            key = self.eval(target.args[1], gofile, scopes)
            if isinstance(container, dict) and isinstance(key, str):
                container[key] = value
        elif target.kind == "sel":
            container = self.eval(target.args[0], gofile, scopes)
            if isinstance(container, GoStruct):
                container[target.args[1]] = value

    # provider helpers ------------------------------------------------------------------------------------
    @staticmethod
    def _merge_schemas(a: Any, b: Any) -> GoMap:
        merged = GoMap()
        for part in (a, b):
            if not isinstance(part, dict):
                raise TypeError(f"MergeSchemas of {part!r}")
            merged.update(copy.deepcopy(part))
        return merged

    def _datasource_schema(self, rs: Any) -> GoMap:
        if not isinstance(rs, dict):
            raise TypeError(f"DatasourceSchemaFromResourceSchema of {rs!r}")
        ds = GoMap()
        for k, v in rs.items():
            dv = GoStruct("schema.Schema", {"Computed": True, "Type": v.get("Type")})
            elem = v.get("Elem")
            if isinstance(elem, GoStruct) and _is_resource(elem):
                dv["Elem"] = GoStruct("schema.Resource", {"Schema": self._datasource_schema(elem.get("Schema"))})
            else:
                dv["Elem"] = copy.deepcopy(elem)
            ds[k] = dv
        return ds

    @staticmethod
    def _fix_flags(schema: Any, required: bool, *keys: Any) -> None:
        for key in keys:
            entry = schema[key]
            entry["Computed"] = False
            entry["Optional"] = not required
            entry["Required"] = required

    @staticmethod
    def _delete_fields(schema: Any, *keys: Any) -> None:
        for key in keys:
            schema.pop(key, None)


_FIELD_TYPES = {("schema.Resource", "Schema"): "map[string]*schema.Schema"}


def _builds_schema(decl: FuncDecl) -> bool:
    """Whether a function is worth interpreting: it returns, or fills in, schema values."""
    if re.search(r"schema\.(Resource|Schema)\b", decl.result):
        return True
    return any("map[string]*schema.Schema" in t or t == "*schema.Resource" for _, t, _ in decl.params) \
        and decl.result == ""


def _is_resource(value: Any) -> bool:
    return isinstance(value, GoStruct) and (value.type_name.endswith("schema.Resource") or "Schema" in value)


# --------------------------------------------------------------------------------------------- conversion


_TYPE_NAMES = {"TypeString": "string", "TypeInt": "number", "TypeFloat": "number", "TypeBool": "bool",
               "TypeList": "list", "TypeSet": "set", "TypeMap": "map"}


def _sym(value: Any) -> str:
    if isinstance(value, Sym):
        return value.name.rsplit(".", 1)[-1]
    return ""


def core_schema(schema_map: Any, where: str) -> dict[str, Any]:
    """The Terraform configuration schema of a map[string]*schema.Schema (terraform-plugin-sdk/v2 rules)."""
    if not isinstance(schema_map, dict):
        raise ValueError(f"{where}: schema is not a map literal the extractor can follow ({schema_map!r})")
    attributes: dict[str, Any] = {}
    blocks: dict[str, Any] = {}
    for name in sorted(schema_map):
        s = schema_map[name]
        path = f"{where}.{name}"
        if not isinstance(s, GoStruct):
            raise ValueError(f"{path}: not a schema.Schema value ({s!r})")
        type_name = _TYPE_NAMES.get(_sym(s.get("Type")))
        if type_name is None:
            raise ValueError(f"{path}: unknown Type {s.get('Type')!r}")
        elem = s.get("Elem")
        if isinstance(elem, Opaque) or (isinstance(elem, Sym) and not _sym(elem).startswith("Type")) \
                or not (elem is None or isinstance(elem, (GoStruct, Sym))):
            raise ValueError(f"{path}: Elem could not be evaluated ({elem!r})")
        required, optional, computed = (bool(s.get(f) is True) for f in ("Required", "Optional", "Computed"))
        config_mode = _sym(s.get("ConfigMode"))
        is_resource = _is_resource(elem)
        as_block = (is_resource and type_name != "map" and config_mode != "SchemaConfigModeAttr"
                    and (config_mode == "SchemaConfigModeBlock" or not (computed and not optional)))
        if not as_block:
            attr: dict[str, Any] = {"type": type_name, "required": required, "optional": optional,
                                    "computed": computed}
            if s.get("Deprecated"):
                attr["deprecated"] = True
            attributes[name] = attr
            continue
        min_items = s.get("MinItems") if isinstance(s.get("MinItems"), int) else 0
        max_items = s.get("MaxItems") if isinstance(s.get("MaxItems"), int) else 0
        if required and min_items == 0:
            min_items = 1
        if optional and min_items > 0:
            min_items = 0
        if computed and not optional:
            min_items = max_items = 0
        block: dict[str, Any] = {"nesting": type_name, "min_items": min_items, "max_items": max_items,
                                 "schema": core_schema(elem.get("Schema"), path)}
        if s.get("Deprecated"):
            block["deprecated"] = True
        blocks[name] = block
    return {"attributes": attributes, "blocks": blocks}


def resource_schema(resource: Any, where: str) -> dict[str, Any]:
    """A resource's or data source's schema with the implicit `id` attribute and `timeouts` block."""
    if not _is_resource(resource):
        raise ValueError(f"{where}: constructor did not yield a schema.Resource ({resource!r})")
    result = core_schema(resource.get("Schema"), where)
    result["attributes"].setdefault("id", {"type": "string", "required": False, "optional": True, "computed": True})
    timeouts = resource.get("Timeouts")
    if isinstance(timeouts, GoStruct) and "timeouts" not in result["attributes"] \
            and "timeouts" not in result["blocks"]:
        keys = [k.lower() for k in ("Create", "Read", "Update", "Delete", "Default") if timeouts.get(k) is not None]
        result["blocks"]["timeouts"] = {
            "nesting": "single", "min_items": 0, "max_items": 1,
            "schema": {"attributes": {k: {"type": "string", "required": False, "optional": True, "computed": False}
                                      for k in keys}, "blocks": {}}}
    return result


# --------------------------------------------------------------------------------------------- provider maps


def provider_maps(interp: Interpreter) -> tuple[dict[str, tuple[GoFile, Node]], dict[str, tuple[GoFile, Node]]]:
    """The provider's resource and data source maps: type name -> (file, constructor expression)."""
    pkg = interp.package(interp.provider.provider_dir)

    def merged(func_name: str) -> list[str]:
        decl = pkg.funcs[func_name]
        if decl.body is None:
            raise ValueError(f"{func_name} has no body")
        toks = decl.file.toks
        k = next(j for j in range(*decl.body) if toks[j].text == "mergeResourceMaps")
        return _idents_until_close(toks, k + 1)

    def entries(var_name: str) -> dict[str, tuple[GoFile, Node]]:
        decl = pkg.vars[var_name]
        node = Parser(decl.file.toks, *decl.expr).parse_expr()
        if node.kind != "composite":
            raise ValueError(f"{var_name} is not a map literal")
        return {key.args[0]: (decl.file, value) for key, value in node.args[1] if key is not None
                and key.kind == "lit"}

    resources: dict[str, tuple[GoFile, Node]] = {}
    data_sources: dict[str, tuple[GoFile, Node]] = {}
    for var in merged("ResourceMapWithErrors"):
        resources.update(entries(var))
    for var in merged("DatasourceMapWithErrors"):
        data_sources.update(entries(var))
    return resources, data_sources


def _idents_until_close(toks: list[Tok], open_index: int) -> list[str]:
    close = _matching(toks, open_index)
    return [t.text for t in toks[open_index + 1:close] if t.kind == "ident"]


# --------------------------------------------------------------------------------------------- main


def read_types(path: Path) -> list[tuple[str, str]]:
    """types.txt: lines `resource TYPE` or `data TYPE`; `#` starts a comment."""
    result = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in ("resource", "data"):
            raise SystemExit(f"{path}:{number}: expected `resource TYPE` or `data TYPE`, got {raw!r}")
        result.append((parts[0], parts[1]))
    return result


def extract(git_dir: str, ref: str, types: list[tuple[str, str]],
            provider: Provider = PROVIDERS["google"]) -> tuple[dict[str, Any], list[str]]:
    """The schema document for `types` of `provider`, and the interpreter's warnings."""
    if not re.fullmatch(r"v\d+\.\d+\.\d+", ref):
        raise SystemExit(f"--ref must be a release tag such as v6.50.0 (the version is taken from it), not {ref!r}")
    tree = GitTree(git_dir, ref)
    try:
        go_mod = tree.read("go.mod")
        module = re.search(r"^module\s+(\S+)", go_mod, re.MULTILINE)
        if not module or module.group(1) + "/" != provider.module:
            raise SystemExit(f"{git_dir} at {ref} is module {module.group(1) if module else '?'}, not "
                             f"{provider.module.rstrip('/')}: pass the git directory of {provider.source}'s source "
                             f"(or the matching --provider)")
        interp = Interpreter(tree, provider)
        resources, data_sources = provider_maps(interp)
        out: dict[str, Any] = {"provider": provider.source, "version": ref.lstrip("v"), "ref": ref,
                               "commit": tree.commit, "resources": {}, "data_sources": {}}
        missing = []
        for kind, name in types:
            table = resources if kind == "resource" else data_sources
            if name not in table:
                missing.append(f"{kind} {name}")
                continue
            gofile, node = table[name]
            value = interp.eval(node, gofile, [{}])
            key = "resources" if kind == "resource" else "data_sources"
            out[key][name] = resource_schema(value, name)
        if missing:
            raise SystemExit(f"not in {provider.source}'s resource/data source maps at {ref}: {', '.join(missing)}")
        out["resources"] = dict(sorted(out["resources"].items()))
        out["data_sources"] = dict(sorted(out["data_sources"].items()))
        return out, interp.warnings
    finally:
        tree.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--provider", choices=sorted(PROVIDERS), default="google",
                        help="hashicorp/google or hashicorp/google-beta (default: %(default)s)")
    parser.add_argument("--git-dir", required=True,
                        help="git directory of hashicorp/terraform-provider-google (or -google-beta)")
    parser.add_argument("--ref", required=True, help="release tag, e.g. v6.50.0")
    parser.add_argument("--types", type=Path,
                        help="types to extract (default: types.txt for google, types-beta.txt for google-beta)")
    parser.add_argument("--out-dir", type=Path, default=HERE, help="where <provider>-<version>.json goes")
    args = parser.parse_args(argv)
    provider = PROVIDERS[args.provider]
    document, warnings = extract(args.git_dir, args.ref, read_types(args.types or provider.types_file), provider)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    out = args.out_dir / provider.output_name(document["version"])
    for stale in args.out_dir.glob(f"{provider.name}-*.json"):
        if provider.owns(stale) and stale != out:
            stale.unlink()
            print(f"removed {stale}", file=sys.stderr)
    out.write_text(json.dumps(document, indent=1, sort_keys=False) + "\n")
    print(f"wrote {out} ({len(document['resources'])} resources, {len(document['data_sources'])} data sources, "
          f"{out.stat().st_size} bytes) from {args.ref} ({document['commit']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
