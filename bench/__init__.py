"""Benchmarks. Each module is runnable (`python -m bench.<name>`), prints its figures with a
baseline measured in the same run, and writes bench/results/<name>.json; `python -m bench`
(make bench) runs them all and rewrites BENCHMARKS.md."""
