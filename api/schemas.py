"""Request and response bodies. Field names are camelCase; unknown fields are rejected (422),
so a typo never silently drops data."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from aether_platform.models import JOB_STATUSES

JobStatus = Literal[JOB_STATUSES]  # type: ignore[valid-type]
Title = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Phone = Annotated[str, StringConstraints(min_length=1, max_length=50)]
# A shape check, not deliverability: the CRM stores what the user typed.
Email = Annotated[str, StringConstraints(max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class JobCreate(_Body):
    account_id: UUID | None = Field(None, alias="accountId")
    title: Title
    status: JobStatus = "Open"


class JobPatch(_Body):
    account_id: UUID | None = Field(None, alias="accountId")
    title: Title | None = None
    status: JobStatus | None = None


class AccountCreate(_Body):
    name: Name


class AccountPatch(_Body):
    name: Name | None = None


class ContactCreate(_Body):
    account_id: UUID | None = Field(None, alias="accountId")
    name: Name
    email: Email | None = None
    phone: Phone | None = None


class ContactPatch(_Body):
    account_id: UUID | None = Field(None, alias="accountId")
    name: Name | None = None
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


class JobPage(BaseModel):
    items: list[JobOut]
    nextCursor: str | None


class AccountPage(BaseModel):
    items: list[AccountOut]
    nextCursor: str | None


class ContactPage(BaseModel):
    items: list[ContactOut]
    nextCursor: str | None


class ProblemOut(BaseModel):
    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
