"""fastar: fast autoregressive generative models for PyTorch.

`fastar.ops` holds the fused kernels (torch custom ops under `torch.ops.fastar`);
`fastar.reference` their pure-PyTorch definitions.
"""

__version__ = "0.1.0"
