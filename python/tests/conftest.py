import os

# The CPU reference runs OpenMP loops; on a small, shared CI machine the tests' tiny
# problems run far faster on one thread (spinning threads on busy cores cost 30x here).
# Must be set before libmoba_ops.so (and its OpenMP runtime) loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
