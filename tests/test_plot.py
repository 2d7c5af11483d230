"""Benchmark plots: the format follows the extension, one colour per algorithm everywhere, readable axes and title."""
import pytest

from ring_allreduce.bench import plot
from ring_allreduce.usage import UsageError
from tests.test_bench import _meta, synthetic_rows

pytest.importorskip("matplotlib")

MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF-", "svg": b"<?xml"}
MPICH_RAW = "MPICH Version:      5.0.2\nMPICH Release date: Tue Oct  7 10:00:00 AM CDT 2026\nMPICH ABI: 17:2:5"


def _latency_rows():
    rows = []
    for a, t in (("mpi", 1.0), ("check", 2.5), ("auto", 1.6), ("auto+check", 3.1), ("recursive_doubling", 1.4)):
        for s in (8, 64, 512, 2048):
            rows.append({"algorithm": a, "size_bytes": s, "count": s // 4, "dtype": "float32", "op": "sum",
                         "time_us": t * (1 + s / 4096), "time_us_min": t, "time_us_max": 2 * t,
                         "algbw_GBps": 0.01, "busbw_GBps": 0.0 if a == "check" else 0.01, "wrong": None})
    return rows


@pytest.mark.parametrize("ext", sorted(MAGIC))
def test_file_format_follows_the_extension(tmp_path, ext):
    path = plot.plot(str(tmp_path / f"out.{ext}"), _meta(), synthetic_rows(2)[:40])
    with open(path, "rb") as fh:
        head = fh.read(8)
    assert head.startswith(MAGIC[ext]), head
    assert [p.name for p in tmp_path.iterdir()] == [f"out.{ext}"]  # no temporary left behind


def test_unknown_extension_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="bmp"):
        plot.plot(str(tmp_path / "out.bmp"), _meta(), synthetic_rows(2)[:8])


def test_colours_are_stable_and_distinct():
    known = ["ring", "rabenseifner", "tree", "recursive_doubling", "shm", "auto", "mpi", "hierarchical", "check"]
    first = plot.colors(known)
    assert plot.colors(reversed(known)) == first  # independent of order and of which others are plotted
    assert len(set(first.values())) == len(known)
    assert plot.color("auto+check") == plot.color("auto")  # same algorithm, drawn dashed
    assert plot.color("my_algo") == plot.color("my_algo")


def _line_colours(ax):
    return {ln.get_label(): ln.get_color() for ln in ax.get_lines() if not ln.get_label().startswith("_")}


def test_latency_panels_hold_every_algorithm_in_one_colour():
    import matplotlib.pyplot as plt

    meta = dict(_meta(), mode="latency", mpi_library=MPICH_RAW)
    fig = plot.figure(meta, _latency_rows())
    try:
        left, right = (_line_colours(ax) for ax in fig.axes)
        names = {"mpi", "check", "auto", "auto+check", "recursive_doubling"}
        assert set(left) == names and set(right) == names  # `check` in both panels
        assert left == right and all(left[n] == plot.color(n) for n in names)
        assert fig._suptitle.get_text() == "allreduce float32 sum, p=2, in place, MPICH 5.0.2, thread multiple"
        assert not fig.axes[0].get_legend()  # one legend for the figure, outside the panels
        assert len(fig.legends) == 1
    finally:
        plt.close(fig)


def test_axes_read_in_bytes_and_carry_enough_ticks():
    import matplotlib.pyplot as plt

    rows = [r for r in synthetic_rows(2) if 4 << 20 <= r["size_bytes"] <= 64 << 20]
    fig = plot.figure(_meta(), rows)
    try:
        fig.canvas.draw()
        for ax in fig.axes:
            xs = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
            assert xs and all(t.endswith(("B", "KiB", "MiB", "GiB")) for t in xs), xs
            assert "4 MiB" in xs and "64 MiB" in xs, xs
            lo, hi = ax.get_ylim()
            ys = [t for t in ax.get_yticklabels() if t.get_text() and lo <= t.get_position()[1] <= hi]
            assert len(ys) >= 3, [t.get_text() for t in ys]
            assert all("$" not in t.get_text() for t in ys)  # plain numbers, not 10^x mathtext
    finally:
        plt.close(fig)


@pytest.mark.parametrize("n,text", [(4 << 20, "4 MiB"), (1536, "1.5 KiB"), (8, "8 B"), (1 << 30, "1 GiB")])
def test_human_bytes(n, text):
    assert plot.human_bytes(n) == text


@pytest.mark.parametrize("raw,short", [(MPICH_RAW, "MPICH 5.0.2"),
                                       ("Open MPI v5.0.11, package: Open MPI root@x Distribution", "Open MPI 5.0.11")])
def test_short_library(raw, short):
    assert plot.short_library(raw) == short
