"""Each Trainer test leaves accelerate's process-wide AcceleratorState behind; reset it after the
test (as accelerate's own test cases do), so later tests that build an Accelerator with another
mixed-precision setting (sparseft's own loop) start from a fresh runtime."""

import pytest


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
