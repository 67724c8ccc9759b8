"""`make bench`: each hot path measured beside its peers on this machine; writes docs/benchmarks.md.

Every scenario is a module `bench/scenario_<name>.py` with `run(small: bool) -> Result`. `small=True` is the
quick mode that `make test` runs once so the harness never rots (no speed assertions there).
"""
