"""The soak harness (`bench/soak.py`) in its short form: an outage of the primary provider under
steady load is invisible to callers, the dead provider gets nothing while its breaker is open,
traffic returns after the outage, and no file descriptor or task is left behind.

The long form is run by hand: `python -m bench.soak --rps 200 --seconds 300`.
"""

from __future__ import annotations

from bench.soak import SoakConfig, run_soak


async def test_outage_under_load_is_absorbed_and_leaves_nothing_behind() -> None:
    config = SoakConfig(
        rps=30, seconds=6, reset_timeout_s=0.5, failure_threshold=3, warmup_s=0.5, settle_s=0.3
    )
    report = await run_soak(config)

    requests = report["requests"]
    assert requests["errors"] == 0, requests["errors_by_phase_and_code"]  # fallback hid the outage
    assert requests["ok"] == requests["scheduled"] and requests["shed_over_max_in_flight"] == 0

    dead = report["dead_provider"]
    assert dead["primary_calls_during_outage"] >= config.failure_threshold  # it really was tried and failed
    assert dead["breaker_open_windows_s"]  # ... and its breaker opened
    assert dead["calls_started_while_open"] == 0
    # Seen from the provider: nothing arrived while open but what was already on its way.
    assert dead["requests_arrived_while_open"] <= dead["calls_in_flight_when_it_opened"]

    recovery = report["recovery"]
    assert recovery["first_primary_success_after_restore_s"] is not None
    assert recovery["final_primary_breaker"] == "closed"

    delta = report["resources"]["delta"]
    assert delta["open_fds"] == 0 and delta["asyncio_tasks"] == 0, report["resources"]
