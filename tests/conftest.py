import pytest
import torch

CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA GPU visible")

# Every op test runs on each device; CUDA cases are reported as skipped without a GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
