"""The one way a config is declared: a frozen pydantic model that refuses unknown keys and wrong values.

    class Config(Settings):
        lr: float = Field(0.01, gt=0)
        decay: Literal["cosine", "step"] = "cosine"

    Config(lr=-1)              # UserError: Config: lr = -1: expected a number greater than 0
    Config(decay="linear")     # UserError: Config: decay = 'linear': expected 'cosine' or 'step'
    config.replace(lr=0.1)     # a validated copy
    config.to_dict()           # {field: value}, in declaration order
    Config.field_names()

Values are checked strictly (no `True` for an int, no "3" for a number): the CLI, YAML files and `--set` parsing
hand over typed values. The CLI options and MLproject parameters of a stage are checked against these fields by
the test suite (tests/test_entrypoints.py).
"""

from __future__ import annotations

import warnings
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from imagenet_transfer.errors import UserError

# pydantic warns that a field named like an ABCMeta method (`register`) shadows it; configs never use ABC registration
warnings.filterwarnings("ignore", message=r'Field name "register" .* shadows an attribute', category=UserWarning)


class Settings(BaseModel):
    """Base of every config: frozen, unknown keys refused, strict types; invalid input raises UserError."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, validate_default=False)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise UserError(explain(type(self), err)) from None

    def replace(self, **changes: Any):
        """A validated copy with `changes`."""
        return type(self)(**{**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in type(self).model_fields}

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(cls.model_fields)


def explain(model: type[BaseModel], err: ValidationError) -> str:
    """`Model: field = value: expected …` for each invalid field (the allowed values where there is a list; the
    valid keys for an unknown one)."""
    errors = err.errors(include_url=False)
    inner = {e["loc"][0] for e in errors if len(e["loc"]) > 1}  # a bad item says more than the length it leaves
    lines = []
    for error in errors:
        loc = error["loc"]
        if error["type"] == "too_short" and loc and loc[0] in inner:
            continue
        field = ".".join(str(part) for part in loc)
        if error["type"] == "extra_forbidden":
            lines.append(f"unknown key {field!r} (valid: {', '.join(model.model_fields)})")
            continue
        message = error["msg"].removeprefix("Value error, ")
        message = message.replace("Input should be ", "expected ").replace("Input ", "expected ")
        message = message.replace("Field required", "expected a value")
        if not loc:  # a rule over several fields: its message names them
            lines.append(message)
            continue
        shown = f" = {error['input']!r}" if "input" in error and error["type"] != "missing" else ""
        lines.append(f"{field}{shown}: {message}")
    return f"{model.__name__}: " + "; ".join(lines)
