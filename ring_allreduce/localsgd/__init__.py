"""Local SGD / periodic model averaging (``ring-allreduce train --local-steps H``): see :mod:`.strategy`."""
