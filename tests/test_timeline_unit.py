"""Chrome-trace timeline: events, lanes, atomic JSON."""
import json
import os

import pytest

from ring_allreduce.resilience.timeline import Timeline, load, write_trace


def test_spans_become_complete_events_on_their_lanes(tmp_path):
    tl = Timeline(rank=3)
    with tl.span("compute", step=0):
        pass
    tl.add("comm", 10.0, 5.0, step=0, contributors=2)
    tl.add("compress", 11.0, 1.0, step=0)
    tl.instant("left out", step=1)
    path = tl.write_local(str(tmp_path / "t.json"))
    events = load(path)
    xs = [e for e in events if e["ph"] == "X"]
    assert [e["name"] for e in xs] == ["compute", "comm", "compress"]
    assert all(e["pid"] == 3 for e in events)
    assert len({e["tid"] for e in xs}) == 3  # one lane per phase
    assert xs[1]["args"] == {"contributors": 2, "step": 0} and xs[1]["dur"] == 5.0
    names = {e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    assert {"compute", "comm", "compress"} <= names
    assert json.load(open(path))["otherData"]["rank"] == 3


def test_disabled_timeline_records_nothing():
    tl = Timeline(enabled=False)
    with tl.span("compute"):
        pass
    tl.add("comm", 0, 1)
    assert tl.events == []


def test_event_cap_counts_dropped():
    tl = Timeline(max_events=2)
    for i in range(5):
        tl.add("compute", i, 1)
    assert len(tl.events) == 2 and tl.dropped == 3


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "trace.json"
    write_trace(str(path), [{"name": "a", "ph": "X", "ts": 0, "dur": 1, "pid": 0, "tid": 0}])
    before = path.read_text()

    class Boom:
        pass

    with pytest.raises(TypeError):
        write_trace(str(path), [{"bad": Boom()}])
    assert path.read_text() == before  # the old file survives a failed write
    assert [f for f in os.listdir(tmp_path) if f.startswith(".timeline-")] == []


def test_load_rejects_malformed_events(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"traceEvents": [{"name": "x", "ph": "X", "ts": 0}]}))
    with pytest.raises(ValueError, match="malformed"):
        load(str(p))


def test_trainer_callback_maps_phases_and_adds_compression_time():
    from types import SimpleNamespace

    from ring_allreduce.resilience.callbacks import TimelineCallback

    stats = {"hook_s": 0.0, "comm_s": 0.0}
    trainer = SimpleNamespace(optimizer=SimpleNamespace(hook_state=SimpleNamespace(stats=stats)), rank=1)
    cb = TimelineCallback("unused.json", rank=1)
    cb.on_step_begin(trainer, 0)
    cb.on_phase(trainer, 0, "compute", 1.0, 1.5)
    cb.on_phase(trainer, 0, "comm:bucket2", 1.2, 1.4)
    cb.on_phase(trainer, 0, "compute floor", 1.5, 1.6)
    stats.update(hook_s=0.3, comm_s=0.1)  # 0.2 s of compression inside the hook this step
    cb.on_step_end(trainer, 0, SimpleNamespace(rows=8, contributors=[0, 2]))
    ev = {e["name"]: e for e in cb.timeline.events}
    assert ev["bucket 2"]["cat"] == "buckets" and ev["compute floor"]["cat"] == "straggle"
    assert ev["compress+decompress"]["cat"] == "compress"
    assert ev["compress+decompress"]["dur"] == pytest.approx(0.2e6)
    assert ev["step"]["args"] == {"contributors": [0, 2], "left_out": True, "step": 0}
