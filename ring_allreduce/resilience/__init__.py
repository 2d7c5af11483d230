"""Resilience for synchronous data-parallel training: backup workers, straggler injection, timeline, stalls.

* :mod:`.backup` / :mod:`.coordinator` - each step waits only for the first p - b ranks (backup workers);
* :mod:`.straggle` - ``--straggle RANK:FACTOR[:PROB]`` / ``random:FACTOR:PROB`` injection;
* :mod:`.timeline` - per-rank Chrome-trace JSON of compute / wait / comm / compression phases;
* :mod:`.heartbeat` / :mod:`.stall` - name the ranks a collective waits for, abort naming a dead or hung rank.

Nothing here initialises MPI at import.
"""
