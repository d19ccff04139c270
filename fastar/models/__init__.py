"""Models from the papers, one file each, all following `fastar.models.base`'s contract:
``log_prob(x, cond=None) -> (B,)``, ``sample(n, ...)`` with naive or cached generation from
one random stream, and a config dataclass (``model.config``) that rebuilds the model.

``MODELS`` is the registry the command line reads: name -> model class (its ``config_class``
holds the keywords and the paper's defaults)."""

from fastar.models.base import AutoregressiveModel
from fastar.models.baselines import (Histogram, HistogramConfig, RasterLSTM, RasterLSTMConfig,
                                     RasterWaveNet, RasterWaveNetConfig)
from fastar.models.cache import Cache
from fastar.models.gated_pixelcnn import GatedPixelCNN, GatedPixelCNNConfig
from fastar.models.made import MADE, MADEConfig
from fastar.models.pixelcnn import PixelCNN, PixelCNNConfig
from fastar.models.pixelcnn_pp import PixelCNNPlusPlus, PixelCNNPlusPlusConfig
from fastar.models.pixelrnn import (DiagonalBiLSTM, DiagonalBiLSTMConfig, RowLSTM,
                                     RowLSTMConfig)
from fastar.models.pixelsnail import PixelSNAIL, PixelSNAILConfig
from fastar.models.wavenet import WaveNet, WaveNetConfig

MODELS = {"made": MADE, "pixelcnn": PixelCNN, "gated_pixelcnn": GatedPixelCNN,
          "row_lstm": RowLSTM, "diagonal_bilstm": DiagonalBiLSTM, "wavenet": WaveNet,
          "histogram": Histogram, "raster_lstm": RasterLSTM, "raster_wavenet": RasterWaveNet,
          "pixelcnn_pp": PixelCNNPlusPlus, "pixelsnail": PixelSNAIL}

__all__ = ["MODELS", "AutoregressiveModel", "Cache", "DiagonalBiLSTM", "DiagonalBiLSTMConfig",
           "GatedPixelCNN", "GatedPixelCNNConfig", "Histogram", "HistogramConfig",
           "MADE", "MADEConfig", "PixelCNN", "PixelCNNConfig", "PixelCNNPlusPlus",
           "PixelCNNPlusPlusConfig", "PixelSNAIL", "PixelSNAILConfig", "RasterLSTM",
           "RasterLSTMConfig", "RasterWaveNet", "RasterWaveNetConfig", "RowLSTM", "RowLSTMConfig",
           "WaveNet", "WaveNetConfig"]
