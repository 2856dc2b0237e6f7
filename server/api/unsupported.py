"""Content a request may send that this text-only server can't use, for every API's schema:
validating one is a 400 that names its type."""

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, field_validator


class Unsupported(BaseModel):
    """A content part or block of a type the API's other models don't take (images, audio,
    files, documents). `what` names such things in the API's own words."""

    model_config = ConfigDict(extra="allow")
    type: str
    what: ClassVar[str] = "content parts"  # how the API calls them; not a field a client can set

    @field_validator("type")
    @classmethod
    def _refuse(cls, kind: str):  # on the field, so that the error names `....type`
        raise ValueError(f"{cls.what} of type {kind!r} are not supported; this model reads text only")
