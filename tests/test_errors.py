"""The one error formatter: `Type: message` on one line, cut, and the cause a chain began with."""

from trainer.errors import one_line, root_cause


def test_a_multi_line_message_becomes_one_line_with_its_type():
    assert one_line(ValueError("bad\n   value\n")) == "ValueError: bad value"
    assert one_line(KeyError()) == "KeyError"


def test_an_os_error_says_what_the_system_said():
    error = FileNotFoundError(2, "No such file or directory", "/x/y")
    assert one_line(error) == "FileNotFoundError: No such file or directory"


def test_a_long_message_is_cut():
    text = one_line(RuntimeError("x" * 1000), limit=20)
    assert text == "RuntimeError: " + "x" * 17 + "..."


def test_root_cause_follows_causes_and_contexts():
    try:
        try:
            raise OSError("disk")
        except OSError as inner:
            raise RuntimeError("step failed") from inner
    except RuntimeError as outer:
        assert str(root_cause(outer)) == "disk"
    lone = ValueError("alone")
    assert root_cause(lone) is lone


def test_root_cause_stops_where_a_context_was_hidden_with_from_none():
    try:
        try:
            {}["posix", "system"]
        except KeyError:
            raise ValueError("forbidden global posix.system") from None
    except ValueError as refused:
        try:
            raise RuntimeError("Trainer failed") from refused
        except RuntimeError as outer:
            assert str(root_cause(outer)) == "forbidden global posix.system"
