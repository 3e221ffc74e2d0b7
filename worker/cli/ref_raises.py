"""What a handler can raise and which events it sends itself, read from the code (ast).

A static walk from the handler through every call it can name: module functions, and
methods of objects whose class the annotations tell (``ctx: Context`` -> ``Context.guest``,
``guest = find_guest(...)`` -> ``Guest``). It finds ``raise SomeWorkerError(...)`` and
``notify(action, phase, ...)`` calls with literal names. Calls it cannot name (duck-typed
objects, libvirt itself) are not followed, so a list is what the code shows, not more.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from worker.errors import WorkerError

#: Packages whose functions are followed.
OURS = ("worker", "handlers")
PHASES = ("start", "end", "error", "progress")


@dataclass
class Found:
    """Error classes a function can raise and (action, phase) events it sends."""

    errors: set[type[WorkerError]] = field(default_factory=set)
    events: set[tuple[str, str]] = field(default_factory=set)

    def add(self, other: Found) -> None:
        """Union other into this."""
        self.errors |= other.errors
        self.events |= other.events


@dataclass(frozen=True)
class Instance:
    """A value whose class the annotations tell."""

    cls: type


def _ours(obj: Any) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return module.split(".")[0] in OURS


def _class_of(hint: Any) -> type | None:
    """The one class of ours a hint names (``Peers | None`` -> Peers)."""
    if isinstance(hint, type):
        return hint if _ours(hint) else None
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        classes = [c for c in map(_class_of, typing.get_args(hint)) if c is not None]
        return classes[0] if len(classes) == 1 else None
    return None


def _hints(obj: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(obj)
    except Exception:  # a hint that only type checkers can resolve: go without hints
        return {}


def _owner(fn: Callable[..., Any]) -> type | None:
    """The class a method is defined in, for ``self``."""
    parts = fn.__qualname__.split(".")
    if len(parts) < 2:
        return None
    found: Any = sys.modules[fn.__module__]
    for part in parts[:-1]:
        found = getattr(found, part, None)
    return found if isinstance(found, type) else None


class _Scope:
    """Names as one function sees them: locals with known classes, then its module."""

    def __init__(self, fn: Callable[..., Any], node: ast.AST) -> None:
        self.module = sys.modules[fn.__module__]
        self.locals: dict[str, Instance] = {}
        for name, hint in _hints(fn).items():
            cls = _class_of(hint)
            if cls is not None and name != "return":
                self.locals[name] = Instance(cls)
        owner = _owner(fn)
        if owner is not None:
            self.locals.setdefault("self", Instance(owner))

    def learn(self, node: ast.AST, walker: Walker) -> None:
        """Flow-insensitively: ``x = f(...)`` where f's return hint names a class of ours."""
        for sub in ast.walk(node):
            if (isinstance(sub, ast.Assign) and len(sub.targets) == 1
                    and isinstance(sub.targets[0], ast.Name) and isinstance(sub.value, ast.Call)):
                callee = walker.resolve(sub.value.func, self)
                if callable(callee) and not isinstance(callee, type):
                    cls = _class_of(_hints(callee).get("return"))
                    if cls is not None:
                        self.locals.setdefault(sub.targets[0].id, Instance(cls))


class Walker:
    """Follows calls from a function; each function is read once."""

    def __init__(self) -> None:
        self._memo: dict[Any, Found] = {}

    def function(self, fn: Callable[..., Any]) -> Found:
        """Everything reachable from fn."""
        fn = inspect.unwrap(fn)
        key = getattr(fn, "__code__", fn)
        if key in self._memo:
            return self._memo[key]
        self._memo[key] = found = Found()  # a recursion sees what is known so far
        if not _ours(fn):
            return found
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
        except (OSError, TypeError, SyntaxError):
            return found
        node = tree.body[0]
        scope = _Scope(fn, node)
        scope.learn(node, self)
        body = node.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) else [node]
        found.add(self._scan(body, scope))
        return found

    def resolve(self, expr: ast.expr, scope: _Scope) -> Any:
        """The object an expression names, an Instance, or None."""
        if isinstance(expr, ast.Name):
            if expr.id in scope.locals:
                return scope.locals[expr.id]
            found = getattr(scope.module, expr.id, None)
            return found if found is not None else getattr(builtins, expr.id, None)
        if isinstance(expr, ast.Attribute):
            base = self.resolve(expr.value, scope)
            if isinstance(base, types.ModuleType) or isinstance(base, type):
                return getattr(base, expr.attr, None)
            if isinstance(base, Instance):
                member = inspect.getattr_static(base.cls, expr.attr, None)
                if isinstance(member, property):
                    cls = _class_of(_hints(member.fget).get("return"))
                    return Instance(cls) if cls else None
                if isinstance(member, staticmethod | classmethod):
                    return member.__func__
                if inspect.isfunction(member):
                    return member
                cls = _class_of(_hints(base.cls).get(expr.attr))
                return Instance(cls) if cls else None
        return None

    def _scan(self, nodes: Iterable[ast.AST], scope: _Scope) -> Found:
        found = Found()
        for node in nodes:
            if isinstance(node, ast.Try):
                found.add(self._try(node, scope))
                continue
            if isinstance(node, ast.Raise) and node.exc is not None:
                target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                cls = self.resolve(target, scope)
                if isinstance(cls, type) and issubclass(cls, WorkerError):
                    found.errors.add(cls)
                elif inspect.isfunction(cls) and _ours(cls):
                    found.errors |= self._made(cls)  # raise translate(exc): what it returns
            if isinstance(node, ast.Call):
                found.add(self._call(node, scope))
            found.add(self._scan(ast.iter_child_nodes(node), scope))
        return found

    def _made(self, fn: Callable[..., Any]) -> set[type[WorkerError]]:
        """The error classes a function builds and returns (``return InstanceNotFound(u)``)."""
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(fn))))
        except (OSError, TypeError, SyntaxError):
            return set()
        scope = _Scope(fn, tree)
        made: set[type[WorkerError]] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Return) and isinstance(node.value, ast.Call):
                cls = self.resolve(node.value.func, scope)
                if isinstance(cls, type) and issubclass(cls, WorkerError):
                    made.add(cls)
        return made

    def _call(self, node: ast.Call, scope: _Scope) -> Found:
        found = Found()
        name = (node.func.attr if isinstance(node.func, ast.Attribute)
                else node.func.id if isinstance(node.func, ast.Name) else "")
        if name.endswith("notify"):
            texts = [a.value for a in node.args
                     if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if len(texts) >= 2 and texts[1] in PHASES:
                found.events.add((texts[0], texts[1]))
        callee = self.resolve(node.func, scope)
        if isinstance(callee, type):
            init = inspect.getattr_static(callee, "__init__", None)
            if _ours(callee) and inspect.isfunction(init) and not issubclass(callee, WorkerError):
                found.add(self.function(init))
        elif inspect.isfunction(callee) or inspect.ismethod(callee):
            found.add(self.function(callee))
        return found

    def _try(self, node: ast.Try, scope: _Scope) -> Found:
        inner = self._scan(node.body, scope)
        caught: list[type] = []
        for handler in node.handlers:
            reraises = any(isinstance(n, ast.Raise) and n.exc is None for n in ast.walk(handler))
            if reraises:
                continue
            if handler.type is None:
                caught.append(BaseException)
                continue
            kinds = (handler.type.elts if isinstance(handler.type, ast.Tuple)
                     else [handler.type])
            for kind in kinds:
                cls = self.resolve(kind, scope)
                if isinstance(cls, type):
                    caught.append(cls)
        inner.errors = {e for e in inner.errors if not issubclass(e, tuple(caught))}
        for part in (node.handlers, node.orelse, node.finalbody):
            inner.add(self._scan(part, scope))
        return inner
