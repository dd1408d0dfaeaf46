"""Options several commands share, declared once: a decorator adds them to a command's signature and hands
the command one object built from their values."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

Result = TypeVar("Result")


def shared_options(
    name: str, options: dict[str, Any], build: Callable[..., Any]
) -> Callable[[Callable[..., Result]], Callable[..., Result]]:
    """Add `options` (parameter name -> Annotated type with a typer Option, and its default as
    `(annotation, default)`) to a command; the command receives `name=build(**their values)`."""

    def decorate(command: Callable[..., Result]) -> Callable[..., Result]:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != name]
        added = [
            inspect.Parameter(option, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
            for option, (annotation, default) in options.items()
        ]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Result:
            values = {option: kwargs.pop(option) for option in options}
            return command(*args, **kwargs, **{name: build(**values)})

        wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*_positional_first(own), *added]
        )
        wrapper.__annotations__ = {p.name: p.annotation for p in [*own, *added]}
        return wrapper

    return decorate


def _positional_first(parameters: list[inspect.Parameter]) -> list[inspect.Parameter]:
    # A signature lists positional parameters before keyword-only ones.
    return sorted(parameters, key=lambda p: p.kind)
