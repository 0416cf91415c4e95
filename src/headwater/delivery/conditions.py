"""The `where` condition language of destination filters, a subset of Segment's FQL,
compiled into closures over the decoded message (never `eval`):

- fields: `event`, `type`, `userId`, `properties.total`, `context.app.name`; after a dot, a
  name with spaces or dots is double-quoted: `properties."order id"`. A missing field (or one
  under something that is not an object) is null.
- values: `"strings"` (JSON backslash escapes), numbers (`3`, `-1.5`, `2e3`), `true`, `false`,
  `null`.
- comparisons: `=` (or `==`), `!=`, `<`, `<=`, `>`, `>=`, and `field in ["a", "b", 3]`.
  `=` and `!=` compare JSON values: `1 = 1.0`, `true` is not `1`, `field = null` is true for a
  missing field. `<`, `<=`, `>`, `>=` are true only between two numbers or two strings.
- functions: `contains(field, "x")` (a substring of a string, or an element of an array),
  `match(field, "Order *")` (a glob on the whole string: `*` any text, `?` one character;
  case-sensitive), `exists(field)` (present and not null).
- `not`, `and`, `or` (binding in that order) and parentheses. Keywords and function names are
  case-insensitive; field names and strings are not.

Examples:

    properties.total > 100 and properties.currency = "EUR"
    event in ["Order Completed", "Order Refunded"] or match(event, "Checkout *")
    not exists(context.traits.email) or contains(properties.tags, "vip")
    properties."order id" != null and not (context.app.name = "Web" or userId = null)
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any, Final, NamedTuple

import msgspec

Message = dict[str, Any]
Predicate = Callable[[Message], bool]
Getter = Callable[[Message], Any]

_NUMBERS: Final = (int, float)  # never bool: `type(v) in _NUMBERS`


class ConditionError(ValueError):
    """An invalid `where` condition; `position` is the (1-based) character where it is wrong."""

    def __init__(self, reason: str, position: int, prefix: str = "") -> None:
        super().__init__(f"{prefix}{reason} at character {position}")
        self.reason = reason
        self.position = position


def compile_condition(where: str) -> Predicate:
    """The predicate of condition `where` (raises `ConditionError`)."""
    return _Parser(where).parse()


def _eq(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value (1 = 1.0), booleans only equal to booleans."""
    ta, tb = type(a), type(b)
    if ta is not tb:
        return ta in _NUMBERS and tb in _NUMBERS and bool(a == b)
    if ta is list:
        return len(a) == len(b) and all(map(_eq, a, b))
    if ta is dict:
        return bool(a.keys() == b.keys()) and all(_eq(v, b[k]) for k, v in a.items())
    return bool(a == b)


_ORDERING: Final = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_FLIPPED: Final = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "=": "=", "!=": "!="}


def _compare(op: str, a: Any, b: Any) -> bool:
    if op == "=":
        return _eq(a, b)
    if op == "!=":
        return not _eq(a, b)
    ta, tb = type(a), type(b)
    ordered = (ta is str and tb is str) or (ta in _NUMBERS and tb in _NUMBERS)
    return ordered and bool(_ORDERING[op](a, b))


class _Path(NamedTuple):
    segments: tuple[str, ...]


Operand = Any  # a _Path, or a literal: str, int, float, bool or None


def _getter(path: _Path) -> Getter:
    first, *rest = path.segments
    if not rest:
        return lambda m: m.get(first)

    def get(m: Message) -> Any:
        v = m.get(first)
        for segment in rest:
            if type(v) is not dict:
                return None
            v = v.get(segment)
        return v

    return get


def _comparison(op: str, left: Operand, right: Operand) -> Predicate:
    if not isinstance(left, _Path):
        if not isinstance(right, _Path):
            result = _compare(op, left, right)
            return lambda m: result
        left, right, op = right, left, _FLIPPED[op]
    get = _getter(left)
    if isinstance(right, _Path):
        get_right = _getter(right)
        return lambda m: _compare(op, get(m), get_right(m))
    lit = right
    if op in ("=", "!="):
        if lit is None or type(lit) is bool:
            eq: Predicate = lambda m: get(m) is lit  # noqa: E731
        elif type(lit) is str:
            eq = lambda m: get(m) == lit  # noqa: E731
        else:
            eq = lambda m: type(v := get(m)) in _NUMBERS and bool(v == lit)  # noqa: E731
        return eq if op == "=" else _negation(eq)
    compare = _ORDERING[op]
    # what `lit` can be ordered with: nothing for true, false and null
    kinds = (str,) if type(lit) is str else _NUMBERS if type(lit) in _NUMBERS else ()
    return lambda m: type(v := get(m)) in kinds and bool(compare(v, lit))


def _membership(left: Operand, values: list[Any]) -> Predicate:
    if not isinstance(left, _Path):
        result = any(_eq(left, v) for v in values)
        return lambda m: result
    get = _getter(left)
    keys = frozenset((type(v) is bool, v) for v in values)  # 1 = 1.0, but true is not 1
    return lambda m: type(v := get(m)) not in (list, dict) and (type(v) is bool, v) in keys


def _all(parts: list[Predicate]) -> Predicate:
    """`and` of a chain, flat (a long chain must not nest closures deeper than Python can)."""
    if len(parts) <= 2:
        a, b = parts[0], parts[-1]
        return a if len(parts) == 1 else lambda m: a(m) and b(m)

    def every(m: Message) -> bool:
        for p in parts:  # noqa: SIM110 - faster than all() on a generator
            if not p(m):
                return False
        return True

    return every


def _any(parts: list[Predicate]) -> Predicate:
    if len(parts) <= 2:
        a, b = parts[0], parts[-1]
        return a if len(parts) == 1 else lambda m: a(m) or b(m)

    def some(m: Message) -> bool:
        for p in parts:  # noqa: SIM110
            if p(m):
                return True
        return False

    return some


def _negation(a: Predicate) -> Predicate:
    return lambda m: not a(m)


def _contains(get: Getter, arg: Any) -> Predicate:
    def contains(m: Message) -> bool:
        v = get(m)
        if type(v) is str:
            return type(arg) is str and arg in v
        return type(v) is list and any(_eq(x, arg) for x in v)

    return contains


def _match(get: Getter, pattern: str) -> Predicate:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    fullmatch = re.compile(regex, re.DOTALL).fullmatch
    return lambda m: type(v := get(m)) is str and fullmatch(v) is not None


class _Token(NamedTuple):
    kind: str  # name, str, num, op, ( ) [ ] , . end
    value: Any
    pos: int  # 1-based


_NUMBER: Final = re.compile(r"-?\d+(\.\d+)?([eE][+-]?\d+)?")
_NAME: Final = re.compile(r"[\w$@-]+")
_OPERATORS: Final = ("==", "!=", "<=", ">=", "=", "<", ">")
_CONSTANTS: Final[dict[str, Any]] = {"true": True, "false": False, "null": None}
_KEYWORDS: Final = frozenset({"and", "or", "not", "in", *_CONSTANTS})
_FUNCTIONS: Final = ("contains", "exists", "match")
_MAX_DEPTH: Final = 50  # of `not` and parentheses: the parser and the closures recurse


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                raise ConditionError("unterminated string", i + 1)
            try:
                tokens.append(_Token("str", msgspec.json.decode(text[i : j + 1]), i + 1))
            except msgspec.DecodeError:
                raise ConditionError("invalid escape in string", i + 1) from None
            i = j + 1
        elif c == "'":
            raise ConditionError("strings are double-quoted, not '", i + 1)
        elif tokens and tokens[-1].kind == "." and (m := _NAME.match(text, i)):
            tokens.append(_Token("name", m.group(), i + 1))  # after a dot: `properties.2fa`
            i = m.end()
        elif c.isdigit() or (c == "-" and text[i + 1 : i + 2].isdigit()):
            m = _NUMBER.match(text, i)
            assert m is not None
            if (tail := _NAME.match(text, m.end())) or text.startswith(".", m.end()):
                end = tail.end() if tail else m.end() + 1
                raise ConditionError(f"invalid number {text[i:end]!r}", i + 1)
            number = float(m.group()) if m.group(1) or m.group(2) else int(m.group())
            tokens.append(_Token("num", number, i + 1))
            i = m.end()
        elif c.isalpha() or c in "_$@":
            m = _NAME.match(text, i)
            assert m is not None
            tokens.append(_Token("name", m.group(), i + 1))
            i = m.end()
        elif op := next((o for o in _OPERATORS if text.startswith(o, i)), None):
            tokens.append(_Token("op", "=" if op == "==" else op, i + 1))
            i += len(op)
        elif c in "()[],.":
            tokens.append(_Token(c, c, i + 1))
            i += 1
        else:
            raise ConditionError(f"unexpected character {c!r}", i + 1)
    tokens.append(_Token("end", None, n + 1))
    return tokens


def _error(expected: str, tok: _Token) -> ConditionError:
    """`expected ...`, and what was found instead."""
    if tok.kind == "end":
        found = "the end of the condition"
    elif tok.kind in ("str", "num"):
        found = f"the value {msgspec.json.encode(tok.value).decode()}"
    else:
        found = repr(tok.value)
    return ConditionError(f"expected {expected}, found {found}", tok.pos)


class _Parser:
    """Recursive descent: or := and ('or' and)*; and := unary ('and' unary)*;
    unary := 'not' unary | '(' or ')' | function | operand (op operand | 'in' list)."""

    def __init__(self, text: str) -> None:
        self.text, self.tokens, self.i, self.depth = text, _tokenize(text), 0, 0

    def parse(self) -> Predicate:
        if self.tokens[0].kind == "end":
            raise ConditionError("empty condition", 1 + len(self.text))
        predicate = self._or()
        self._expect("end", "'and', 'or' or the end")
        return predicate

    def _next(self) -> _Token:
        self.i += 1
        return self.tokens[self.i - 1]

    def _keyword(self) -> str | None:
        tok = self.tokens[self.i]
        return tok.value.lower() if tok.kind == "name" else None

    def _expect(self, kind: str, wanted: str) -> None:
        if (tok := self._next()).kind != kind:
            raise _error(wanted, tok)

    def _or(self) -> Predicate:
        parts = [self._and()]
        while self._keyword() == "or":
            self.i += 1
            parts.append(self._and())
        return _any(parts)

    def _and(self) -> Predicate:
        parts = [self._unary()]
        while self._keyword() == "and":
            self.i += 1
            parts.append(self._unary())
        return _all(parts)

    def _unary(self) -> Predicate:
        tok, word = self.tokens[self.i], self._keyword()
        if word == "not" or tok.kind == "(":
            self.depth += 1
            if self.depth > _MAX_DEPTH:
                reason = f"more than {_MAX_DEPTH} levels of 'not' and parentheses"
                raise ConditionError(reason, tok.pos)
        if word == "not":
            self.i += 1
            inner = _negation(self._unary())
            self.depth -= 1
            return inner
        if tok.kind == "(":
            self.i += 1
            inner = self._or()
            self.depth -= 1
            self._expect(")", f"')' to close the '(' at character {tok.pos}")
            return inner
        if word is not None and word not in _KEYWORDS and self.tokens[self.i + 1].kind == "(":
            return self._function(tok)
        left = self._operand()
        if self._keyword() == "in":
            self.i += 1
            return _membership(left, self._list())
        if (op := self._next()).kind != "op":
            field = self.text[tok.pos - 1 : op.pos - 1].strip()
            raise _error(f"a comparison (=, !=, <, <=, >, >=, in) after {field!r}", op)
        return _comparison(op.value, left, self._operand())

    def _operand(self, value_only: bool = False) -> Operand:
        tok = self._next()
        word = tok.value.lower() if tok.kind == "name" else None
        if tok.kind in ("str", "num"):
            return tok.value
        if word in _CONSTANTS:
            return _CONSTANTS[word]
        if word is None or word in _KEYWORDS:
            raise _error("a field or a value", tok)
        if value_only:
            raise _error("a value (a string, a number, true, false or null)", tok)
        segments = [tok.value]
        while self.tokens[self.i].kind == ".":
            self.i += 1
            if (seg := self._next()).kind not in ("name", "str"):
                raise _error("a field name after '.'", seg)
            segments.append(seg.value)
        return _Path(tuple(segments))

    def _list(self) -> list[Any]:
        self._expect("[", "a list like [\"a\", 1] after 'in'")
        if self.tokens[self.i].kind == "]":
            self.i += 1
            return []
        values = [self._operand(value_only=True)]
        while (tok := self._next()).kind == ",":
            values.append(self._operand(value_only=True))
        if tok.kind != "]":
            raise _error("',' or ']' in the list", tok)
        return values

    def _function(self, tok: _Token) -> Predicate:
        name = tok.value.lower()
        if name not in _FUNCTIONS:
            known = ", ".join(_FUNCTIONS)
            raise ConditionError(f"unknown function {tok.value!r} (known: {known})", tok.pos)
        self.i += 2
        first = self.tokens[self.i]
        path = self._operand()
        if not isinstance(path, _Path):
            raise _error(f"a field as the first argument of {name}()", first)
        if name == "exists":
            self._expect(")", "')' after the field of exists()")
            get = _getter(path)
            return lambda m: get(m) is not None
        self._expect(",", f"',' and a value after the field of {name}()")
        arg_tok = self.tokens[self.i]
        arg = self._operand(value_only=True)
        self._expect(")", f"')' after the arguments of {name}()")
        if name == "contains":
            return _contains(_getter(path), arg)
        if type(arg) is not str:
            raise _error("a string pattern for match()", arg_tok)
        return _match(_getter(path), arg)
