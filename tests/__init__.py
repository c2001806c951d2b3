"""The suite. A package, so that `tests/api` can never shadow the real `api` package on sys.path,
and `tests.conftest` is imported once, not twice under two names."""
