"""Pure-PyTorch definitions of every fastar op: the tests' oracle and the benchmarks' baseline.

Each function computes exactly what its fused twin in `fastar.ops` computes, in the most
straightforward way, with autograd doing the backward. This package must import without the
compiled extension.
"""

from fastar.reference.categorical import categorical
from fastar.reference.dmol import dmol_components, dmol_log_prob
from fastar.reference.gated import gated_activation
from fastar.reference.gated_pixelcnn import gated_pixelcnn_generate
from fastar.reference.masked_linear import masked_linear
from fastar.reference.pixelcnn import pixelcnn_generate
from fastar.reference.relu import relu_linear, relu_linear_backward
from fastar.reference.row_lstm import row_lstm, row_lstm_backward
from fastar.reference.wavenet import wavenet_generate

__all__ = ["categorical", "dmol_components", "dmol_log_prob", "gated_activation",
           "gated_pixelcnn_generate", "masked_linear", "pixelcnn_generate",
           "relu_linear", "relu_linear_backward", "row_lstm", "row_lstm_backward",
           "wavenet_generate"]
