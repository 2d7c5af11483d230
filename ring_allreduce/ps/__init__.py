"""Parameter-server training (``ring-allreduce train --mode ps``): sharded servers, BSP / SSP / ASP consistency.

:mod:`.layout` holds the pure parts (shards, synchronisation steps, the analytical byte counts),
:mod:`.strategy` the trainer strategy, :mod:`.train_plugin` the command-line flags and the JSON report.
"""
