"""tests/optim: run single-threaded (the models are tiny; intra-op threads only add contention)."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
