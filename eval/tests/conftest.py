"""Before torch loads: OpenMP threads that spin while waiting starve each other on a shared 2-core box."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["HF_HUB_OFFLINE"] = "1"
