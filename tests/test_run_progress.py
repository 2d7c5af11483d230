"""``tests/run.py`` shows progress inside a tier: output streams as it comes, and silence gets a line every ~20 s."""
import sys

from tests import run


def test_counts_results_from_pytest_progress_lines():
    text = "collecting\n....s.F..  [ 40%]\n.....\nfoo.py:1 something.\n=== 1 failed"
    assert run._done_so_far(text) == 14


def test_silence_gets_a_progress_line_and_output_streams(monkeypatch, capsys):
    monkeypatch.setattr(run, "HEARTBEAT_S", 0.5)
    code = "import time, sys\nprint('..', flush=True)\ntime.sleep(2.2)\nprint('1 passed in 2.2s', flush=True)"
    counts = run.run("demo", [sys.executable, "-c", code], dict(run.os.environ), limit=60)
    out = capsys.readouterr().out
    out = out[out.index("1 passe") + 1:]  # after the echoed command line, which holds the code
    out = out[out.index("\n"):]
    assert counts["passed"] == 1 and counts["failed"] == 0
    beats = [ln for ln in out.splitlines() if ln.startswith("[run.py] demo:")]
    assert beats and "2 test(s) done so far" in beats[0], out
    assert out.index("..") < out.index("[run.py]") < out.index("1 passed")  # streamed, not printed at the end


def test_a_hang_is_killed_and_counted_as_a_failure(capsys):
    counts = run.run("hang", [sys.executable, "-c", "import time; time.sleep(60)"], dict(run.os.environ), limit=2)
    assert counts["failed"] == 1 and "killed after 2 s" in capsys.readouterr().out
