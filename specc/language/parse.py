"""Parse: spec text -> syntax tree (specc.language.ast), or a SpecError at the first syntax error."""

from __future__ import annotations

import functools
import re
from pathlib import Path

from lark import Lark, Token, Transformer_NonRecursive, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from specc.language import ast, codes
from specc.language.diagnostics import Diagnostic, SpecError, UsageError
from specc.language.source import Source, Span

_OPEN = {"LPAR": "RPAR", "LSQB": "RSQB"}
_CLOSE = {"RPAR", "RSQB"}

# What the user types, for each terminal lark may name in an error.
_TERMINAL_TEXT = {
    "NAME": "a name", "NUMBER": "a number", "STRING": "a string", "_NL": "end of line",
    "$END": "end of input",
}
_VALUE_START = {"NAME", "NUMBER", "STRING", "LPAR", "LSQB", "MINUS"}
_OPERATORS = {"PLUS", "MINUS", "STAR", "SLASH", "_PIPE"}


def grammar_path() -> Path:
    """The grammar file: inside the installed package, or at the repository's top level."""
    package = Path(__file__).resolve().parent.parent  # specc/, this file being specc/language/parse.py
    for candidate in (package / "grammars" / "specc.lark", package.parent / "grammars" / "specc.lark"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("specc.lark not found beside the package")  # an install bug


class _Brackets:
    """Post-lexer: drops the newlines inside ( ) and [ ], where statements cannot end."""

    always_accept = ("_NL",)

    def process(self, stream):
        depth = 0
        for tok in stream:
            if tok.type in _OPEN:
                depth += 1
            elif tok.type in _CLOSE and depth:
                depth -= 1
            if tok.type == "_NL" and depth:
                continue
            yield tok


def _tokens_before(parser: Lark, text: str, pos: int) -> list[Token]:
    """The significant tokens that end at or before `pos` (for error messages)."""
    out = []
    try:
        for tok in parser.lex(text, dont_ignore=False):
            if tok.start_pos >= pos:
                break
            if tok.type != "_NL":
                out.append(tok)
    except UnexpectedInput:
        pass
    return out


def _unclosed(tokens: list[Token]) -> list[Token]:
    """Opening brackets and braces left open by these tokens, outermost first."""
    stack: list[Token] = []
    pairs = {"RPAR": "LPAR", "RSQB": "LSQB", "RBRACE": "LBRACE"}
    for tok in tokens:
        if tok.type in ("LPAR", "LSQB", "LBRACE"):
            stack.append(tok)
        elif tok.type in pairs and stack and stack[-1].type == pairs[tok.type]:
            stack.pop()
    return stack


@functools.cache
def _parser() -> Lark:
    return Lark(grammar_path().read_text(), parser="lalr", lexer="basic", postlex=_Brackets(),
                propagate_positions=True, maybe_placeholders=False)


def _unescape(body: str) -> str:
    """Decode the escapes a spec string may hold (never eval)."""
    out, i = [], 0
    table = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "r": "\r"}
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            out.append(table.get(nxt, "\\" + nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


class _ToAst(Transformer_NonRecursive):
    """lark tree -> specc.language.ast, one method per rule (lark's create_ast model)."""

    def __init__(self, source: Source):
        super().__init__()
        self.source = source

    def _span(self, meta) -> Span:
        return Span(self.source, meta.start_pos, meta.end_pos)

    def _tok(self, tok: Token) -> Span:
        return Span(self.source, tok.start_pos, tok.end_pos)

    # terminals
    def NAME(self, tok):
        return ast.Name(str(tok), self._tok(tok))

    def NUMBER(self, tok):
        text = str(tok)
        # A whole number of at most 308 digits stays exact; a longer one becomes a float (inf when it
        # is beyond float range), which check reports as too large, never an OverflowError.
        is_int = len(text) <= 308 and all(c.isdigit() for c in text)
        return ast.Number(int(text) if is_int else float(text), text, self._tok(tok))

    def STRING(self, tok):
        return ast.String(_unescape(str(tok)[1:-1]), self._tok(tok))

    # rules
    @v_args(meta=True)
    def start(self, meta, items):
        blocks = tuple(i for i in items if isinstance(i, ast.Block))
        commands = tuple(i for i in items if isinstance(i, ast.Command))
        return ast.SpecFile(blocks, self.source, commands)

    @v_args(meta=True)
    def command(self, meta, children):
        name, *args = children
        return ast.Command(name, tuple(args), self._span(meta))

    @v_args(meta=True)
    def section(self, meta, children):
        kind, name, *body = children
        return ast.Section(kind, name, tuple(body), self._span(meta))

    @v_args(meta=True)
    def block(self, meta, children):
        name, *body = children
        return ast.Block(name, tuple(body), self._span(meta))

    @v_args(meta=True)
    def assign(self, meta, children):
        target, value = children
        return ast.Assign(target, value, self._span(meta))

    @v_args(meta=True)
    def key_assign(self, meta, children):
        target, value = children
        return ast.KeyAssign(target, value, self._span(meta))

    @v_args(meta=True)
    def key(self, meta, children):
        return ast.Key(tuple(children), self._span(meta))

    @v_args(meta=True)
    def call_stmt(self, meta, children):
        return ast.CallStmt(children[0], self._span(meta))

    @v_args(meta=True)
    def call(self, meta, children):
        func, *rest = children
        args = tuple(c for c in rest if not isinstance(c, ast.Keyword))
        keywords = tuple(c for c in rest if isinstance(c, ast.Keyword))
        return ast.Call(func, args, keywords, self._span(meta))

    @v_args(meta=True)
    def keyword(self, meta, children):
        name, value = children
        return ast.Keyword(name, value, self._span(meta))

    def _binop(op):
        @v_args(meta=True)
        def method(self, meta, children):
            left, right = children
            return ast.BinOp(op, left, right, self._span(meta))
        return method

    add, sub, mul, div = _binop("+"), _binop("-"), _binop("*"), _binop("/")

    @v_args(meta=True)
    def neg(self, meta, children):
        return ast.Neg(children[0], self._span(meta))

    @v_args(meta=True)
    def pipe(self, meta, children):
        value, stage = children
        return ast.Pipe(value, stage, self._span(meta))

    def number(self, children):
        return children[0]

    string = name = number

    @v_args(meta=True)
    def typed(self, meta, children):
        name, type_ = children
        return ast.Typed(name, type_, self._span(meta))

    @v_args(meta=True)
    def list(self, meta, children):
        return ast.ListExpr(tuple(children), self._span(meta))

    @v_args(meta=True)
    def tuple(self, meta, children):
        return ast.TupleExpr(tuple(children), self._span(meta))


def _describe(tok: Token) -> str:
    if tok.type == "$END":
        return "end of input"
    if tok.type == "_NL":
        return "end of line"
    return f"'{tok}'"


def _expected(names, parser: Lark) -> str:
    names = set(names)
    words = []
    if _VALUE_START <= names:
        words.append("a value")
        names -= _VALUE_START
    if _OPERATORS <= names and len(names) > len(_OPERATORS):
        # After a complete value any operator could follow; name only what would close it.
        names -= _OPERATORS
    for name in sorted(names):
        if name in _TERMINAL_TEXT:
            words.append(_TERMINAL_TEXT[name])
            continue
        try:
            pattern = parser.get_terminal(name).pattern
        except KeyError:
            words.append(name)
            continue
        words.append(f"'{pattern.value}'" if pattern.type == "str" else name.lower())
    words = sorted(set(words), key=lambda w: (w.startswith("'"), w))
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


def _syntax_error(err: UnexpectedInput, source: Source, parser: Lark) -> Diagnostic:
    """lark's error as the user's diagnostic: a character no token starts with, the end of input
    inside something, or a token where another was expected (pointed at where it is missing)."""
    if isinstance(err, UnexpectedCharacters):
        return _bad_character(source, err.pos_in_stream)
    assert isinstance(err, UnexpectedToken)
    tok = err.token
    try:
        accepts = err.interactive_parser.accepts()
    except Exception:  # lark could not simulate the parse; fall back to its own list
        accepts = err.expected
    expected = _expected(accepts, parser)
    at_end = tok.type == "$END"
    before = _tokens_before(parser, source.text, len(source.text) if at_end else tok.start_pos)
    if at_end:
        at = before[-1].end_pos if before else 0
        notes = tuple(f"'{opener}' opened at line {source.line_of(opener.start_pos)} is not closed"
                      for opener in reversed(_unclosed(before)))
        return Diagnostic(codes.UNEXPECTED_END, f"unexpected end of input: expected {expected}",
                          Span(source, at, at), notes)
    return _bad_token(source, tok, accepts, expected, before)


def _bad_character(source: Source, pos: int) -> Diagnostic:
    """A character that cannot start any token (an opening '"' with no end: an unterminated string)."""
    ch = source.text[pos]
    if ch == '"':
        end = source.text.find("\n", pos)
        end = len(source.text) if end < 0 else end
        return Diagnostic(codes.UNTERMINATED_STRING, "unterminated string", Span(source, pos, end),
                          ("a string ends with '\"' on the same line",))
    notes = ()
    if ch == "'":
        notes = ('strings are written with double quotes: "..."',)
    elif ch in "/":
        notes = ("comments start with '#'",)
    shown = repr(ch)[1:-1] if not ch.isprintable() else ch
    quoted = f'"{shown}"' if ch == "'" else f"'{shown}'"
    return Diagnostic(codes.UNEXPECTED_CHARACTER, f"unexpected character {quoted}", Span(source, pos, pos + 1), notes)


def _bad_token(source: Source, tok, accepts, expected: str, before: list) -> Diagnostic:
    """An unexpected token, with the likely mistake named: a '{' on its own line or inside an unclosed
    block, a setting without '=', an unclosed bracket, a missing token (shown after the one before)."""
    found = _describe(tok)
    notes = []
    prev = before[-1] if before else None
    unclosed = _unclosed(before)
    if tok.type == "LBRACE" and prev is not None and prev.type == "NAME":
        if any(t.type == "LBRACE" for t in unclosed):
            opener = [t for t in unclosed if t.type == "LBRACE"][-1]
            return Diagnostic(codes.UNEXPECTED_TOKEN, f"unexpected '{{': the block opened at line "
                              f"{source.line_of(opener.start_pos)} is not closed",
                              Span(source, tok.start_pos, tok.end_pos), ("close it with '}' before this one",))
        if source.line_of(tok.start_pos) != source.line_of(prev.end_pos):
            return Diagnostic(codes.UNEXPECTED_TOKEN, f"'{{' must be on the same line as '{prev}'",
                              Span(source, tok.start_pos, tok.end_pos), (f"write `{prev} {{`",))
    if "EQUAL" in accepts and tok.type in ("NUMBER", "LSQB", "MINUS") and prev is not None and \
            prev.type == "NAME" and source.line_of(tok.start_pos) == source.line_of(prev.end_pos):
        # `batch 64`: a setting without its '='
        return Diagnostic(codes.UNEXPECTED_TOKEN, f"expected '=' after '{prev}', found {found}",
                          Span(source, tok.start_pos, tok.end_pos), (f"write `{prev} = {tok}`",))
    if unclosed and tok.type in ("LBRACE", "EQUAL", "COLON", "RBRACE") and unclosed[-1].type != "LBRACE":
        opener = unclosed[-1]
        notes.append(f"'{opener}' opened at line {source.line_of(opener.start_pos)}, column "
                     f"{source.column_of(opener.start_pos)} is not closed")
    elif unclosed and tok.type == "LBRACE":
        notes.append(f"the block opened at line {source.line_of(unclosed[-1].start_pos)} is not closed")
    if prev is not None and prev.type == "COLON" and len(before) > 1 and before[-2].type == "NAME" and \
            any(t.type == "LPAR" for t in unclosed):
        notes.append(f"arguments are written name=value: {before[-2]}=...")
    later_line = prev is not None and source.line_of(tok.start_pos) != source.line_of(prev.end_pos)
    if prev is not None and (tok.type == "_NL" or (later_line and "NAME" not in accepts)):
        # A missing token: point just after what came before it, not at the next line.
        where = "" if tok.type == "_NL" else f" on line {source.line_of(tok.start_pos)}"
        return Diagnostic(codes.UNEXPECTED_TOKEN, f"expected {expected} after '{prev}', found {found}{where}",
                          Span(source, prev.end_pos, prev.end_pos), tuple(notes))
    end = tok.end_pos if tok.end_pos is not None else tok.start_pos + len(str(tok))
    return Diagnostic(codes.UNEXPECTED_TOKEN, f"unexpected {found}: expected {expected}",
                      Span(source, tok.start_pos, end), tuple(notes))


_CODE_OUTSIDE_STRINGS = re.compile(r'"(?:[^"\\\n]|\\.)*"?|#[^\n]*|[^"#]+')


def _first_non_ascii(text: str) -> int | None:
    """Offset of the first non-ASCII character outside strings and comments, if any.
    (The lexer would stop there too, but the parser may fail on an earlier token first,
    as in `5e−3`, and then the message would blame the wrong thing.)"""
    if text.isascii():
        return None
    for m in _CODE_OUTSIDE_STRINGS.finditer(text):
        chunk = m.group()
        if chunk.startswith(('"', "#")) or chunk.isascii():
            continue
        for k, ch in enumerate(chunk):
            if not ch.isascii():
                return m.start() + k
    return None


def parse(source: Source) -> ast.SpecFile:
    """Parse a spec's text; raise SpecError at the first syntax error."""
    bad = _first_non_ascii(source.text)
    if bad is not None:
        ch = source.text[bad]
        notes = [f"specs are ASCII outside strings and comments; this is U+{ord(ch):04X}"]
        lookalike = {"\u2212": "-", "\u2013": "-", "\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'",
                     "\u00a0": "a space", "\u00d7": "*"}.get(ch)
        if lookalike:
            notes.append(f"did you mean '{lookalike}'?" if len(lookalike) == 1 else f"did you mean {lookalike}?")
        raise SpecError([Diagnostic(codes.UNEXPECTED_CHARACTER, f"unexpected character '{ch}'",
                                    Span(source, bad, bad + 1), tuple(notes))])
    parser = _parser()
    try:
        tree = parser.parse(source.text)
    except UnexpectedInput as err:
        raise SpecError([_syntax_error(err, source, parser)]) from None
    spec = _ToAst(source).transform(tree)
    # check walks expressions recursively, in the room made for this bound: bound the nesting here.
    for block in spec.blocks:
        for stmt in block.body:
            levels = ast.nesting(stmt)
            if levels > ast.MAX_DEPTH:
                note = "give parts of it names of their own" if block.name.id == "model" else None
                raise SpecError([too_deep(stmt, levels, note=note)])
    return spec


PUT_IN = "a param is put in where it is named, so its levels add to those around it"


def too_deep(stmt: ast.Stmt, levels: int, why: str = "", note: str | None = PUT_IN) -> Diagnostic:
    """E306 at a statement's value (or at a section nested too deeply)."""
    value = getattr(stmt, "value", None) or getattr(stmt, "call", stmt)
    return Diagnostic(codes.TOO_DEEP, f"the expression is nested too deeply{why}: {levels} levels, at most "
                      f"{ast.MAX_DEPTH}", value.span, (note,) if note else ())


_WRAP = "_ {\n_ = "


def parse_expr(source: Source, start: int = 0) -> ast.Expr:
    """Parse `source.text[start:]` as one expression (the value of a `--set key=value`)."""
    wrapped = Source(source.path, _WRAP + source.text[start:] + "\n}")
    delta = start - len(_WRAP)
    try:
        tree = parse(wrapped)
    except SpecError as err:
        moved = []
        for d in err.diagnostics:
            at = min(max(d.span.start + delta, start), len(source.text))
            end = min(max(d.span.end + delta, at), len(source.text))
            message = d.message.replace("end of line", "end of input").replace("'}'", "end of input")
            moved.append(Diagnostic(d.code, message, Span(source, at, end), ()))
        raise SpecError(moved) from None
    body = tree.blocks[0].body
    if len(body) != 1 or not isinstance(body[0], ast.Assign):
        raise SpecError([Diagnostic(codes.UNEXPECTED_TOKEN, "expected one value",
                                    Span(source, start, len(source.text)))])
    return _shift(body[0].value, source, delta)


def _shift(node, source: Source, delta: int):
    """A copy of a syntax tree with every span moved by `delta` into `source`."""
    return ast.rebuild(node, respan=lambda span: Span(source, span.start + delta, span.end + delta))


def read_source(path: str | Path) -> Source:
    """Read a spec file as text; a file that is not UTF-8 text is a spec error."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:  # no permission, a folder, a file gone since it was looked at
        raise UsageError(f"{path}: cannot read the spec file: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        source = Source(str(path), data.decode("utf-8", errors="replace"))
        raise SpecError([Diagnostic(codes.NOT_TEXT, "the file is not UTF-8 text",
                                    Span(source, err.start, err.start + 1))]) from None
    if "\x00" in text:
        source = Source(str(path), text.replace("\x00", "?"))
        pos = text.index("\x00")
        raise SpecError([Diagnostic(codes.NOT_TEXT, "the file is not text (it holds a NUL byte)",
                                    Span(source, pos, pos + 1))])
    return text_source(str(path), text)


def text_source(name: str, text: str) -> Source:
    """Spec text under a name (a file's path, `<string>`), as read_source makes it of a file's."""
    # A byte-order mark is invisible in an editor: drop it. Old Mac line endings (a lone CR)
    # become newlines, one character for one, so that offsets stay put.
    text = text.removeprefix("\ufeff")
    if "\r" in text:
        text = re.sub(r"\r(?!\n)", "\n", text)
    return Source(name, text)
