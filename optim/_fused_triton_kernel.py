r"""The Triton kernel behind :mod:`optim._fused_triton` (which builds its table and launches it).

One launch covers every tensor of a step. Program ``k`` of the grid works on ``BLOCK`` consecutive
elements of one tensor: the tensor whose first block is the last at or before ``k`` (a binary
search in the table's block starts), so a tensor of ``n`` elements gets ``ceil(n / BLOCK)``
programs and no program straddles two tensors; only a tensor's last block is masked, the others
move 16 bytes per load and store when the host found every address aligned (``ALIGNED``). Per
element it reads :math:`p, g, m, v` once,
computes in ``COMPUTE`` (float32, or float64 for float64 tensors) and rounds once on each store:

* ``FIRST_PASS``: :math:`m \leftarrow m + (1-\beta_1)(g - m)`,
  :math:`v \leftarrow \beta_2 v + (1-\beta_2) g^2` (both stored), then
  :math:`p \leftarrow \lambda p + (\alpha_g g + \alpha_m m) / (\sqrt v + \hat\epsilon)` with the
  tensor's decay :math:`\lambda`;
* otherwise (a move): :math:`p \leftarrow p + (\alpha_g g + \alpha_m m) / (\sqrt v + \hat\epsilon)`.

With ``DOT_LEFT``/``DOT_RIGHT`` set (``"grad"`` or ``"exp_avg"``, the new :math:`m`), each
program also stores its sum of :math:`a b / (\sqrt v + \hat\epsilon)` in ``partials[k]``: no
atomics, so the caller's sum of the partials is deterministic.
"""

import torch
import triton
import triton.language as tl

# torch's dtypes the kernel takes, as Triton's.
DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float64: tl.float64}

# A tensor's row of the table: the addresses of p, g, m, v, its number of elements and its decay
# (the float64's bits). After the rows come the n + 1 block starts (the last one: the grid size).
ROW = tl.constexpr(6)


@triton.jit
def _divide(x, y):
    # Triton's "/" on float32 is the approximate div.full.f32; torch divides to nearest.
    if x.dtype == tl.float64:
        quotient = x / y
    else:
        quotient = tl.div_rn(x, y)
    return quotient


@triton.jit
def _sqrt(x):
    # tl.sqrt on float32 is the approximate sqrt.approx.f32; torch's sqrt rounds to nearest.
    if x.dtype == tl.float64:
        root = tl.sqrt(x)
    else:
        root = tl.sqrt_rn(x)
    return root


@triton.jit
def _address(row, column, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    address = tl.load(row + column).to(tl.pointer_type(DTYPE))
    if ALIGNED:  # the host checked: then Triton loads and stores 16 bytes at a time
        address = tl.multiple_of(address, 16)
    return address


@triton.jit
def _step_block(
    row, first, inside, partials, program,
    one_minus_beta1, beta2, one_minus_beta2, eps_hat, alpha_grad, alpha_avg,
    DTYPE: tl.constexpr, COMPUTE: tl.constexpr, FIRST_PASS: tl.constexpr,
    DOT_LEFT: tl.constexpr, DOT_RIGHT: tl.constexpr, BLOCK: tl.constexpr, ALIGNED: tl.constexpr,
):
    """The block of ``row``'s tensor from element ``first`` on; ``inside`` masks the elements
    past its end (``None`` for a block inside it)."""
    offsets = first + tl.arange(0, BLOCK)
    p_at = _address(row, 0, DTYPE, ALIGNED) + offsets
    g_at = _address(row, 1, DTYPE, ALIGNED) + offsets
    m_at = _address(row, 2, DTYPE, ALIGNED) + offsets
    v_at = _address(row, 3, DTYPE, ALIGNED) + offsets
    p = tl.load(p_at, mask=inside).to(COMPUTE)
    g = tl.load(g_at, mask=inside).to(COMPUTE)
    m = tl.load(m_at, mask=inside).to(COMPUTE)
    v = tl.load(v_at, mask=inside).to(COMPUTE)
    if FIRST_PASS:
        m = m + tl.full((), one_minus_beta1, COMPUTE) * (g - m)
        v = tl.full((), beta2, COMPUTE) * v + tl.full((), one_minus_beta2, COMPUTE) * g * g
        tl.store(m_at, m.to(DTYPE), mask=inside)
        tl.store(v_at, v.to(DTYPE), mask=inside)
        p = p * tl.load(row + 5).to(tl.float64, bitcast=True).to(COMPUTE)
    den = _sqrt(v) + tl.full((), eps_hat, COMPUTE)
    numerator = tl.full((), alpha_grad, COMPUTE) * g + tl.full((), alpha_avg, COMPUTE) * m
    tl.store(p_at, (p + _divide(numerator, den)).to(DTYPE), mask=inside)
    if DOT_LEFT != "":
        if DOT_LEFT == "grad":
            left = g
        else:
            left = m
        if DOT_RIGHT == "grad":
            right = g
        else:
            right = m
        terms = _divide(left * right, den)
        if inside is not None:  # masked lanes hold zeros, and 0/0 is NaN when eps_hat is 0
            terms = tl.where(inside, terms, tl.zeros((BLOCK,), COMPUTE))
        tl.store(partials + program, tl.sum(terms, axis=0))


# n_tensors is not specialised: a value of 1 would turn it into a constant, which the binary
# search's loop variables cannot start from.
@triton.jit(do_not_specialize=["n_tensors"])
def fused_step(
    table,  # int64: ROW per tensor, then the tensors' first blocks and the number of blocks
    n_tensors,
    partials,  # COMPUTE, one per program: its sum of the dot's terms (None without a dot)
    one_minus_beta1: tl.float64,
    beta2: tl.float64,
    one_minus_beta2: tl.float64,
    eps_hat: tl.float64,
    alpha_grad: tl.float64,
    alpha_avg: tl.float64,
    DTYPE: tl.constexpr,
    COMPUTE: tl.constexpr,
    FIRST_PASS: tl.constexpr,
    DOT_LEFT: tl.constexpr,  # "", "grad" or "exp_avg"
    DOT_RIGHT: tl.constexpr,
    BLOCK: tl.constexpr,
    ALIGNED: tl.constexpr,  # every address in the table is a multiple of 16 bytes
):
    program = tl.program_id(0)
    starts = table + ROW * n_tensors
    # The last tensor whose first block is at or before this program: starts[lo] <= program <
    # starts[hi] throughout, and starts[n_tensors] is the number of programs.
    lo = tl.zeros((), tl.int32)
    hi = tl.zeros((), tl.int32) + n_tensors
    while hi - lo > 1:
        mid = (lo + hi) // 2
        at_or_before = tl.load(starts + mid) <= program
        lo = tl.where(at_or_before, mid, lo)
        hi = tl.where(at_or_before, hi, mid)
    row = table + ROW * lo
    # int64 (the starts are): a tensor may hold more than 2**31 elements.
    first = (program - tl.load(starts + lo)) * BLOCK
    numel = tl.load(row + 4)
    # Without a mask Triton moves 16 bytes per instruction (with ALIGNED); only the tensor's
    # last block needs one.
    if first + BLOCK <= numel:
        _step_block(row, first, None, partials, program,
                    one_minus_beta1, beta2, one_minus_beta2, eps_hat, alpha_grad, alpha_avg,
                    DTYPE, COMPUTE, FIRST_PASS, DOT_LEFT, DOT_RIGHT, BLOCK, ALIGNED)
    else:
        inside = first + tl.arange(0, BLOCK) < numel
        _step_block(row, first, inside, partials, program,
                    one_minus_beta1, beta2, one_minus_beta2, eps_hat, alpha_grad, alpha_avg,
                    DTYPE, COMPUTE, FIRST_PASS, DOT_LEFT, DOT_RIGHT, BLOCK, ALIGNED)
