"""The aggregate registry (aether_platform/aggregates.py) is the one description of an aggregate;
the table models (which the migrations must match, tests/foundation/test_migrations.py) and the
API's request and response models are the two places it cannot generate. These tests make a
mismatch between the three a failure instead of a bug found in production: a field added to the
registry without its column, or a column or API field without its registry entry."""
from __future__ import annotations

import pytest

from aether_platform.aggregates import AGGREGATES
from aether_platform.models import metadata
from api.schemas import MODELS


@pytest.mark.parametrize("spec", AGGREGATES, ids=lambda s: s.name)
def test_registry_and_table_have_the_same_columns(spec):
    table = metadata.tables[spec.table]
    assert set(spec.columns) == set(table.columns.keys())


@pytest.mark.parametrize("spec", AGGREGATES, ids=lambda s: s.name)
def test_registry_and_api_models_have_the_same_fields(spec):
    models = MODELS[spec.name]
    api_fields = {f.api for f in spec.fields}
    create = {field.alias or name for name, field in models.create.model_fields.items()}
    patch = {field.alias or name for name, field in models.patch.model_fields.items()}
    out = set(models.out.model_fields) - {"id", "tenantId", "createdAt", "updatedAt", "version"}
    assert create == api_fields and patch <= api_fields and out == api_fields


def test_every_aggregate_has_models_and_nothing_else_does():
    assert set(MODELS) == {spec.name for spec in AGGREGATES}
