"""Load balancing: each rank's share of every global batch follows its measured speed (``--balance``)."""
