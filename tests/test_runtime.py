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
