"""Request and response bodies. Field names are camelCase; unknown fields are rejected (422),
so a typo never silently drops data."""
from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal, NamedTuple
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, create_model

from aether_platform.models import JOB_STATUSES

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _storable(value: str) -> str:
    """PostgreSQL text and jsonb cannot hold NUL, and UTF-8 cannot hold lone surrogates (which
    JSON's \\uD800 escapes can produce): refuse both, with other control characters, as a 422."""
    if _CONTROL.search(value):
        raise ValueError("control characters are not allowed")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text (lone surrogate)") from None
    return value


# What _storable refuses, stated in the OpenAPI document (JSON Schema only; _storable stays the
# check and its message), so that clients and fuzzers know a control character is a 422.
_STORABLE_SCHEMA = Field(json_schema_extra={"pattern": r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"})
# No whitespace or control character around the @ and the dot. Spelled out rather than \s, whose
# meaning differs between Python, pydantic's Rust regex and the ECMA-262 regex of JSON Schema
# (\x85 and \ufeff): the document and the server accept exactly the same addresses.
_EMAIL_PART = r"[^@\s\x00-\x1f\x7f-\x9f\ufeff]+"

JobStatus = Literal[JOB_STATUSES]  # type: ignore[valid-type]
Title = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_storable), _STORABLE_SCHEMA]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_storable), _STORABLE_SCHEMA]
Phone = Annotated[str, StringConstraints(min_length=1, max_length=50), AfterValidator(_storable), _STORABLE_SCHEMA]
# A shape check, not deliverability: the CRM stores what the user typed.
Email = Annotated[str, StringConstraints(max_length=320, pattern=rf"^{_EMAIL_PART}@{_EMAIL_PART}\.{_EMAIL_PART}$"),
                  AfterValidator(_storable)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class JobCreate(_Body):
    account_id: UUID | None = Field(None, alias="accountId")
    title: Title
    status: JobStatus = "Open"


class _Patch(_Body):
    # At least one field; a field left out is unchanged. Fields that cannot be null are typed
    # without null (their default None is never validated), so `{"title": null}` is a 422.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, json_schema_extra={"minProperties": 1})


class JobPatch(_Patch):
    account_id: UUID | None = Field(None, alias="accountId")
    title: Title = None  # type: ignore[assignment]
    status: JobStatus = None  # type: ignore[assignment]


class AccountCreate(_Body):
    name: Name


class AccountPatch(_Patch):
    name: Name = None  # type: ignore[assignment]


class ContactCreate(_Body):
    account_id: UUID | None = Field(None, alias="accountId")
    name: Name
    email: Email | None = None
    phone: Phone | None = None


class ContactPatch(_Patch):
    account_id: UUID | None = Field(None, alias="accountId")
    name: Name = None  # type: ignore[assignment]
    email: Email | None = None
    phone: Phone | None = None


class _Resource(BaseModel):
    id: UUID
    tenantId: UUID
    createdAt: datetime
    updatedAt: datetime
    version: int


class JobOut(_Resource):
    accountId: UUID | None
    title: str
    status: JobStatus


class AccountOut(_Resource):
    name: str


class ContactOut(_Resource):
    accountId: UUID | None
    name: str
    email: str | None
    phone: str | None


def _page(out: type[BaseModel]) -> type[BaseModel]:
    """A list page of one resource: JobOut -> JobPage, {"items": [...], "nextCursor": ...}."""
    return create_model(out.__name__.removesuffix("Out") + "Page", __module__=__name__,
                        items=(list[out], ...), nextCursor=(str | None, ...))


class ResourceModels(NamedTuple):
    create: type[BaseModel]
    patch: type[BaseModel]
    out: type[BaseModel]
    page: type[BaseModel]


# Per aggregate (aether_platform.aggregates), by its name; api.routers.resources builds a router
# for every aggregate from this, so an aggregate without its models fails at import.
MODELS = {
    "account": ResourceModels(AccountCreate, AccountPatch, AccountOut, _page(AccountOut)),
    "contact": ResourceModels(ContactCreate, ContactPatch, ContactOut, _page(ContactOut)),
    "job": ResourceModels(JobCreate, JobPatch, JobOut, _page(JobOut)),
}


class ProblemOut(BaseModel):
    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
