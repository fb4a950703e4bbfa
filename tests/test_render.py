"""How an `NlcError` is shown: ``file:line:col: error: message``, the line, a caret, a hint."""

from __future__ import annotations

import pytest

from nlc.errors import NlcError, Span, did_you_mean
from nlc.syntax import parse


def render_parse_error(text: str) -> str:
    with pytest.raises(NlcError) as info:
        parse(text, "t.nl")
    return info.value.render()


def test_render_layout():
    err = NlcError("bad thing", Span(2, 3, 2, 6), hint="do this", path="f.nl",
                   source="line one\nab cde fg\n")
    assert err.render() == "f.nl:2:3: error: bad thing\n  ab cde fg\n    ^^^\n  hint: do this"
    assert str(err) == err.render()


def test_render_without_location():
    assert NlcError("gone", path="f.nl").render() == "f.nl: error: gone"
    assert NlcError("gone", hint="h").render() == "<spec>: error: gone\n  hint: h"


def test_render_multiline_span_gets_one_caret():
    err = NlcError("m", Span(1, 2, 3, 1), path="f", source="abc\ndef\nghi")
    assert err.render().splitlines()[2] == "   ^"


def test_render_span_past_line_end_is_clamped():
    err = NlcError("m", Span(1, 3, 1, 50), path="f", source="abc\n")
    assert err.render().splitlines()[2] == "    ^"


def test_render_long_line_is_windowed():
    source = "x" * 500 + "$" + "y" * 500
    err = NlcError("m", Span(1, 501, 1, 502), path="f", source=source)
    _, shown, caret = err.render().splitlines()
    assert len(shown) <= 2 + 160
    assert shown[caret.index("^")] == "$"


def test_render_long_span_on_a_long_line_stays_in_the_window():
    """A 100,000-character span (a chain of unary minus) printed a caret line as long."""
    source = "a = " + "-" * 100_000 + "x"
    err = NlcError("m", Span(1, 5, 1, 100_005), path="f", source=source)
    _, shown, caret = err.render().splitlines()
    assert len(caret) <= len(shown) <= 2 + 160


def test_located_keeps_the_first_path():
    err = NlcError("m", Span(1, 1, 1, 2)).located("a.nl", "x")
    assert err.located("b.nl", "y").path == "a.nl"


def test_line_numbers_count_newlines_only():
    # form feed and NEL are line breaks to str.splitlines(), not to the lexer
    shown = render_parse_error("layer A {\n  # a\x0cb \x85 c\n  dims d = $\n}\n").splitlines()
    assert shown[0] == "t.nl:3:12: error: unexpected character '$'"
    assert shown[1] == "    dims d = $"
    assert shown[2] == "             ^"


def test_crlf_source():
    shown = render_parse_error("layer A {\r\n  dims d = $\r\n}\r\n").splitlines()
    assert shown[:3] == ["t.nl:2:12: error: unexpected character '$'", "    dims d = $",
                         "             ^"]


def test_tabs_keep_the_caret_under_the_column():
    shown = render_parse_error("layer A {\n\tdims d = $\n}\n").splitlines()
    assert shown[0].startswith("t.nl:2:11:")
    assert shown[2].index("^") == shown[1].index("$")


def test_unexpected_eof_points_after_the_last_token():
    shown = render_parse_error("layer A {\n  dims d = 3\n\n\n").splitlines()
    assert shown[0] == "t.nl:2:13: error: unexpected end of file"
    assert shown[1] == "    dims d = 3"
    assert shown[2] == "              ^"
    assert shown[3].startswith("  hint: the '{' at 1:9 is not closed: add '}'; expected ")


def test_did_you_mean():
    assert did_you_mean("d_kk", ["d_k", "d_v", "d_model"]) == "did you mean 'd_k'?"
    assert did_you_mean("zzz", ["d_k"]) is None
