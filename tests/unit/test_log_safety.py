"""No client text reaches a log unbounded or with raw control characters."""

from __future__ import annotations

from llamagrid.supervisor.children import MAX_LINE_CHARS, printable


def test_a_childs_line_is_forwarded_with_its_control_characters_escaped() -> None:
    line = printable(b"user said \x1b[2J\x1b[31mred\r\x07 and\ta tab\n")
    assert line == "user said \\x1b[2J\\x1b[31mred\\x0d\\x07 and\ta tab"
    assert not any(ord(c) < 0x20 and c != "\t" for c in line)


def test_a_childs_long_line_is_cut_and_says_how_much_is_left_out() -> None:
    line = printable(b"x" * (MAX_LINE_CHARS + 10))
    assert line == "x" * MAX_LINE_CHARS + "... (10 more characters)"


def test_a_childs_invalid_utf8_is_replaced_not_passed_on() -> None:
    assert printable(b"caf\xc3 \xff\n") == "caf\ufffd \ufffd"
