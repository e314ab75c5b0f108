"""Tests for mm_platform.lib.device: device resolution, autocast, OOM back-off."""

from __future__ import annotations

import contextlib
import logging
import warnings

import pytest
import torch

from mm_platform.lib import device as dev
from mm_platform.lib.device import (
    DeviceConfig,
    OOMBackoff,
    autocast_context,
    effective_precision,
    is_oom_error,
    oom_backoff,
    resolve_device,
)


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend two CUDA devices exist (only availability queries are faked; nothing touches a GPU)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# ---------------------------------------------------------------------------------------------- resolve


def test_resolve_cpu_and_normalisation() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("  CPU ") == torch.device("cpu")


def test_resolve_auto_without_cuda(no_cuda: None) -> None:
    assert resolve_device("auto") == torch.device("cpu")


def test_resolve_auto_and_cuda_with_cuda(fake_cuda: None) -> None:
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_resolve_cuda_index_out_of_range(fake_cuda: None) -> None:
    with pytest.raises(ValueError, match=r"cuda:2.*does not exist.*2 CUDA device"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("spec", ["cuda", "cuda:0"])
def test_resolve_cuda_absent(no_cuda: None, spec: str) -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device(spec)


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "", "cuda:", "mps", "cpu:0"])
def test_resolve_bad_spec(spec: str) -> None:
    with pytest.raises(ValueError, match="invalid device"):
        resolve_device(spec)


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "", "mps"])
def test_check_device_rejects_what_resolve_rejects(spec: str) -> None:
    with pytest.raises(ValueError, match="invalid device"):
        dev.check_device(spec)


@pytest.mark.parametrize("spec", ["cuda", "cuda:0"])
def test_check_device_still_fails_fast_on_a_missing_gpu(no_cuda: None, spec: str) -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        dev.check_device(spec)


def test_check_device_does_not_import_torch_for_auto_or_cpu() -> None:
    import subprocess
    import sys

    code = ("import sys; from mm_platform.lib.device import check_device; check_device('auto'); "
            "check_device(' CPU '); import mm_platform.lib.encoders.registry, mm_platform.lib.vectors.shared_space; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"


def test_resolve_non_string() -> None:
    with pytest.raises(TypeError, match="must be a string"):
        resolve_device(0)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- config


def test_device_config_defaults_and_validation() -> None:
    cfg = DeviceConfig()
    assert (cfg.device, cfg.batch_size, cfg.precision, cfg.num_workers) == ("auto", 64, "fp32", 2)
    assert DeviceConfig(device="cpu").torch_device() == torch.device("cpu")
    with pytest.raises(ValueError, match="invalid device"):
        DeviceConfig(device="tpu")
    with pytest.raises(ValueError, match="batch_size"):
        DeviceConfig(batch_size=0)
    with pytest.raises(ValueError, match="precision"):
        DeviceConfig(precision="int8")
    with pytest.raises(ValueError, match="num_workers"):
        DeviceConfig(num_workers=-1)
    # availability is checked at resolution time, not construction time
    assert DeviceConfig(device="cuda:7").device == "cuda:7"


# ---------------------------------------------------------------------------------------------- autocast


def test_autocast_cpu_falls_back_to_fp32_and_logs_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dev, "_LOGGED_ONCE", set())
    cpu = torch.device("cpu")
    with caplog.at_level(logging.WARNING, logger=dev.__name__):
        for _ in range(3):
            ctx = autocast_context(cpu, "bf16")
            assert isinstance(ctx, contextlib.nullcontext)
            with ctx:
                y = torch.ones(4, 4) @ torch.ones(4, 4)
            assert y.dtype == torch.float32
    assert sum("falling back to fp32" in r.getMessage() for r in caplog.records) == 1
    assert effective_precision(cpu, "fp16") == "fp32"
    assert isinstance(autocast_context(cpu, "fp32"), contextlib.nullcontext)


def test_autocast_unknown_precision() -> None:
    with pytest.raises(ValueError, match="invalid precision"):
        autocast_context(torch.device("cpu"), "fp8")


def test_autocast_cuda_builds_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA not available, disabling" when constructed on a CPU box
        fp16 = autocast_context(cuda, "fp16")
        bf16 = autocast_context(cuda, "bf16")
    assert isinstance(fp16, torch.autocast) and fp16.fast_dtype == torch.float16
    assert isinstance(bf16, torch.autocast) and bf16.fast_dtype == torch.bfloat16
    assert isinstance(autocast_context(cuda, "fp32"), contextlib.nullcontext)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert effective_precision(cuda, "bf16") == "fp32"


# ---------------------------------------------------------------------------------------------- OOM back-off


def _oom_above(limit: int, calls: list[int]):
    def fn(chunk):
        calls.append(len(chunk))
        if len(chunk) > limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (fake, batch {len(chunk)})")
        return [x * 10 for x in chunk]

    return fn


def test_oom_backoff_halves_until_it_fits() -> None:
    calls: list[int] = []
    results = oom_backoff(_oom_above(3, calls), list(range(20)))
    assert [x for r in results for x in r] == [x * 10 for x in range(20)]
    # 20 -> 10 -> 5 -> 2 fits; the rest goes in chunks of 2 (the reduced size sticks)
    assert calls[:4] == [20, 10, 5, 2]
    assert all(c <= 3 for c in calls[3:])
    assert sum(calls[3:]) == 20


def test_oom_backoff_state_persists_across_runs() -> None:
    calls: list[int] = []
    backoff = OOMBackoff(16)
    fn = _oom_above(4, calls)
    backoff.run(fn, list(range(16)))
    assert backoff.batch_size == 4 and backoff.backoffs == 2
    calls.clear()
    out = backoff.run(fn, list(range(16)))
    assert calls == [4, 4, 4, 4]  # no new OOM on the next batch
    assert [x for r in out for x in r] == [x * 10 for x in range(16)]


def test_oom_backoff_reraises_at_min_batch() -> None:
    calls: list[int] = []
    with pytest.raises(torch.cuda.OutOfMemoryError):
        oom_backoff(_oom_above(0, calls), list(range(8)), min_batch=2)
    assert calls == [8, 4, 2]


def test_oom_backoff_other_errors_propagate_at_once() -> None:
    calls: list[int] = []

    def fn(chunk):
        calls.append(len(chunk))
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        oom_backoff(fn, list(range(8)))
    assert calls == [8]


def test_oom_backoff_plain_runtime_error_oom_and_tensors() -> None:
    x = torch.arange(10.0)
    seen: list[int] = []

    def fn(chunk: torch.Tensor) -> torch.Tensor:
        seen.append(int(chunk.shape[0]))
        if chunk.shape[0] > 5:
            raise RuntimeError("CUDA error: out of memory")
        return chunk * 2

    out = torch.cat(oom_backoff(fn, x))
    assert torch.equal(out, x * 2)
    assert seen[:2] == [10, 5]
    assert is_oom_error(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_oom_error(ValueError("out of memory"))


def test_oom_backoff_empty_and_bad_args() -> None:
    assert oom_backoff(lambda c: c, []) == []
    with pytest.raises(ValueError):
        OOMBackoff(0)
