import sys

import pytest

from h_model import runtime


@pytest.fixture(autouse=True)
def _restore():
    yield
    runtime.restore_malloc_defaults()


def test_default_malloc_is_a_no_op_without_keep():
    runtime.restore_malloc_defaults()
    with runtime.default_malloc():
        assert runtime._keeping is False
    assert runtime._keeping is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_default_malloc_suspends_keep_and_resumes_it_even_after_an_error():
    assert runtime.keep_freed_memory() is True
    with pytest.raises(RuntimeError):
        with runtime.default_malloc():
            assert runtime._keeping is False
            raise RuntimeError("validation failed")
    assert runtime._keeping is True
    assert runtime.restore_malloc_defaults() is True
    assert runtime._keeping is False


def test_cpu_amp_only_with_native_bf16(monkeypatch, caplog):
    import logging

    import torch

    caplog.set_level(logging.INFO)
    from h_model.trainer import step as trainer

    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: False)
    assert trainer.amp_settings(True, torch.device("cpu")) == (torch.bfloat16, False)
    assert "no native bfloat16" in caplog.text
    assert trainer.amp_settings(False, torch.device("cpu")) == (torch.bfloat16, False)
    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: True)
    assert trainer.amp_settings(True, torch.device("cpu")) == (torch.bfloat16, True)


def test_cpu_has_native_bf16_reads_the_cpu_flags(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor : 0\nflags : fpu sse2 avx2 fma avx512f\n")
    assert runtime.cpu_has_native_bf16(f) is False
    f.write_text("processor : 0\nflags : fpu avx2 avx512f avx512_bf16 amx_tile\n")
    assert runtime.cpu_has_native_bf16(f) is True
    assert runtime.cpu_has_native_bf16(tmp_path / "missing") is False


def test_onednn_isa_cap_turns_native_bf16_off(tmp_path, monkeypatch):
    f = tmp_path / "cpuinfo"
    f.write_text("processor : 0\nmodel name : Test CPU 9000\nflags : fpu avx2 fma avx512f avx512_bf16 amx_bf16\n")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert runtime.cpu_has_native_bf16(f) is False
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert runtime.cpu_has_native_bf16(f) is True
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    monkeypatch.delenv("OPENCV_CPU_DISABLE", raising=False)
    d = runtime.cpu_description(f)
    assert d["mkl_enable_instructions"] == "AVX2" and d["opencv_cpu_disable"] is None
    assert d["model"] == "Test CPU 9000" and d["flags"] == ["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"]
