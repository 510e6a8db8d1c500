"""registry.py: values, the text format (read back by an independent strict parser), and
adding up several processes' snapshots."""
import json
import math
import threading

import pytest

from metrics.expo import parse
from mailwright.metrics.registry import Registry, format_value


def test_counter_gauge_histogram_render_and_parse_back():
    r = Registry()
    c = r.counter("t_requests_total", "Requests.", ["listener", "result"])
    g = r.gauge("t_active", "Active now.", ["listener"])
    h = r.histogram("t_seconds", "Latency.", ["type"], buckets=(0.1, 1.0))
    plain = r.counter("t_plain_total", "No labels, never incremented.")
    c.labels("smtp", "accepted").inc()
    c.labels("smtp", "accepted").inc(2)
    c.labels("sub", "rejected").inc()
    g.labels("smtp").inc()
    g.labels("smtp").inc()
    g.labels("smtp").dec()
    for v in (0.05, 0.1, 0.5, 3.0):
        h.labels("MX").observe(v)
    out = parse(r.render())
    assert out.types == {"t_requests_total": "counter", "t_active": "gauge",
                         "t_seconds": "histogram", "t_plain_total": "counter"}
    assert out.get("t_requests_total", listener="smtp", result="accepted") == 3
    assert out.get("t_requests_total", listener="sub", result="rejected") == 1
    assert out.get("t_active", listener="smtp") == 1
    assert out.get("t_seconds_bucket", type="MX", le="0.1") == 2      # le is inclusive
    assert out.get("t_seconds_bucket", type="MX", le="1.0") == 3
    assert out.get("t_seconds_bucket", type="MX", le="+Inf") == 4
    assert out.get("t_seconds_count", type="MX") == 4
    assert out.get("t_seconds_sum", type="MX") == pytest.approx(3.65)
    assert ("t_plain_total", ()) in out.samples        # a label-less family shows 0
    assert plain.labels() is plain.labels()


def test_label_values_and_help_are_escaped():
    r = Registry()
    c = r.counter("t_total", 'Help with \\ and\nnewline.', ["check"])
    nasty = 'a"b\\c\nd}{,='
    c.labels(nasty).inc()
    text = r.render()
    assert "# HELP t_total Help with \\\\ and\\nnewline.\n" in text
    out = parse(text)
    assert out.get("t_total", check=nasty) == 1
    assert out.helps["t_total"] == 'Help with \\\\ and\\nnewline.'


def test_wrong_label_count_and_negative_counter_are_errors():
    r = Registry()
    c = r.counter("t_total", "x", ["a", "b"])
    with pytest.raises(ValueError):
        c.labels("only-one")
    with pytest.raises(ValueError):
        c.labels("x", "y").inc(-1)
    with pytest.raises(ValueError):
        r.counter("t_total", "again")
    with pytest.raises(ValueError):
        r.counter("bad-name", "x")
    with pytest.raises(ValueError):
        r.histogram("t_h", "x", ["le"])


def test_value_formatting():
    assert format_value(3.0) == "3"
    assert format_value(0.25) == "0.25"
    assert format_value(math.inf) == "+Inf"
    assert format_value(math.nan) == "NaN"


def _pair():
    def make():
        r = Registry()
        return (r, r.counter("t_total", "x", ["l"]), r.gauge("t_g", "x", ["l"]),
                r.histogram("t_h", "x", [], buckets=(1.0,)))
    return make(), make()


def test_render_adds_up_other_processes_snapshots():
    (r1, c1, g1, h1), (r2, c2, g2, h2) = _pair()
    c1.labels("smtp").inc(2)
    c2.labels("smtp").inc(3)
    c2.labels("sub").inc()
    g1.labels("smtp").set(1)
    g2.labels("smtp").set(4)
    h1.observe(0.5)
    h2.observe(2.0)
    snap = json.loads(json.dumps(r2.snapshot()))        # it travels as JSON
    out = parse(r1.render([snap]))
    assert out.get("t_total", l="smtp") == 5
    assert out.get("t_total", l="sub") == 1
    assert out.get("t_g", l="smtp") == 5
    assert out.get("t_h_bucket", le="1.0") == 1
    assert out.get("t_h_count") == 2
    assert out.get("t_h_sum") == 2.5
    # r1's own values are untouched by the merge
    assert parse(r1.render()).get("t_total", l="smtp") == 2


def test_merge_skips_malformed_and_foreign_samples():
    (r1, c1, _, _), _ = _pair()
    c1.labels("smtp").inc()
    bad = {"t_total": [[["smtp", "extra"], 5], [["x"], "nan?"], "junk"],
           "t_h": [[[], [[1], 3.0]]],                       # wrong bucket count
           "unknown_total": [[[], 7]]}
    out = parse(r1.render([bad]))
    assert out.get("t_total", l="smtp") == 1
    assert out.get("t_h_count") == 0
    assert not any(n == "unknown_total" for n, _ in out.samples)


def test_restore_continues_counters_and_histograms_but_not_gauges():
    (r1, c1, g1, h1), (r2, c2, g2, h2) = _pair()
    c1.labels("smtp").inc(7)
    g1.labels("smtp").set(3)
    h1.observe(0.2)
    r2.restore(json.loads(json.dumps(r1.snapshot())))
    c2.labels("smtp").inc()
    out = parse(r2.render())
    assert out.get("t_total", l="smtp") == 8
    assert out.get("t_g", l="smtp") == 0
    assert out.get("t_h_count") == 1


def test_updates_from_threads_are_not_lost():
    r = Registry()
    c = r.counter("t_total", "x", ["l"])
    h = r.histogram("t_h", "x", buckets=(1.0,))

    def work():
        for _ in range(20000):
            c.labels("a").inc()
            h.observe(0.5)
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = parse(r.render())
    assert out.get("t_total", l="a") == 80000
    assert out.get("t_h_count") == 80000
