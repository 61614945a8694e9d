"""Proof that a chat template prints message contents verbatim.

``PromptBuilder`` tokenizes a prompt segment by segment and must give exactly
the ids of the real template's rendering. If a template only ever prints a
content as it is, its rendering is the skeleton for the roles with the
contents in their places, and a turn need not render the template again. This
module proves that on the template's Jinja syntax tree, once per template;
anything it cannot prove keeps the per-turn render-and-compare.
"""

from __future__ import annotations

from jinja2 import nodes
from jinja2.exceptions import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

# What a template's values may carry, tracked through names (flow-insensitively:
# a name is everything ever assigned to it, so loops and branches need no care):
_MESSAGES = "messages"  # a list of messages (``messages``, a slice of it)
_MESSAGE = "message"  # one message dict
_CONTENT = "content"  # one message's content as it is (or, through ``a if c else b``, a plain value)
_TEXT = "text"  # a string made of contents and other strings (``+``, ``~``)
_NONE: frozenset[str] = frozenset()

# Tests whose answer is the same for every str: the placeholder's answer is the content's.
_TYPE_TESTS = frozenset({"string", "defined", "undefined", "none", "mapping", "sequence", "iterable",
                         "number", "integer", "float", "boolean"})  # fmt: skip
# Functions a template may call: none reads the clock or a random source (strftime_now, lipsum do).
_PURE_CALLS = frozenset({"raise_exception", "namespace", "range", "dict"})
# What the tokenizer's environment parses (transformers adds {% generation %},
# which we do not accept: a template using it fails to parse here).
_PARSER = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])


class _Unproven(Exception):
    """The template does something with a content other than printing it."""


def prints_contents_verbatim(source: str) -> bool:
    """Does the template only ever print message contents as they are?

    Proven on its syntax tree: every value derived from ``messages`` is
    tracked, and a content may only be printed (directly, joined by ``+`` or
    ``~``, or through ``trim``), assigned, or asked a type test; any other
    use (a condition, comparison, index, method, call argument, other filter,
    ``tojson`` of a message) is refused, as are macros, blocks, includes,
    autoescape changes and calls that are not pure. The control flow then
    does not depend on the contents, so the rendering is the skeleton for the
    roles with the contents in their places. Conservative: unknown syntax
    means unproven, and the builder keeps comparing every turn."""
    try:
        tree = _PARSER.parse(source)
        _ContentFlow().check(tree)
    except (TemplateError, _Unproven):
        return False
    return True


class _ContentFlow:
    """The content-flow check of one template (see ``prints_contents_verbatim``)."""

    def __init__(self) -> None:
        self.names: dict[str, frozenset[str]] = {"messages": frozenset({_MESSAGES})}
        self.changed = False

    def check(self, tree: nodes.Template) -> None:
        # Names gain kinds as assignments are seen; repeat until none does.
        self.changed = True
        while self.changed:
            self.changed = False
            self.body(tree.body, plain=True)

    # --- statements ---

    def body(self, statements: list[nodes.Node], *, plain: bool) -> None:
        for node in statements:
            self.statement(node, plain=plain)

    def statement(self, node: nodes.Node, *, plain: bool) -> None:
        if isinstance(node, nodes.Output):
            for child in node.nodes:
                kinds = self.expr(child)
                if kinds & {_MESSAGES, _MESSAGE} or (kinds and not plain):
                    raise _Unproven("a message printed whole, or a content printed outside the output")
        elif isinstance(node, nodes.If):
            self.clean(node.test)
            self.body(node.body, plain=plain)
            self.body(node.elif_, plain=plain)
            self.body(node.else_, plain=plain)
        elif isinstance(node, nodes.For):
            kinds = self.expr(node.iter)
            if node.recursive or kinds - {_MESSAGES}:
                raise _Unproven("a loop over a message or a content")
            self.bind(node.target, frozenset({_MESSAGE}) if kinds else _NONE)
            if node.test is not None:
                self.clean(node.test)
            self.body(node.body, plain=plain)
            self.body(node.else_, plain=plain)
        elif isinstance(node, nodes.Assign):
            self.bind(node.target, self.expr(node.node))
        elif isinstance(node, nodes.AssignBlock):  # {% set x %}...{% endset %}: captured, not output
            if node.filter is not None:
                self.clean(node.filter)
            self.body(node.body, plain=False)
            self.bind(node.target, _NONE)
        elif isinstance(node, nodes.With):
            for target, value in zip(node.targets, node.values, strict=True):
                self.bind(target, self.expr(value))
            self.body(node.body, plain=plain)
        elif isinstance(node, nodes.Scope):
            self.body(node.body, plain=plain)
        elif not isinstance(node, (nodes.Break, nodes.Continue)):
            raise _Unproven(type(node).__name__)  # macros, blocks, includes, autoescape, ...

    def bind(self, target: nodes.Node, kinds: frozenset[str]) -> None:
        if isinstance(target, nodes.Name):
            self.add(target.name, kinds)
        elif isinstance(target, nodes.NSRef):
            self.add(f"{target.name}.{target.attr}", kinds)
            if kinds:  # the namespace now holds one: only its attributes may be read
                self.add(target.name, frozenset({_MESSAGE}))
        elif kinds or not isinstance(target, nodes.Tuple):
            raise _Unproven("a message or content unpacked")

    def add(self, name: str, kinds: frozenset[str]) -> None:
        known = self.names.get(name, _NONE)
        if not kinds <= known:
            self.names[name] = known | kinds
            self.changed = True

    # --- expressions: what each may carry ---

    def clean(self, node: nodes.Node) -> None:
        if self.expr(node):
            raise _Unproven("a message or content used in a condition, call or operation")

    def expr(self, node: nodes.Node) -> frozenset[str]:
        if isinstance(node, (nodes.Const, nodes.TemplateData)):
            return _NONE
        if isinstance(node, nodes.Name):
            return self.names.get(node.name, _NONE)
        if isinstance(node, nodes.Getattr):
            return self.item(node.node, node.attr)
        if isinstance(node, nodes.Getitem):
            if isinstance(node.arg, nodes.Const):
                return self.item(node.node, node.arg.value)
            self.clean(node.arg)
            return self.item(node.node, node.arg if isinstance(node.arg, nodes.Slice) else None)
        if isinstance(node, (nodes.Add, nodes.Concat)):
            operands = [node.left, node.right] if isinstance(node, nodes.Add) else node.nodes
            kinds = frozenset().union(*(self.expr(n) for n in operands))
            if kinds & {_MESSAGES, _MESSAGE}:
                raise _Unproven("messages joined")
            return frozenset({_TEXT}) if kinds else _NONE
        if isinstance(node, nodes.CondExpr):
            self.clean(node.test)
            return self.expr(node.expr1) | (self.expr(node.expr2) if node.expr2 is not None else _NONE)
        if isinstance(node, nodes.Filter):
            return self.filtered(node)
        if isinstance(node, nodes.Test):
            self.arguments(node)
            if self.expr(node.node) and node.name not in _TYPE_TESTS:
                raise _Unproven(f"test {node.name} on a message or content")
            return _NONE
        if isinstance(node, nodes.Call):
            self.arguments(node)
            if isinstance(node.node, nodes.Name) and node.node.name in _PURE_CALLS and not self.expr(node.node):
                return _NONE
            if isinstance(node.node, nodes.Getattr):  # a method of a value that carries no content
                self.clean(node.node)
                return _NONE
            raise _Unproven("a call that is not known to be pure")
        if isinstance(node, (nodes.BinExpr, nodes.UnaryExpr, nodes.Compare, nodes.Slice, nodes.Tuple,
                             nodes.List, nodes.Dict, nodes.Pair, nodes.Operand)):  # fmt: skip
            for child in node.iter_child_nodes():
                self.clean(child)
            return _NONE
        raise _Unproven(type(node).__name__)

    def item(self, node: nodes.Node, key: object) -> frozenset[str]:
        """``node.key`` or ``node[key]`` (a str or int constant, a Slice, or
        None for any other index)."""
        kinds = self.expr(node)
        out: set[str] = set()
        if isinstance(node, nodes.Name) and isinstance(key, str):
            out |= self.names.get(f"{node.name}.{key}", _NONE)  # a namespace attribute
            if node.name == "loop" and key in ("previtem", "nextitem"):
                out.add(_MESSAGE)  # of any loop, to be safe
        if kinds & {_CONTENT, _TEXT}:
            raise _Unproven("a content indexed, or one of its methods used")
        if _MESSAGES in kinds:
            if isinstance(key, str):
                raise _Unproven("an attribute of the message list")
            out.add(_MESSAGES if isinstance(key, nodes.Slice) else _MESSAGE)
        if _MESSAGE in kinds:
            # Jinja falls back from item to attribute and back: message.items is the dict method.
            if not isinstance(key, str) or hasattr(dict, key):
                raise _Unproven("a message read by a computed key or a dict method")
            if key == "content":
                out.add(_CONTENT)
        return frozenset(out)

    def filtered(self, node: nodes.Filter) -> frozenset[str]:
        self.arguments(node)
        if node.name == "random":
            raise _Unproven("the random filter")
        kinds = self.expr(node.node) if node.node is not None else _NONE
        out: set[str] = set()
        if kinds & {_MESSAGE, _TEXT}:
            raise _Unproven(f"filter {node.name} on a message or joined content")
        if _MESSAGES in kinds:
            if node.name in ("first", "last"):
                out.add(_MESSAGE)
            elif node.name not in ("length", "count"):
                raise _Unproven(f"filter {node.name} on the messages")
        if _CONTENT in kinds:
            # trim: our contents are stripped already (str.strip, as Jinja's trim).
            if node.name != "trim" or node.args or node.kwargs:
                raise _Unproven(f"filter {node.name} on a content")
            out.add(_CONTENT)
        return frozenset(out)

    def arguments(self, node: nodes.Filter | nodes.Test | nodes.Call) -> None:
        for arg in (*node.args, *(k.value for k in node.kwargs), node.dyn_args, node.dyn_kwargs):
            if arg is not None:
                self.clean(arg)
