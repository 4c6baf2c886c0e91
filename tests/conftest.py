import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The tests' models are tiny and gain nothing from intra-op threads; on a busy 2-core
    machine the thread pool's spinning makes them ~10x slower. Scripts started as subprocesses
    keep their own thread count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
