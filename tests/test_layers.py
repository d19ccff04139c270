import itertools

import pytest
import torch
import torch.nn.utils.prune  # noqa: F401  (torch.nn.utils.prune)
import torch.nn.functional as F

from conftest import DEVICES
from fastar.models import GatedPixelCNN
from fastar.nn import (CausalConv1d, GatedPixelCNNLayer, MaskedConv2d, PointwiseConv2d,
                       WaveNetBlock, raster_mask)
from fastar.nn.conv import channels_last
import fastar.ops
from fastar.testing import (GatedPixelCNNStack, PixelCNNStack, assert_autoregressive,
                            receptive_field)

MASKED = list(itertools.product(["A", "B"], [1, 3], [1, 3, 5, 7], [1, 2]))


def _masked_weight_reference(conv, x):
    dh, dw = conv.dilation
    pad = (dh * (conv.kernel_size[0] // 2), dw * (conv.kernel_size[1] // 2))
    return F.conv2d(x, conv.weight * conv.mask, conv.bias, padding=pad, dilation=(dh, dw))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask_type,groups,k,dilation", MASKED,
                         ids=["%s-g%d-k%d-d%d" % m for m in MASKED])
def test_masked_conv_equals_masked_weight_conv(device, mask_type, groups, k, dilation):
    conv = MaskedConv2d(6, 9, k, mask_type, groups, dilation=dilation).double().to(device)
    with torch.no_grad():
        conv.weight.normal_()  # every tap nonzero, masked or not
    x = torch.randn(2, 6, 9, 8, dtype=torch.float64, device=device, requires_grad=True)
    ours, ref = conv(x), _masked_weight_reference(conv, x)
    torch.testing.assert_close(ours, ref)
    g = torch.randn_like(ours)
    inputs = (x, conv.weight, conv.bias)
    # 1x1 type A without colour groups sees nothing: x and weight get zero gradients.
    grads = torch.autograd.grad(ours, inputs, g, allow_unused=True, materialize_grads=True)
    grads_ref = torch.autograd.grad(ref, inputs, g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b)
    assert (grads[1][conv.mask == 0] == 0).all()  # masked taps get exactly no gradient


def test_masked_conv_always_uses_the_current_weight_and_mask():
    conv = MaskedConv2d(6, 6, 3, "B", color_groups=3)
    x = torch.randn(2, 6, 5, 5)

    def expected():
        return F.conv2d(x.to(conv.weight.dtype), conv.weight * conv.mask, conv.bias, padding=1)

    with torch.no_grad():
        torch.testing.assert_close(conv(x), expected())
        conv.weight.mul_(2)  # an optimizer step is an in-place update
        torch.testing.assert_close(conv(x), expected())
        conv.weight.data.mul_(-3)  # EMA-style writes through .data bump no version counter
        torch.testing.assert_close(conv(x), expected())
        conv.weight.data = torch.randn_like(conv.weight)  # a new tensor behind the parameter
        torch.testing.assert_close(conv(x), expected())
        conv.load_state_dict({k: torch.randn_like(v) for k, v in conv.state_dict().items()})
        torch.testing.assert_close(conv(x), expected())
        conv.mask[:, :, 1].fill_(1)  # the centre row (the rows below are never computed)
        torch.testing.assert_close(conv(x), expected())
        conv.double()
        torch.testing.assert_close(conv(x.double()), expected())


@pytest.mark.parametrize("kernel_size,dilation", [(3, (2, 1)), ((3, 5), (1, 3)), ((5, 3), 2)])
def test_masked_conv_takes_per_axis_kernel_sizes_and_dilations(kernel_size, dilation):
    conv = MaskedConv2d(3, 4, kernel_size, "B", dilation=dilation).double()
    with torch.no_grad():
        conv.weight.normal_()
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    torch.testing.assert_close(conv(x), _masked_weight_reference(conv, x))
    assert_autoregressive(conv, (1, 3, 6, 7), inclusive=True)


@pytest.mark.parametrize("mask_type,groups,k,dilation", MASKED,
                         ids=["%s-g%d-k%d-d%d" % m for m in MASKED])
def test_masked_conv_is_autoregressive(mask_type, groups, k, dilation):
    conv = MaskedConv2d(3, 6, k, mask_type, groups, dilation=dilation)
    assert_autoregressive(conv, (1, 3, 5, 6), color_groups=groups, inclusive=mask_type == "B")
    if mask_type == "B" and k > 1:  # type B must see its own pixel (same group): not strict
        with pytest.raises(AssertionError, match=r"output \(0, 0, 0, 0\) depends on input "
                                                 r"\(0, 0, 0, 0\)"):
            assert_autoregressive(conv, (1, 3, 5, 6), color_groups=groups)


def test_mask_colour_groups_follow_the_paper():
    # Centre tap, type A: R sees nothing, G sees R, B sees R and G; type B adds the diagonal.
    a = raster_mask(3, 3, 3, "A", 3)[:, :, 1, 1]
    b = raster_mask(3, 3, 3, "B", 3)[:, :, 1, 1]
    torch.testing.assert_close(a, torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0]]))
    torch.testing.assert_close(b, torch.tensor([[1.0, 0, 0], [1, 1, 0], [1, 1, 1]]))


def test_color_groups_must_divide_the_channels():
    conv = MaskedConv2d(3, 6, 3, "B", 3)
    for groups in (2, 0):
        with pytest.raises(ValueError, match="color_groups must be a positive int dividing the "
                                             "input's 3 channels, got %d" % groups):
            assert_autoregressive(conv, (1, 3, 4, 4), color_groups=groups)
    with pytest.raises(ValueError, match=r"color_groups \(3\) must divide the output's 4"):
        assert_autoregressive(MaskedConv2d(3, 4, 3, "B"), (1, 3, 4, 4), color_groups=3)


def test_a_leaking_mask_is_caught():
    conv = MaskedConv2d(1, 1, 3, "A")
    conv.mask[:, :, 1, 1] = 1  # the centre tap is used: the pixel sees itself
    with pytest.raises(AssertionError, match=r"depends on input"):
        assert_autoregressive(conv, (1, 1, 4, 4))


def _earlier_pixels_within(n, size, centre):
    """Pixels strictly before `centre` in raster order within n rows above and n columns on
    either side: what n layers of 3x3 kernels should see."""
    r, c = centre
    want = torch.zeros(size, size, dtype=torch.bool)
    want[max(r - n, 0) : r, max(c - n, 0) : c + n + 1] = True
    want[r, max(c - n, 0) : c] = True
    return want


def test_pixelcnn_stack_has_the_blind_spot():
    field = receptive_field(PixelCNNStack(5), (1, 1, 11, 11), (0, 0, 5, 5))[0, 0]
    want = _earlier_pixels_within(5, 11, (5, 5))
    assert not (field & ~want).any()  # nothing it should not see ...
    # ... but misses a wedge up and to the right: i rows up, the columns from 6 + i on.
    blind = torch.zeros(11, 11, dtype=torch.bool)
    for i in range(1, 5):
        blind[5 - i, 6 + i :] = True
    torch.testing.assert_close(want & ~field, blind)
    assert_autoregressive(PixelCNNStack(3), (1, 1, 5, 5))


def test_gated_pixelcnn_stack_sees_every_earlier_pixel():
    field = receptive_field(GatedPixelCNNStack(5), (1, 1, 11, 11), (0, 0, 5, 5))[0, 0]
    torch.testing.assert_close(field, _earlier_pixels_within(5, 11, (5, 5)))
    assert_autoregressive(GatedPixelCNNStack(3), (1, 1, 5, 5))


@pytest.mark.parametrize("cond_shape", [(2, 3), (2, 3, 5, 5)])
def test_gated_layer_conditioning_changes_output_and_stays_autoregressive(cond_shape):
    stack = GatedPixelCNNStack(2, cond_channels=3)
    x = torch.randn(2, 1, 5, 5)
    c1, c2 = torch.randn(cond_shape), torch.randn(cond_shape)
    assert not torch.allclose(stack(x, c1), stack(x, c2))
    if len(cond_shape) == 2:
        class WithCond(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.stack = stack

            def forward(self, x):
                return self.stack(x, c1[:1].to(x.dtype))
        assert_autoregressive(WithCond(), (1, 1, 4, 4))


@pytest.mark.parametrize("kernel_size,dilation,shift", [(2, 1, False), (3, 2, False),
                                                        (2, 4, True), (1, 1, True)])
def test_causal_conv(kernel_size, dilation, shift):
    conv = CausalConv1d(2, 3, kernel_size, dilation=dilation, shift=shift).double()
    x = torch.randn(2, 2, 17, dtype=torch.float64)
    y = conv(x)
    assert y.shape == (2, 3, 17)
    left = dilation * (kernel_size - 1) + int(shift)
    ref = F.conv1d(F.pad(x, (left, 0)), conv.weight, conv.bias, dilation=dilation)[..., :17]
    torch.testing.assert_close(y, ref)
    assert_autoregressive(conv, (1, 2, 12), ordering="causal", inclusive=not shift)
    field = receptive_field(conv, (1, 2, 30), (0, 0, 20))[0].any(dim=0)
    assert field.nonzero().flatten().tolist() == [
        20 - int(shift) - dilation * i for i in reversed(range(kernel_size))]


def test_wavenet_stack_is_causal_with_the_expected_field():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.first = CausalConv1d(1, 4, 2, shift=True)
            self.blocks = torch.nn.ModuleList(
                [WaveNetBlock(4, 8, 5, d, global_cond_channels=3, local_cond_channels=2)
                 for d in (1, 2, 4)])

        def forward(self, x):
            x, skip = self.first(x), 0
            g, loc = torch.ones(x.shape[0], 3, dtype=x.dtype), torch.ones_like(x[:, :2])
            for block in self.blocks:
                x, s = block(x, g, loc)
                skip = skip + s
            return skip

    assert_autoregressive(Net(), (1, 1, 12), ordering="causal")
    field = receptive_field(Net(), (1, 1, 30), (0, 0, 20))[0, 0]
    # The shifted first conv reads t-2 and t-1; the blocks reach 1 + 2 + 4 steps further back.
    assert field.nonzero().flatten().tolist() == list(range(20 - 2 - 7, 20))


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="mask_type must be 'A' or 'B', got 'C'"):
        MaskedConv2d(3, 3, 3, "C")
    with pytest.raises(ValueError, match="kernel sizes must be odd"):
        MaskedConv2d(3, 3, 4, "A")
    with pytest.raises(ValueError, match=r"in_channels \(4\) and out_channels \(6\) must be "
                                         r"divisible by color_groups \(3\)"):
        MaskedConv2d(4, 6, 3, "A", color_groups=3)
    with pytest.raises(ValueError, match="color_groups must be 1 or 3"):
        MaskedConv2d(4, 4, 3, "A", color_groups=2)
    with pytest.raises(ValueError, match="kernel_size must be odd and >= 3"):
        GatedPixelCNNLayer(4, 4, "B")
    with pytest.raises(ValueError, match="gate_channels must be even"):
        WaveNetBlock(4, 7, 4, 1)
    with pytest.raises(ValueError, match=r"MaskedConv2d: dilation must be a positive int or a "
                                         r"pair of them, got \(2, 1, 1\)"):
        MaskedConv2d(3, 3, 3, "A", dilation=(2, 1, 1))
    with pytest.raises(ValueError, match=r"MaskedConv2d: kernel_size must be .* got \(3, 0\)"):
        MaskedConv2d(3, 3, (3, 0), "A")
    with pytest.raises(ValueError, match=r"CausalConv1d: dilation must be a positive int, got "
                                         r"\(2, 1\)"):
        CausalConv1d(3, 3, 2, dilation=(2, 1))
    with pytest.raises(ValueError, match="kernel_size must be odd and >= 3"):
        GatedPixelCNNLayer(4, (3, 3), "B")


def test_blind_spot_figure(tmp_path):
    from fastar.plot import blind_spot_figure, receptive_field as plot_field

    path = tmp_path / "blind_spot.png"
    pixelcnn, gated = blind_spot_figure(str(path))
    assert path.stat().st_size > 0
    assert ((gated > 0) & (pixelcnn == 0)).sum() == 10  # the blind wedge, seen only by Gated
    assert not ((pixelcnn > 0) & (gated == 0)).any()
    heat = plot_field(MaskedConv2d(3, 3, 5, "B", 3), (1, 3, 7, 7), (0, 1, 3, 3),
                      str(tmp_path / "one.png"))
    assert heat.shape == (7, 7) and heat[3, 3] == 2  # G sees R and G at its own pixel


@pytest.mark.parametrize("device", DEVICES)
def test_blocks_match_their_unfused_versions_float64(device):
    gated = GatedPixelCNNLayer(4, 5, "B", cond_channels=3).double().to(device)
    wavenet = WaveNetBlock(4, 6, 5, 2, 3, global_cond_channels=3,
                           local_cond_channels=2).double().to(device)
    v, h = (torch.randn(2, 4, 6, 7, dtype=torch.float64, device=device, requires_grad=True)
            for _ in range(2))
    x = torch.randn(2, 4, 20, dtype=torch.float64, device=device, requires_grad=True)
    g, loc = torch.randn(2, 3, dtype=torch.float64, device=device), torch.randn(
        2, 2, 20, dtype=torch.float64, device=device)

    def run():
        outs = gated(v, h, g) + wavenet(x, g, loc)
        loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype, device=device)
                    .view_as(o)).sum() for o in outs)
        return outs, torch.autograd.grad(loss, (v, h, x) + tuple(gated.parameters()))

    fused = run()
    with fastar.ops.implementation("reference"):
        unfused = run()
    for a, b in zip(fused[0] + fused[1], unfused[0] + unfused[1]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("mask_type,cond,channels", [("A", False, 6), ("B", False, 6),
                                                    ("B", True, 6), ("B", True, 1)])
def test_gated_layer_channels_last_path_equals_the_contiguous_one_float64(mask_type, cond,
                                                                          channels):
    # Channels-last inputs take the fused link (an in-place batched product into the
    # horizontal convolution's output) and the channels-last gate; contiguous ones the padded
    # copy and the separate 1x1 convolution. Both against the unfused reference ops.
    torch.manual_seed(0)
    cin = 3 if mask_type == "A" else channels
    layer = GatedPixelCNNLayer(channels, 3, mask_type, cond_channels=2 if cond else None,
                               in_channels=cin).double()
    v, h = (torch.randn(2, cin, 5, 4, dtype=torch.float64) for _ in range(2))
    c = torch.randn(2, 2, dtype=torch.float64) if cond else None

    def run(v, h):
        v, h = v.clone().requires_grad_(), h.clone().requires_grad_()
        outs = layer(v, h, c)
        loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum()
                   for o in outs)
        return outs, torch.autograd.grad(loss, (v, h) + tuple(layer.parameters()))

    cl = torch.channels_last
    (outs, grads), (outs_cl, grads_cl) = run(v, h), run(v.contiguous(memory_format=cl),
                                                       h.contiguous(memory_format=cl))
    with fastar.ops.implementation("reference"):
        outs_ref, grads_ref = run(v, h)
    assert all(o.is_contiguous(memory_format=cl) for o in outs_cl if o.shape[1] > 1)
    for a, b, r in zip(outs_cl + grads_cl, outs + grads, outs_ref + grads_ref):
        torch.testing.assert_close(a, r)
        torch.testing.assert_close(b, r)


def test_gated_model_runs_under_autocast_and_1x1_layers_take_unbatched_input():
    # The fused link adds a float32 weight's product into a bfloat16 output under autocast.
    model = GatedPixelCNN(image_shape=(1, 4, 4), hidden_channels=4, num_layers=2,
                          head_channels=6)
    x = torch.randint(0, 2, (3, 1, 4, 4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model.log_prob(x)
    torch.testing.assert_close(low.float(), model.log_prob(x), rtol=0.05, atol=0.5)
    # A 1x1 layer as nn.Conv2d: (C, H, W) input too.
    layer, conv = PointwiseConv2d(4, 3), torch.nn.Conv2d(4, 3, 1)
    conv.load_state_dict(layer.state_dict())
    for x in (torch.randn(4, 5, 6), torch.randn(2, 4, 5, 6)):
        torch.testing.assert_close(layer(x), conv(x))


def test_the_implementation_switch_reaches_every_layer_and_restores():
    # The fused op refuses a cond of another dtype; the reference broadcasts and promotes:
    # which one ran shows which implementation the layer used.
    block = WaveNetBlock(2, 4, 3, 1, global_cond_channels=3).double()
    x, g = torch.randn(1, 2, 5, dtype=torch.float64), torch.randn(1, 3, dtype=torch.float64)
    block.global_cond.float()
    with pytest.raises(RuntimeError, match="fastar::gated_activation: expected cond to have"):
        block(x, g.float())
    with fastar.ops.implementation("reference"):
        assert fastar.ops.current_implementation() == "reference"
        block(x, g.float())
    assert fastar.ops.current_implementation() == "fused"
    with pytest.raises(ValueError, match="expected one of"):
        with fastar.ops.implementation("cuda"):
            pass


def test_gated_layer_honours_pruned_weights_on_the_channels_last_path():
    # Pruning recomputes v_to_h.weight in a forward pre-hook: the fused link must not bypass it.
    torch.manual_seed(0)
    layer = GatedPixelCNNLayer(4, 3, "B").double()
    torch.nn.utils.prune.random_unstructured(layer.v_to_h, "weight", amount=0.5)
    with torch.no_grad():  # as an optimizer step would: .weight is stale until the next hook
        layer.v_to_h.weight_orig.mul_(2)
    v, h = (torch.randn(2, 4, 5, 4, dtype=torch.float64) for _ in range(2))
    cl = torch.channels_last
    out_cl = layer(v.contiguous(memory_format=cl), h.contiguous(memory_format=cl))
    for a, b in zip(out_cl, layer(v, h)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("layout", ["channels_last", "contiguous", "unbatched"])
def test_1x1_layers_add_a_residual_as_the_sum_would(layout):
    # add_to accumulates the product into residual + bias in place (same dtypes) or adds it
    # afterwards, also after a fused ReLU (relu_input, PixelCNN's blocks); values and every
    # gradient as conv(x) + residual.
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 3, dtype=torch.float64)
    r = torch.randn(2, 6, 5, 3, dtype=torch.float64)
    if layout == "channels_last":
        x, r = channels_last(x), channels_last(r)
    elif layout == "unbatched":
        x, r = x[0], r[0]
    for layer in (PointwiseConv2d(4, 6), MaskedConv2d(4, 6, 1, "B"), MaskedConv2d(4, 6, 3, "B"),
                  PointwiseConv2d(4, 6, bias=False)):
        layer = layer.double()
        xs, rs = x.clone().requires_grad_(), r.clone().requires_grad_()
        y = layer(xs, add_to=rs)
        g = torch.randn_like(y)
        grads = torch.autograd.grad(y, [xs, rs] + list(layer.parameters()), g)
        xs2, rs2 = x.clone().requires_grad_(), r.clone().requires_grad_()
        y2 = layer(xs2) + rs2
        grads2 = torch.autograd.grad(y2, [xs2, rs2] + list(layer.parameters()), g)
        torch.testing.assert_close(y, y2)
        for a, b in zip(grads, grads2):
            torch.testing.assert_close(a, b)
        y3 = layer(xs, add_to=rs, relu_input=True)
        grads3 = torch.autograd.grad(y3, [xs, rs] + list(layer.parameters()), g)
        y4 = layer(F.relu(xs2)) + rs2
        grads4 = torch.autograd.grad(y4, [xs2, rs2] + list(layer.parameters()), g)
        torch.testing.assert_close(y3, y4)
        for a, b in zip(grads3, grads4):
            torch.testing.assert_close(a, b)
    # Mixed dtypes and a broadcast residual take the unfused sum (type promotion, broadcasting).
    layer = PointwiseConv2d(4, 6).double()
    torch.testing.assert_close(layer(x, add_to=r.float()), layer(x) + r.float())
    torch.testing.assert_close(layer(x, add_to=r[..., :1, :]), layer(x) + r[..., :1, :])


def test_residual_block_forward_hooks_see_the_convolutions_own_output():
    from fastar.models.pixelcnn import _ResidualBlock
    torch.manual_seed(0)
    block = _ResidualBlock(4, 1).double()
    x = channels_last(torch.randn(2, 4, 5, 5, dtype=torch.float64))
    want = block(x)
    seen = []
    block.net[-1].register_forward_hook(lambda m, args, out: seen.append(out))
    torch.testing.assert_close(block(x), want)
    torch.testing.assert_close(seen[0], want - x)


def test_gated_layer_hooked_h_out_sees_its_own_output():
    # The residual goes into h_out's product only without hooks: a forward hook sees h_out(h).
    torch.manual_seed(0)
    layer = GatedPixelCNNLayer(4, 3, "B").double()
    v, h = (channels_last(torch.randn(2, 4, 5, 4, dtype=torch.float64)) for _ in range(2))
    want_v, want_h = layer(v, h)
    seen = []
    layer.h_out.register_forward_hook(lambda m, args, out: seen.append(out))
    got_v, got_h = layer(v, h)
    torch.testing.assert_close(got_h, want_h)
    torch.testing.assert_close(seen[0], want_h - h)
