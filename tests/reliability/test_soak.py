"""Memory growth with its positive control, and the chaos soak's two-minute version
(bench/soak.py runs both at full length: 100,000 requests per backend, one hour)."""

from __future__ import annotations

from bench.soak import chaos, memory_growth

REQUESTS = 1000


def test_memory_growth_passes_and_a_deliberate_leak_fails_the_same_check(serve, figure):
    server = serve()
    clean = memory_growth(server.url, server.proc.pid, REQUESTS)
    assert clean["passed"], clean
    assert set(clean["statuses"]) <= {"200", "400", "413", "415", "422"}, clean["statuses"]
    leaky = serve(TRUNKLINE_TEST_LEAK_KIB="256")
    leaked = memory_growth(leaky.url, leaky.proc.pid, REQUESTS)
    assert not leaked["passed"], leaked  # 256 KiB a request: the same check catches it
    figure("clean", clean)
    figure("leak control", leaked)


def test_chaos_two_minutes(serve, figure):
    server = serve()
    result = chaos(server.url, server.proc.pid, 120, log=lambda _: None)
    assert result["valid_requests"] > 100 and not result["valid_failures"], result
    assert result["gauges_at_end"] == {"trunkline_in_flight_requests": 0, "trunkline_queue_depth": 0}
    assert result["others"]["malformed"] and set(result["others"]["malformed"]) <= {"400", "413", "422"}
    assert set(result["others"]["short deadline"]) <= {"200", "503"}
    assert set(result["others"]["burst"]) <= {"200", "429", "503"}
    figure("chaos", result)
