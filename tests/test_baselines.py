"""What the lecture's baselines mean (fastar.models.baselines); the contract's checks run on them
from tests/model_db.py."""

import pytest
import torch

from fastar.models import Histogram, RasterLSTM, RasterWaveNet
from fastar.models.baselines import pixel_locations, raster, unraster


def test_the_histogram_learns_each_positions_frequency():
    torch.manual_seed(0)
    model = Histogram(image_shape=(1, 4, 4), num_values=3)
    x = torch.randint(0, 3, (256, 1, 4, 4))
    x[:, :, 0, 0] = 2  # a position that always holds one value
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(300):
        loss = -model.log_prob(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    learnt = model.distribution.log_prob_all(model.conditionals(x[:1]))[0, :, 0].exp()
    frequencies = torch.stack([(x[:, 0] == v).double().mean(0) for v in range(3)])
    torch.testing.assert_close(learnt.double(), frequencies, atol=0.02, rtol=0)


def test_raster_order_is_the_generation_order():
    x = torch.arange(2 * 3 * 2 * 4).view(2, 3, 2, 4)
    model = Histogram(image_shape=(3, 2, 4))
    order = model.generation_order((3, 2, 4))
    assert torch.equal(raster(x), x.flatten(1)[:, order])
    logits = torch.randn(2, 5, 3 * 2 * 4)  # (B, num_logits, values in generation order)
    image = unraster(logits, (3, 2, 4)).view(2, 3, 5, 2, 4)  # grouped by colour
    assert torch.equal(image.transpose(1, 2).flatten(2)[:, :, order], logits)


def test_pixel_locations_name_row_column_and_channel():
    loc = pixel_locations((3, 2, 3))  # (2 + 3, 18)
    assert loc.shape == (5, 18)
    t = (1 * 3 + 2) * 3 + 1  # row 1, column 2, channel 1
    assert loc[:, t].tolist() == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert loc[:, 0].tolist() == [-1.0, -1.0, 1.0, 0.0, 0.0]
    assert pixel_locations((1, 1, 1)).tolist() == [[-1.0], [-1.0]]  # no division by zero


def test_location_changes_what_the_lstm_predicts_and_only_with_location():
    torch.manual_seed(0)
    x = torch.randint(0, 2, (2, 1, 3, 3))
    plain = RasterLSTM(image_shape=(1, 3, 3), hidden_channels=4)
    located = RasterLSTM(image_shape=(1, 3, 3), hidden_channels=4, location=True)
    assert plain.lstm.input_size == 2 and located.lstm.input_size == 4
    with torch.no_grad():  # the plain model's weights, blind to the location
        for name, p in plain.named_parameters():
            q = dict(located.named_parameters())[name]
            if name == "lstm.weight_ih_l0":
                q[:, :2] = p
                q[:, 2:] = 0
            else:
                q.copy_(p)
    torch.testing.assert_close(located.log_prob(x), plain.log_prob(x))
    with torch.no_grad():
        located.lstm.weight_ih_l0[:, 2:].normal_()
    assert not torch.allclose(located.log_prob(x), plain.log_prob(x))


@pytest.mark.parametrize("model", [
    RasterLSTM(image_shape=(1, 2, 2), hidden_channels=3),
    RasterWaveNet(image_shape=(1, 2, 2), residual_channels=2, skip_channels=2, dilations=(1,))],
    ids=["RasterLSTM", "RasterWaveNet"])
def test_a_step_out_of_order_is_refused(model):
    name = type(model).__name__
    cache = model.init_cache(2)
    model.step(cache, 0)
    for i in (2, 0):
        with pytest.raises(ValueError, match=r"%s.step: the cache holds the values before "
                                             r"position 1 .* got position %d" % (name, i)):
            model.step(cache, i)
    model.step(cache, 1)


def test_the_histograms_outputs_are_not_views_of_its_weight():
    model = Histogram(image_shape=(1, 2, 2))
    with torch.no_grad():
        model.conditionals(torch.zeros(1, 1, 2, 2, dtype=torch.long)).add_(5)
        model.step(model.init_cache(1), 0).add_(5)
    assert model.weight.abs().max() == 0


def test_bad_sizes_name_the_model():
    with pytest.raises(ValueError, match="RasterLSTM: num_layers must be >= 1, got 0"):
        RasterLSTM(num_layers=0)


def test_the_raster_wavenet_sees_every_earlier_value_of_a_28x28_image():
    model = RasterWaveNet()
    assert model.wavenet.receptive_field >= 28 * 28
    assert model.wavenet.config.local_channels == 2
    assert RasterWaveNet(image_shape=(3, 4, 4)).wavenet.config.local_channels == 5
    assert RasterWaveNet(location=False).wavenet.config.local_channels is None


@pytest.mark.parametrize("cached", [False, True])
def test_the_raster_wavenet_samples_images_through_wavenets_fused_loop(cached):
    model = RasterWaveNet(image_shape=(3, 2, 3), residual_channels=4, skip_channels=6,
                          dilations=(1, 2, 4), num_values=4).double().eval()
    assert model.has_fused_sampler(torch.device("cpu"), torch.float64)
    g = torch.Generator().manual_seed(0)
    x = model.sample(3, cached=cached, generator=g)
    assert x.shape == (3, 3, 2, 3) and x.dtype == torch.long and 0 <= x.min() and x.max() < 4
