"""The Optimal-Brain-Surgeon column sweep that GPTQ and SparseGPT share (Frantar et al. 2022, 2023).

Both walk the input columns in order; column j is replaced (quantized or masked) and its scaled error
e_j = (w_j - q_j) / U_jj is spread over the later columns as w_k -= e_j·U_jk, with U the upper Cholesky
factor of (H + λI)⁻¹. The reference code does the spreading lazily per block of 128 columns: rank-1 updates
inside the block, one matmul for the rest of the matrix. On a CPU the rank-1 updates (memory bound) then
dominate, so the block is split once more into sub-blocks of 16 columns: rank-1 updates inside a sub-block, a
matmul for the rest of the block. Same arithmetic, in another order.

Work happens on Wᵀ (one contiguous row per input column), so a column's vector ops read contiguous memory.

Examples:
    H, dead = mark_dead(H)
    W[:, dead] = 0
    U = hessian_inverse_factor(H, percdamp=0.01)
    loss = sweep(WT, U, block=128, step=my_step)      # my_step(j, e) writes (w_j - q_j) / U_jj into e
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from llmctl.errors import LlmctlError

SUB_BLOCK = 16  # columns per rank-1 sub-block (CPU: 8–32 measured within noise, 128 about 3× slower)


@contextlib.contextmanager
def single_thread():
    """Run the column sweeps and factorizations on one thread, then restore torch's setting.

    Their ops are small (vectors of a few thousand floats, matrices up to 1536²): on 2 cores a second thread
    gains little when idle, and under a second busy process (OpenMP threads spinning for a core) the same
    sweeps measured 5–8× more CPU time with 2 threads than with 1 (benchmarks/compress_speed.py, issue 16).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def mark_dead(H):
    """A float32 (float64 stays float64) copy of H, dead inputs (diag H = 0) set to 1 on the diagonal; and the mask.

    The caller zeroes those input columns of W: they never see a non-zero input.
    """
    import torch

    H = H.detach().to(torch.float64 if H.dtype == torch.float64 else torch.float32).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    return H, dead


def hessian_inverse_factor(H, percdamp: float = 0.01):
    """Upper Cholesky factor of (H + λI)⁻¹ with λ = percdamp·mean(diag H), returned in H's dtype.

    Computed in float64: the reference code does it in float32, where the default model's wide-ranging
    activations (down_proj inputs) make the three factorizations lose digits. Measured on the default model
    (GPTQ 4-bit g128, WikiText-2 ppl): float32 38.29 / 38.21 / 37.94 over three float-level perturbations
    vs 36.53 / 37.69 in float64 at 8×512 calibration and 4,096 tokens; 35.11 vs 34.57 at 32×512 and 16,384
    tokens (neural-compressor: 38.02 and 35.39). It costs < 1 % of GPTQ's time.
    If H + λI is not positive definite (rank-deficient calibration), λ is raised tenfold until it is.
    """
    import torch

    H64 = H.to(torch.float64)
    damp = percdamp * torch.mean(torch.diag(H64))
    eye = torch.eye(H.shape[0], dtype=torch.float64, device=H.device)
    for _ in range(6):
        L, info = torch.linalg.cholesky_ex(H64 + damp * eye)
        if int(info) == 0:
            return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True).to(H.dtype)
        damp = damp * 10
    raise LlmctlError(
        "the calibration Hessian is not positive definite even with strong damping",
        hint="give more or more varied calibration data (--calib-samples)",
    )


def sweep(WT, U, block: int, step: Callable, sub: int = SUB_BLOCK) -> float:
    """Walk the columns of W (rows of WT, updated in place) in blocks; returns ½ Σ e², the reference's loss.

    step(j, e) sees WT[j] with every earlier column's error already spread onto it and writes
    (w_j - q_j) / U_jj into e (a row of the block's error buffer). Blocks of `block` columns start at
    multiples of `block`, so a step can set up per-block or per-group state when j % block == 0.
    """
    import torch

    cols, rows = WT.shape
    loss = 0.0
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        err = torch.empty(i2 - i1, rows, dtype=WT.dtype)
        for s1 in range(i1, i2, sub):
            s2 = min(s1 + sub, i2)
            for j in range(s1, s2):
                e = err[j - i1]
                step(j, e)
                if j + 1 < s2:
                    WT[j + 1 : s2].addr_(U[j, j + 1 : s2], e, alpha=-1)
            if s2 < i2:
                WT[s2:i2].addmm_(U[s1:s2, s2:i2].t(), err[s1 - i1 : s2 - i1], alpha=-1)
        loss += 0.5 * float((err * err).sum())
        if i2 < cols:
            WT[i2:].addmm_(U[i1:i2, i2:].t(), err, alpha=-1)
    return loss
