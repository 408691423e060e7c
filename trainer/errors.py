"""The one way an exception becomes one line for a person (a log line, a CLI error)."""

from __future__ import annotations

_LIMIT = 300


def one_line(error: BaseException, limit: int = _LIMIT) -> str:
    """`Type: message`, the message's whitespace collapsed and cut to `limit` characters.

    For exceptions that are not ours (TensorFlow, TFX, YAML...): our own errors
    are already one line naming the file or setting, and are printed as they are.
    """
    text = " ".join((getattr(error, "strerror", None) or str(error)).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception of `error`'s cause (or context) chain.

    A context hidden by `raise ... from None` is not followed: the error raised
    there is the one meant for a person.
    """
    seen = {id(error)}
    while (inner := _inner(error)) is not None and id(inner) not in seen:
        seen.add(id(inner))
        error = inner
    return error


def _inner(error: BaseException) -> BaseException | None:
    if error.__cause__ is not None:
        return error.__cause__
    return None if error.__suppress_context__ else error.__context__
