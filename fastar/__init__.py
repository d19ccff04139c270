"""fastar: fast autoregressive generative models for PyTorch.

`fastar.ops` holds the fused kernels (torch custom ops under `torch.ops.fastar`),
`fastar.reference` their pure-PyTorch definitions, `fastar.nn` layers built on them,
`fastar.models` the papers' models, `fastar.sampling` the samplers of their outputs and
`fastar.data` the offline data sets.
"""

__version__ = "0.1.0"
