"""The fused GRU's backward through time: the kernels of ``_FusedGRU.backward`` (gru_fused.py).

Everything that does not depend on the incoming gradient (the sigmoid and tanh derivatives and
their products) is computed for a block of steps at once, so each step is one broadcast multiply
writing all gate gradients, one ``addcmul`` and one matmul for dh (``reset="after"``); dW_hh, dW_ih
and dx are then ONE matmul each over the stacked ``[T*B, .]`` gate gradients and the bias gradients
one sum (per time chunk of the forward for very long inputs). Imports nothing of grutrain but the
GRU's own modules.
"""

from __future__ import annotations

import torch
from torch import Tensor

from grutrain.gru.matmul import accumulate_mm, batched_lowp, lowered, mm_into, step_matmul


def _rotate_rows(w: Tensor, hidden: int) -> Tensor:
    """Rows (r, z, n) -> (n, r, z) along dim 0; a small copy of a weight or bias."""
    return torch.cat((w[2 * hidden :], w[: 2 * hidden]))


_BLOCK_BYTES = 2**20


def _blocks(L: int, row_bytes: int) -> list[tuple[int, int]]:
    """Sub-blocks of a chunk's L steps, ~_BLOCK_BYTES of gradient buffer each (L2-resident)."""
    steps = max(1, min(L, _BLOCK_BYTES // max(1, row_bytes)))
    return [(b0, min(L, b0 + steps)) for b0 in range(0, L, steps)]


def _bounds(saved: tuple[Tensor, ...]) -> list[tuple[int, int]]:
    """(t0, t1) of each saved chunk, from their lengths."""
    bounds, t0 = [], 0
    for S in saved:
        bounds.append((t0, t0 + S.shape[0]))
        t0 += S.shape[0]
    return bounds


# --------------------------------------------------------------------------------------------
# backward kernels, walking the chunks (and the steps in each) backwards in time
# --------------------------------------------------------------------------------------------


def backward_after(saved_S, saved_N, Y, x, w_ih, w_hh, grad_out, grad_hT, needs, lowp=None):
    T, B, I = x.shape
    H = w_hh.shape[1]
    need_x, need_h0, need_wih, need_whh, need_bih, need_bhh = needs
    steps_max = saved_S[0].shape[0]
    K_buf = Y.new_empty((steps_max, B, 4 * H))
    tmp_buf = Y.new_empty((_blocks(steps_max, B * 4 * H * Y.element_size())[0][1], B, H))
    one = Y.new_ones(())
    lowp = batched_lowp(lowp, H)
    w_roll = lowered(_rotate_rows(w_ih, H), lowp) if need_x else None  # [3H, I] rows n, r, z
    # acc += g W_hh, g [B, 3H]. float32: plain addmm (MKL packing of W_hh^T was not measurably
    # faster here, and it would add its buffer to the backward's peak memory).
    hidden_mm = step_matmul(w_hh.t(), B, max_packed_bytes=0, lowp=lowp, steps=T)
    dx = x.new_empty((T, B, I)) if need_x else None
    dw_hh = dw_roll = db = None
    ping, pong = torch.empty_like(Y[0]), torch.empty_like(Y[0])
    gos = grad_out.unbind(0)
    dh = gos[T - 1] + grad_hT

    for (t0, t1), S, N in zip(reversed(_bounds(saved_S)), reversed(saved_S), reversed(saved_N)):
        L = t1 - t0
        K = K_buf[:L]
        # dL/d(pre-activations) = dh_t * K_t with K independent of dh, so K is computed for a
        # block of steps at once (a few vectorised ops instead of ~10 small ones per step):
        #   da_n = dh (1-z)(1-n^2)          dhn  = da_n r           (hn = h W_hn^T + b_hn)
        #   da_z = dh (h-n) z(1-z)          da_r = da_n hn r(1-r)
        # Columns [da_n | da_r | da_z | dhn]: 0:3H are the input-side gate gradients (rows of
        # weight_ih rotated to n, r, z), H:4H the hidden-side ones (weight_hh's r, z, n).
        # Blocks of ~1 MiB keep K in L2 between being computed and being scaled by dh.
        for b0, b1 in reversed(_blocks(L, B * 4 * H * K.element_size())):
            Kb, Sb, nb, h_prev = K[b0:b1], S[b0:b1], N[b0:b1], Y[t0 + b0 : t0 + b1]
            r, z, hn = Sb[..., :H], Sb[..., H : 2 * H], Sb[..., 2 * H :]
            Kn, Kr, Kz, Khn = Kb[..., :H], Kb[..., H : 2 * H], Kb[..., 2 * H : 3 * H], Kb[..., 3 * H :]
            tmp = torch.sub(one, z, out=tmp_buf[: b1 - b0])  # 1 - z
            torch.addcmul(one, nb, nb, value=-1, out=Kn).mul_(tmp)
            torch.sub(h_prev, nb, out=Kz).mul_(z).mul_(tmp)
            torch.mul(Kn, r, out=Khn)
            torch.sub(one, r, out=tmp)  # 1 - r
            torch.mul(Khn, hn, out=Kr).mul_(tmp)

            # Per step: one multiply writes all four gradient blocks, then
            # dh_{t-1} = g_{t-1} + dh z + [da_r | da_z | dhn] W_hh: one addcmul, one addmm_.
            K4 = Kb.view(b1 - b0, B, 4, H).unbind(0)
            Gh = Kb[..., H:].unbind(0)  # [B, 3H] r | z | hn
            zs = z.unbind(0)
            for i in range(b1 - b0 - 1, -1, -1):
                t = t0 + b0 + i
                K4[i].mul_(dh.unsqueeze(1))
                nxt = ping if t & 1 else pong  # never the buffer dh is in
                if t > 0:
                    torch.addcmul(gos[t - 1], dh, zs[i], out=nxt)
                elif need_h0:
                    torch.mul(dh, zs[i], out=nxt)
                else:
                    break
                dh = hidden_mm(nxt, Gh[i])

        h_prev = Y[t0:t1]
        G2 = K.view(L * B, 4 * H)
        # The batched products' operands (rounded once per chunk for mixed precision).
        G2m = lowered(G2, lowp) if (need_whh or need_wih or need_x) else G2
        Gx = G2m[:, : 3 * H]  # input-side gate gradients, columns n, r, z
        if need_whh:
            h2 = lowered(h_prev.reshape(L * B, H), lowp)
            dw_hh = accumulate_mm(dw_hh, G2m[:, H:].t(), h2, Y.dtype)  # [3H, H]
        if need_wih:
            x2 = lowered(x[t0:t1].reshape(L * B, I), lowp)
            dw_roll = accumulate_mm(dw_roll, Gx.t(), x2, Y.dtype)  # [3H, I]
        if need_x:
            mm_into(dx[t0:t1].view(L * B, I), Gx, w_roll)
        if need_bih or need_bhh:
            s = G2.sum(0)  # [4H]: da_n | da_r | da_z | dhn
            db = s if db is None else db.add_(s)

    dh0 = dh if need_h0 else None
    dw_ih = torch.cat((dw_roll[H:], dw_roll[:H])) if need_wih else None
    db_ih = torch.cat((db[H : 3 * H], db[:H])) if need_bih else None
    db_hh = db[H:].clone() if need_bhh else None
    return dx, dh0, dw_ih, dw_hh, db_ih, db_hh


def backward_before(saved_S, saved_N, Y, x, w_ih, w_hh, grad_out, grad_hT, needs, lowp=None):
    T, B, I = x.shape
    H = w_hh.shape[1]
    need_x, need_h0, need_wih, need_whh, need_bih, need_bhh = needs
    steps_max = saved_S[0].shape[0]
    K_buf = Y.new_empty((steps_max, B, 3 * H))
    tmp_buf = Y.new_empty((_blocks(steps_max, B * 3 * H * Y.element_size())[0][1], B, H))
    one = Y.new_ones(())
    lowp = batched_lowp(lowp, H)
    # acc += g W_{hr,hz} (g [B, 2H]) and acc += g W_hn (g [B, H]); float32 unpacked, as "after".
    hidden_rz_mm = step_matmul(w_hh[: 2 * H].t(), B, max_packed_bytes=0, lowp=lowp, steps=T)
    hidden_n_mm = step_matmul(w_hh[2 * H :].t(), B, max_packed_bytes=0, lowp=lowp, steps=T)
    w_ih_m = lowered(w_ih, lowp) if need_x else None
    dx = x.new_empty((T, B, I)) if need_x else None
    dw_hrz = dw_hn = dw_ih = db = None
    ping, pong = torch.empty_like(Y[0]), torch.empty_like(Y[0])
    drh = torch.empty_like(Y[0])
    gos = grad_out.unbind(0)
    dh = gos[T - 1] + grad_hT

    for (t0, t1), S, N in zip(reversed(_bounds(saved_S)), reversed(saved_S), reversed(saved_N)):
        L = t1 - t0
        K = K_buf[:L]  # columns [da_r | da_z | da_n]
        #   da_n = dh (1-z)(1-n^2)     da_z = dh (h-n) z(1-z)
        #   d(rh) = da_n W_hn          da_r = d(rh) h r(1-r)
        for b0, b1 in reversed(_blocks(L, B * 3 * H * K.element_size())):
            Kb, Sb, nb, h_prev = K[b0:b1], S[b0:b1], N[b0:b1], Y[t0 + b0 : t0 + b1]
            r, z = Sb[..., :H], Sb[..., H : 2 * H]
            Kr, Kz, Kn = Kb[..., :H], Kb[..., H : 2 * H], Kb[..., 2 * H :]
            tmp = torch.sub(one, z, out=tmp_buf[: b1 - b0])
            torch.addcmul(one, nb, nb, value=-1, out=Kn).mul_(tmp)
            torch.sub(h_prev, nb, out=Kz).mul_(z).mul_(tmp)
            torch.sub(one, r, out=tmp)
            torch.mul(r, tmp, out=Kr).mul_(h_prev)

            Kzn = Kb[..., H:].unflatten(-1, (2, H)).unbind(0)  # [B, 2, H] da_z | da_n
            Krz = Kb[..., : 2 * H].unbind(0)  # [B, 2H]
            Kns, Krs, zs, rs = Kn.unbind(0), Kr.unbind(0), z.unbind(0), r.unbind(0)
            for i in range(b1 - b0 - 1, -1, -1):
                t = t0 + b0 + i
                Kzn[i].mul_(dh.unsqueeze(1))
                hidden_n_mm(drh.zero_(), Kns[i])  # d(r*h)
                Krs[i].mul_(drh)  # da_r
                nxt = ping if t & 1 else pong
                if t > 0:
                    torch.addcmul(gos[t - 1], dh, zs[i], out=nxt)
                elif need_h0:
                    torch.mul(dh, zs[i], out=nxt)
                else:
                    break
                nxt.addcmul_(drh, rs[i])
                dh = hidden_rz_mm(nxt, Krz[i])

        h_prev, rh = Y[t0:t1], S[..., 2 * H :]
        G2 = K.view(L * B, 3 * H)
        G2m = lowered(G2, lowp) if (need_whh or need_wih or need_x) else G2
        if need_whh:
            # The hidden matmul is split in forward (r*h feeds W_hn), so is its gradient.
            h2, rh2 = lowered(h_prev.reshape(L * B, H), lowp), lowered(rh.reshape(L * B, H), lowp)
            dw_hrz = accumulate_mm(dw_hrz, G2m[:, : 2 * H].t(), h2, Y.dtype)
            dw_hn = accumulate_mm(dw_hn, G2m[:, 2 * H :].t(), rh2, Y.dtype)
        if need_wih:
            dw_ih = accumulate_mm(dw_ih, G2m.t(), lowered(x[t0:t1].reshape(L * B, I), lowp), Y.dtype)
        if need_x:
            mm_into(dx[t0:t1].view(L * B, I), G2m, w_ih_m)
        if need_bih or need_bhh:
            s = G2.sum(0)  # both biases enter the same pre-activations
            db = s if db is None else db.add_(s)

    dh0 = dh if need_h0 else None
    dw_hh = torch.cat((dw_hrz, dw_hn)) if need_whh else None
    db_ih = db if need_bih else None
    db_hh = (db.clone() if need_bih else db) if need_bhh else None
    return dx, dh0, dw_ih, dw_hh, db_ih, db_hh
