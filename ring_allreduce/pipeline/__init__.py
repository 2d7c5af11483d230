"""Model parallelism: the MLP's layers in contiguous stages over ranks, micro-batches in a GPipe schedule."""
