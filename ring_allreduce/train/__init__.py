"""Data-parallel SGD on the hand-written allreduce: data, models, buckets, hooks, optimizer, trainer, CLI.

Nothing here initialises MPI or compiles at import. See :mod:`.optimizer` for the extension points (comm hooks,
gradient-storage allocator, step strategy) and :mod:`.plugins` for adding ``train`` flags from other packages.
"""
