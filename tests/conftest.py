"""Shared test configuration. Service fixtures live in tests/fixtures/ (one module per service) and are loaded here.

Services are real and started once per test session by those fixtures: PostgreSQL (already running on the machine),
moto_server for S3, Label Studio from .venv-ls, Prefect's test harness.
"""

import os

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# CLI commands run in-process use Prefect's ephemeral server unless a test asks for the data dir's local server
# (flows.prefect_server): a local server would outlive the test.
os.environ.setdefault("GEOLABEL_PREFECT_SERVER", "ephemeral")
# The tiny models are far faster on one intra-op thread on a 2-core machine shared by servers the tests start
# (measured: SAM3 encoding 0.8 s with the default threads vs 13 ms with one). Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")

pytest_plugins = [
    "tests.fixtures.storage",
    "tests.fixtures.models",
    "tests.fixtures.labelstudio",
    "tests.fixtures.prefect",
    "tests.fixtures.grounding",
]
