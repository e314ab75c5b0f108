"""The per-step thread policy: cores split between concurrent steps, applied to torch and BLAS/OpenMP."""

import os

import pytest
import torch
from threadpoolctl import threadpool_info

from mm_platform.lib.device import THREAD_ENV_VARS, apply_thread_policy, available_cpus, step_threads, thread_limit


@pytest.mark.parametrize(
    ("env", "cpus", "expected"),
    [
        ({}, 2, 1),  # two concurrent runs on two cores: one thread each
        ({}, 16, 8),
        ({}, 1, 1),  # never zero
        ({"MM_CONCURRENT_STEPS": "1"}, 16, 16),
        ({"MM_CONCURRENT_STEPS": "4"}, 16, 4),
        ({"MM_STEP_THREADS": "3"}, 16, 3),  # an explicit count wins
        ({"MM_STEP_THREADS": "auto", "MM_CONCURRENT_STEPS": "auto"}, 6, 3),
    ],
)
def test_step_threads_splits_the_cores(env, cpus, expected):
    assert step_threads(env, cpus=cpus) == expected


@pytest.mark.parametrize("env", [{"MM_STEP_THREADS": "-1"}, {"MM_STEP_THREADS": "many"},
                                 {"MM_CONCURRENT_STEPS": "x"}])
def test_malformed_settings_are_refused_with_the_variable_name(env):
    with pytest.raises(ValueError, match=next(iter(env))):
        step_threads(env, cpus=4)


def test_available_cpus_is_positive():
    assert available_cpus() >= 1


def _blas_threads() -> set[int]:
    return {info["num_threads"] for info in threadpool_info()}


def test_apply_sets_torch_blas_and_unset_env(monkeypatch):
    for var in THREAD_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(f"_MM_SET_{var}", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "7")  # the user's own setting is kept
    old = torch.get_num_threads()
    try:
        policy = apply_thread_policy(1)
        assert policy.threads == 1 and policy.torch and policy.threadpoolctl
        assert torch.get_num_threads() == 1
        assert _blas_threads() <= {1}
        assert os.environ["OMP_NUM_THREADS"] == "1" and os.environ["MKL_NUM_THREADS"] == "7"
        assert "MKL_NUM_THREADS" not in policy.env_set
        # re-applying with another count updates what the policy itself set
        assert apply_thread_policy(2).threads == 2 and os.environ["OMP_NUM_THREADS"] == "2"
    finally:
        torch.set_num_threads(old)
    with pytest.raises(ValueError):
        apply_thread_policy(0)


def test_thread_limit_restores_torch_threads():
    torch.set_num_threads(2)
    with thread_limit(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_the_loaded_libraries_are_scanned_again_only_when_they_or_the_count_change(monkeypatch):
    """Every run of a process applies the policy; threadpoolctl's scan of the loaded libraries (40 ms in a run
    process) is repeated only for a new count or a library loaded since (which may not have read the env)."""
    import subprocess
    import sys

    code = (
        "import threadpoolctl\n"
        "calls = []\n"
        "real = threadpoolctl.threadpool_limits\n"
        "threadpoolctl.threadpool_limits = lambda **kw: calls.append(kw) or real(**kw)\n"
        "from mm_platform.lib.device import apply_thread_policy\n"
        "apply_thread_policy(1); apply_thread_policy(1); print(len(calls))\n"
        "apply_thread_policy(2); print(len(calls))\n"
        "import _decimal, _lzma\n"  # new shared libraries
        "apply_thread_policy(2); print(len(calls))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "2", "3"], out.stdout + out.stderr
