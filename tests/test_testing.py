"""smoothsk.testing: the helpers the package's own tests (and a user's) use."""

import subprocess
import sys
from pathlib import Path

import pytest

from smoothsk.testing import EXPECTED_FAILED_CHECKS, process_group_members, tiny_estimator_params


@pytest.mark.subprocess
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_process_group_members_lists_a_group_until_it_is_gone():
    leader = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                              start_new_session=True)
    try:
        assert process_group_members(leader.pid) == [leader.pid]
    finally:
        leader.kill()
        leader.wait()
    assert process_group_members(leader.pid) == []


def test_tiny_settings_take_overrides_and_every_expected_failure_has_a_reason():
    params = tiny_estimator_params(sigma=None, n=64)
    assert params["sigma"] is None and params["n"] == 64 and params["max_epochs"] == 3
    assert all(name.startswith("check_") and len(reason) > 40
               for name, reason in EXPECTED_FAILED_CHECKS.items())
