"""The Prometheus text rendering shared by the daemons."""

from haproxy_py.metrics import Registry


def test_counters_and_gauges_render_with_labels_and_help() -> None:
    registry = Registry("hapy")
    requests = registry.counter("requests_total", "Requests by status class.")
    requests.inc(status="2xx")
    requests.inc(2, status="2xx")
    requests.inc(status="5xx")
    registry.gauge("up", "Is it up.", collect=lambda: [({"server": 'a"b\\c\nd'}, 1.0)])
    text = registry.render()
    assert "# TYPE hapy_requests_total counter" in text
    assert 'hapy_requests_total{status="2xx"} 3' in text
    assert 'hapy_requests_total{status="5xx"} 1' in text
    assert 'hapy_up{server="a\\"b\\\\c\\nd"} 1' in text
    assert text.endswith("\n")


def test_a_name_registered_twice_is_refused() -> None:
    registry = Registry("hapy")
    registry.counter("x", "x")
    try:
        registry.counter("x", "x")
    except ValueError as exc:
        assert "twice" in str(exc)
    else:
        raise AssertionError("expected ValueError")
