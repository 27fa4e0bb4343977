"""Tests of the benchmark harness itself (run by `make test`): it runs end to end, its helpers are exact."""
