"""Q4_K and Q6_K quantization in numpy (gguf-py decodes these block formats but cannot encode them).

Both work on super-blocks of 256 values (QK_K), vectorized over all blocks of a tensor:

- Q4_K: 8 sub-blocks of 32, x ~ d * sc_j * q - dmin * m_j with q in 0..15 and 6-bit sc_j, m_j. Each sub-block's
  (scale, min) is a weighted least-squares fit over a small grid of candidate scales (weights |x| + rms(x),
  so large weights count more), as llama.cpp's reference quantizer does.
- Q6_K: 16 sub-blocks of 16, x ~ d * sc_j * (q - 32) with q in 0..63 and 8-bit signed sc_j.

Block layouts are llama.cpp's; tests decode the bytes with gguf-py's own dequantizer.
"""

from __future__ import annotations

import numpy as np

QK_K = 256


def _rint(x: np.ndarray) -> np.ndarray:
    return np.rint(x).astype(np.int32)  # round half to even, as ggml's nearest_int


def _fit_scale_min(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of x (R, n): (scale >= 0, min >= 0) with x ~ scale * q - min, q in 0..nmax."""
    w = np.sqrt(np.mean(x * x, axis=1, keepdims=True)) + np.abs(x)
    lo = np.minimum(x.min(axis=1, keepdims=True), 0.0)
    hi = x.max(axis=1, keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    sw, sx = w.sum(axis=1, keepdims=True), (w * x).sum(axis=1, keepdims=True)
    scale, low = span / nmax, lo.copy()
    best = (w * (scale * np.clip(_rint((x - lo) * nmax / span), 0, nmax) + lo - x) ** 2).sum(axis=1, keepdims=True)
    for step in range(21):  # candidate inverse scales (nmax - 1 + 0.1 * step) / span
        q = np.clip(_rint((x - lo) * (nmax - 1.0 + 0.1 * step) / span), 0, nmax).astype(np.float32)
        wq = w * q
        sl, sl2, sxl = wq.sum(1, keepdims=True), (wq * q).sum(1, keepdims=True), (wq * x).sum(1, keepdims=True)
        det = sw * sl2 - sl * sl
        ok = det > 0
        safe = np.where(ok, det, 1.0)
        s = (sw * sxl - sx * sl) / safe
        m = (sl2 * sx - sl * sxl) / safe
        pos = m > 0  # the offset must stay <= 0: refit the scale alone
        s = np.where(pos, sxl / np.where(sl2 > 0, sl2, 1.0), s)
        m = np.where(pos, 0.0, m)
        err = (w * (s * q + m - x) ** 2).sum(axis=1, keepdims=True)
        better = ok & (err < best)
        best, scale, low = np.where(better, err, best), np.where(better, s, scale), np.where(better, m, low)
    flat = hi <= lo
    return np.where(flat, 0.0, scale)[:, 0], np.where(flat, -lo, -low)[:, 0]


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """(rows, cols) float -> (rows, cols / 256 * 144) uint8 Q4_K blocks; cols must be a multiple of 256."""
    rows, cols = x.shape
    blocks = x.astype(np.float32).reshape(-1, 8, 32)  # (B, sub-block, value)
    n = blocks.shape[0]
    scale, low = _fit_scale_min(blocks.reshape(-1, 32), 15)
    scale, low = scale.reshape(n, 8), low.reshape(n, 8)
    max_scale, max_min = scale.max(axis=1, keepdims=True), low.max(axis=1, keepdims=True)
    ls = np.where(max_scale > 0, np.minimum(_rint(scale * 63 / np.where(max_scale > 0, max_scale, 1)), 63), 0)
    lm = np.where(max_min > 0, np.minimum(_rint(low * 63 / np.where(max_min > 0, max_min, 1)), 63), 0)
    d = (max_scale / 63).astype(np.float16)
    dmin = (max_min / 63).astype(np.float16)
    step = d.astype(np.float32) * ls  # (B, 8) effective sub-block scales after rounding
    offset = dmin.astype(np.float32) * lm
    q = np.clip(_rint((blocks + offset[..., None]) / np.where(step > 0, step, 1)[..., None]), 0, 15)
    q = np.where(step[..., None] > 0, q, 0).astype(np.uint8)
    packed_scales = _pack_q4_k_scales(ls.astype(np.uint8), lm.astype(np.uint8))
    pairs = q.reshape(n, 4, 2, 32)  # sub-blocks 2k and 2k + 1 share bytes: low and high nibble
    qs = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(n, 128)
    out = np.concatenate([d.view(np.uint8).reshape(n, 2), dmin.view(np.uint8).reshape(n, 2), packed_scales, qs], 1)
    return out.reshape(rows, cols // QK_K * 144)


def _pack_q4_k_scales(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """8 six-bit scales and mins -> 12 bytes (llama.cpp's get_scale_min_k4 layout)."""
    out = np.zeros((ls.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    out[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:8] & 0x0F) | ((lm[:, 4:8] & 0x0F) << 4)
    return out


def _symmetric_scales(x: np.ndarray, nmax: int) -> np.ndarray:
    """Per row of x (R, n): scale s with x ~ s * l, l in -nmax..nmax-1, fit by least squares over a grid."""
    idx = np.abs(x).argmax(axis=1)
    peak = x[np.arange(x.shape[0]), idx][:, None]
    safe = np.where(np.abs(peak) > 1e-15, peak, 1.0)
    w = x * x
    best_s, best = np.zeros_like(peak), np.full_like(peak, -np.inf)
    for step in range(-9, 10):  # candidate inverse scales -(nmax + 0.1 * step) / peak
        lq = np.clip(_rint(x * (-(nmax + 0.1 * step) / safe)), -nmax, nmax - 1).astype(np.float32)
        sl2, slx = (w * lq * lq).sum(1, keepdims=True), (w * lq * x).sum(1, keepdims=True)
        ok = sl2 > 0
        s = slx / np.where(ok, sl2, 1.0)
        gain = np.where(ok, s * slx, -np.inf)  # error reduction of the fit
        better = gain > best
        best, best_s = np.where(better, gain, best), np.where(better, s, best_s)
    return np.where(np.abs(peak) > 1e-15, best_s, 0.0)[:, 0]


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """(rows, cols) float -> (rows, cols / 256 * 210) uint8 Q6_K blocks; cols must be a multiple of 256."""
    rows, cols = x.shape
    blocks = x.astype(np.float32).reshape(-1, 16, 16)
    n = blocks.shape[0]
    scales = _symmetric_scales(blocks.reshape(-1, 16), 32).reshape(n, 16)
    pick = np.abs(scales).argmax(axis=1)
    max_scale = scales[np.arange(n), pick][:, None]
    live = np.abs(max_scale) > 1e-15
    iscale = np.where(live, -128.0 / np.where(live, max_scale, 1.0), 0.0)
    d = np.where(live, 1.0 / np.where(live, iscale, 1.0), 0.0).astype(np.float16)
    sc = np.clip(_rint(iscale * scales), -128, 127)
    step = d.astype(np.float32) * sc
    lq = np.clip(_rint(blocks / np.where(step != 0, step, 1)[..., None]), -32, 31) + 32
    lq = np.where(step[..., None] != 0, lq, 32).astype(np.uint8).reshape(n, 2, 4, 32)  # (B, half, quarter, l)
    ql = np.concatenate([lq[:, :, 0] & 0x0F | ((lq[:, :, 2] & 0x0F) << 4),
                         lq[:, :, 1] & 0x0F | ((lq[:, :, 3] & 0x0F) << 4)], axis=2)  # (B, half, 64)
    qh = (lq[:, :, 0] >> 4) | ((lq[:, :, 1] >> 4) << 2) | ((lq[:, :, 2] >> 4) << 4) | ((lq[:, :, 3] >> 4) << 6)
    out = np.concatenate([ql.reshape(n, 128), qh.reshape(n, 64), sc.astype(np.int8).view(np.uint8),
                          d.view(np.uint8).reshape(n, 2)], axis=1)
    return out.reshape(rows, cols // QK_K * 210)
