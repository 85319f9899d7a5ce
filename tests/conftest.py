import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

from lmforge.utils import shared_data_dir


@pytest.fixture(scope="session")
def shared_data():
    """`../shared/data`, or a clean skip where it is absent (a user's clone)."""
    path = shared_data_dir()
    if path is None:
        pytest.skip("../shared/data is absent")
    return path
