"""The papers' likelihood tables, one row per model configuration: which paper and table, the
model and its configuration (the paper's, in fastar's config keywords), the data set and the
figure the paper reports (test NLL in nats). The demo prints rows beside its own figure; the
coming `python -m fastar reproduce` trains and scores them."""

import dataclasses
from typing import Any, Dict, Optional


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a row is trained: epochs at most (the best validation epoch is scored: early
    stopping), the batch and Adam's learning rate (fastar's trainer), and where these come
    from."""
    epochs: int
    batch_size: int
    lr: float
    source: str


# MADE's section 6: minibatches of 100 and early stopping on the valid split. The authors'
# released code (github.com/mgermain/MADE, trainMADE.py and its README's MNIST command) adds
# what the paper leaves out, and the rows follow it: ReLU units, direct input-to-output
# connections, an ordering drawn at random even for a single mask ("so that the natural order
# does not give us an edge"), and 32 masks that redraw both the ordering and the hidden degrees
# ("Full" shuffling). Its optimizer (Adagrad 0.01, patience 30 epochs) is not ours: Adam 1e-3
# for at most 200 epochs, the best valid epoch scored.
_MADE_RECIPE = Recipe(200, 100, 1e-3, "Germain et al. 2015, sec. 6: batches of 100, early "
                      "stopping on the valid split; Adam 1e-3 is ours (the authors' code: "
                      "Adagrad 0.01, patience 30)")
_MADE_MASKS = ("8000 units per layer, direct connections, ordering and hidden degrees redrawn "
               "per mask: the authors' code and its README's MNIST command "
               "(github.com/mgermain/MADE). 500 units, 1 mask, a random ordering is the paper's "
               "figure 2 (about 94.5; ours: 93.98 valid, 2026-12-07)")
_PIXELRNN_RECIPE = Recipe(20, 64, 1e-3, "not given for MNIST in van den Oord et al. 2016a: "
                          "batch 64 and Adam 1e-3 are ours")
_LECTURE_RECIPE = Recipe(5, 64, 1e-3, "the lecture gives no recipe: ours")
_HISTOGRAM_RECIPE = Recipe(3, 64, 0.05, "ours: a logit per position, converged in 3 epochs")


@dataclasses.dataclass(frozen=True)
class Row:
    title: str  # as printed: the model, its variant, the paper and table
    paper: str
    table: str
    model: str  # fastar.models.MODELS name, or None where fastar has no such model yet
    config: Dict[str, Any]
    dataset: str
    paper_nats: Optional[float]  # None: a baseline for scale, with no published figure
    recipe: Recipe
    note: Optional[str] = None  # what is not settled about the row


def _made_config(hidden_sizes, num_masks):
    return {"hidden_sizes": hidden_sizes, "num_masks": num_masks, "natural_ordering": False,
            "direct_connections": True}


_MADE = "Germain, Gregor, Murray, Larochelle 2015, MADE"
_PIXELRNN = "van den Oord, Kalchbrenner, Kavukcuoglu 2016, Pixel Recurrent Neural Networks"
_LECTURE = "CS294-158 Deep Unsupervised Learning (Berkeley, Spring 2020), lecture 2"
_FOR_SCALE = "the lecture shows samples, no likelihood: a row for scale"

BINARIZED_MNIST: Dict[str, Row] = {row_name: row for row_name, row in (
    ("made-1h-1mask", Row("MADE, 1 hidden layer, 1 mask (Germain et al. 2015, Table 6)", _MADE,
                          "Table 6", "made", _made_config((8000,), 1),
                          "binarized_mnist", 88.40, _MADE_RECIPE, _MADE_MASKS)),
    ("made-2h-1mask", Row("MADE, 2 hidden layers, 1 mask (Germain et al. 2015, Table 6)", _MADE,
                          "Table 6", "made", _made_config((8000, 8000), 1),
                          "binarized_mnist", 89.59, _MADE_RECIPE, _MADE_MASKS)),
    ("made-1h-32masks", Row("MADE, 1 hidden layer, 32 masks (Germain et al. 2015, Table 6)",
                            _MADE, "Table 6", "made",
                            _made_config((8000,), 32), "binarized_mnist", 88.04, _MADE_RECIPE,
                            _MADE_MASKS)),
    ("made-2h-32masks", Row("MADE, 2 hidden layers, 32 masks (Germain et al. 2015, Table 6)",
                            _MADE, "Table 6", "made",
                            _made_config((8000, 8000), 32), "binarized_mnist", 86.64,
                            _MADE_RECIPE, _MADE_MASKS)),
    ("pixelcnn", Row("PixelCNN (van den Oord et al. 2016a, Table 4)", _PIXELRNN, "Table 4",
                     "pixelcnn", {}, "binarized_mnist", 81.30, _PIXELRNN_RECIPE)),
    ("row-lstm", Row("PixelRNN, Row LSTM (van den Oord et al. 2016a, Table 4)", _PIXELRNN,
                     "Table 4", "row_lstm", {}, "binarized_mnist", 80.54, _PIXELRNN_RECIPE,
                     "the paper does not list its MNIST widths: h = 16, 7 layers as we read "
                     "section 5")),
    ("diagonal-bilstm", Row("PixelRNN, Diagonal BiLSTM (van den Oord et al. 2016a, Table 4)",
                            _PIXELRNN, "Table 4", "diagonal_bilstm", {}, "binarized_mnist",
                            79.20, _PIXELRNN_RECIPE, "the paper does not list its MNIST widths: "
                            "h = 16, 7 layers as we read section 5")),
    ("histogram", Row("Per-position histogram (CS294-158 lecture 2)", _LECTURE, "-",
                      "histogram", {}, "binarized_mnist", None, _HISTOGRAM_RECIPE, _FOR_SCALE)),
    ("raster-lstm", Row("LSTM over the raster scan (CS294-158 lecture 2)", _LECTURE, "-",
                        "raster_lstm", {}, "binarized_mnist", None, _LECTURE_RECIPE, _FOR_SCALE)),
    ("raster-lstm-location", Row("LSTM over the raster scan with pixel location (CS294-158 "
                                 "lecture 2)", _LECTURE, "-", "raster_lstm",
                                 {"location": True}, "binarized_mnist", None, _LECTURE_RECIPE,
                                 _FOR_SCALE)),
    ("raster-wavenet", Row("WaveNet over the raster scan, pixel location as local condition "
                           "(CS294-158 lecture 2)", _LECTURE, "-", "raster_wavenet", {},
                           "binarized_mnist", None, _LECTURE_RECIPE, _FOR_SCALE)),
)}
