-- Dagster's run, event and schedule storage (dagster-postgres), beside the app's `crm` database.
CREATE DATABASE dagster;
