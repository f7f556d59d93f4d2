"""What every settings group shares: where it reads from, and the comma-separated list.

A group is a :class:`SettingsGroup`: it reads its own fields from ``CXR_<FIELD>``
variables (or ``.env``), ignores the others', and is frozen once read. A list-valued
setting is a :data:`CommaList`: written ``a,b,c`` in the environment (a JSON list is not
needed), split once when the group is read, blank items dropped, each item then
validated as its type says: ``CommaList[Annotated[ResultDestination,
from_text(parse_result_destination)]]`` parses each item with its domain's parser.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeAlias, TypeVar

from pydantic import BeforeValidator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["CommaList", "SettingsGroup", "comma_separated", "from_text"]

T = TypeVar("T")


class SettingsGroup(BaseSettings):
    """A group of settings of one concern, read from ``CXR_<FIELD>`` variables."""

    model_config = SettingsConfigDict(
        env_prefix="CXR_",
        env_file=".env",
        extra="ignore",
        validate_default=True,
        frozen=True,
    )


def comma_separated(value: Any) -> Any:
    """``"a, b,,c"`` as ``["a", "b", "c"]``; a list or tuple (from code) passes as given."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


#: A list setting, written comma-separated in the environment.
CommaList: TypeAlias = Annotated[list[T], NoDecode, BeforeValidator(comma_separated)]


def from_text(parse: Callable[[str], Any]) -> BeforeValidator:
    """An item's validator: ``parse`` applied to its written form (a value given already
    parsed, from code, passes as it is)."""
    return BeforeValidator(lambda value: parse(value) if isinstance(value, str) else value)
