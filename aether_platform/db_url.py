"""DATABASE_URL is a libpq URL (postgresql://user@host:port/db) so psql, psycopg and pgbench
all take it as is. SQLAlchemy needs the driver spelled out; these helpers do that in one place."""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def libpq_url(url: str) -> str:
    """postgresql+psycopg://… → postgresql://… (what psycopg.connect and psql accept)."""
    parts = urlsplit(url)
    scheme = "postgresql" if parts.scheme.startswith("postgres") else parts.scheme
    return urlunsplit((scheme, *parts[1:]))


def sqlalchemy_url(url: str) -> str:
    """postgresql://… → postgresql+psycopg://… (psycopg 3 driver for SQLAlchemy/Alembic)."""
    return "postgresql+psycopg" + libpq_url(url)[len("postgresql"):]


def with_database(url: str, dbname: str) -> str:
    """The same server and credentials, another database (e.g. `dagster` beside `crm`)."""
    parts = urlsplit(libpq_url(url))
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/") or "postgres"


def redact(url: str) -> str:
    """The URL with its password masked, for messages and logs."""
    import re

    return re.sub(r"//([^:/@]+):[^@]+@", r"//\1:***@", url)
