import math

import torch
import torch.nn.functional as F
from torch import Tensor


def dmol_components(params: Tensor, num_channels: int):
    """Splits params (B, P, *S) into logits (B, K, *S) and per-channel means, log-scales and
    tanh'd coefficients, each (B, C, K, *S) (coefficients: (B, 3, K, *S), C = 3 only)."""
    B, P, *S = params.shape
    if num_channels == 1:
        K = P // 3
        logits, means, log_scales = params.split(K, dim=1)
        return logits, means[:, None], log_scales[:, None], None
    K = P // 10
    logits = params[:, :K]
    rest = params[:, K:].reshape(B, 3, 3, K, *S)  # (B, channel, [means | log_scales | coeffs], K)
    return logits, rest[:, :, 0], rest[:, :, 1], torch.tanh(rest[:, :, 2])


def _softplus(x: Tensor) -> Tensor:
    # torch's default threshold (20) returns x itself above 20: an error of e^-20 in the value
    # and a zero gradient where the true one is e^-x. At 40 the cut is below float64's epsilon.
    return F.softplus(x, threshold=40.0)


def dmol_log_prob(x: Tensor, params: Tensor, num_bins: int = 256) -> Tensor:
    """PixelCNN++'s discretized_mix_logistic_loss (as a log-probability per position), written
    the way PixelCNN++ writes it, generalised to num_bins. x: integer (B, C, *S) in
    [0, num_bins); params: (B, P, *S). Returns (B, *S)."""
    logits = dmol_components(params, x.shape[1])[0]
    log_probs = component_log_probs(x, params, num_bins).sum(dim=1)
    return torch.logsumexp(log_probs + torch.log_softmax(logits, dim=1), dim=1)


def component_log_probs(x: Tensor, params: Tensor, num_bins: int = 256) -> Tensor:
    """(B, C, K, *S): log p_k(x_c | x_<c) of each channel under each component k (the green
    and blue means shifted by the values before them), which dmol_log_prob sums over channels
    and mixes."""
    C = x.shape[1]
    _, means, log_scales, coeffs = dmol_components(params, C)
    xc = (-1 + 2 * x.to(params.dtype) / (num_bins - 1)).unsqueeze(2)  # (B, C, 1, *S)
    if C == 3:
        m0 = means[:, 0]
        m1 = means[:, 1] + coeffs[:, 0] * xc[:, 0]
        m2 = means[:, 2] + coeffs[:, 1] * xc[:, 0] + coeffs[:, 2] * xc[:, 1]
        means = torch.stack([m0, m1, m2], dim=1)
    log_scales = torch.clamp(log_scales, min=-7.0)
    h = 1.0 / (num_bins - 1)
    centered = xc - means
    inv_s = torch.exp(-log_scales)
    plus_in = inv_s * (centered + h)
    cdf_plus = torch.sigmoid(plus_in)
    min_in = inv_s * (centered - h)
    cdf_min = torch.sigmoid(min_in)
    log_cdf_plus = plus_in - _softplus(plus_in)
    log_one_minus_cdf_min = -_softplus(min_in)
    cdf_delta = cdf_plus - cdf_min
    mid_in = inv_s * centered
    log_pdf_mid = mid_in - log_scales - 2.0 * _softplus(mid_in)
    inner = torch.where(cdf_delta > 1e-5, torch.log(torch.clamp(cdf_delta, min=1e-12)),
                        log_pdf_mid - math.log((num_bins - 1) / 2))
    xb = x.unsqueeze(2)
    return torch.where(xb == 0, log_cdf_plus,
                       torch.where(xb == num_bins - 1, log_one_minus_cdf_min, inner))
