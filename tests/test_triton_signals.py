"""The Triton kernels (rlif.signals.triton_kernels) against the PyTorch path and the float64 / 50-digit references.

Run on CPU under Triton's interpreter (conftest sets TRITON_INTERPRET=1 without a GPU) when the triton package is
installed (`pip install triton`; it is not a test dependency, so CI skips these); on CUDA they run compiled.
"""

import pytest
import torch
from reference import assert_close, assert_signals_match_float64, reference, reference_exact

from rlif.signals import triton_kernels as triton_signals
from rlif.signals.chunked import hidden_signals

pytestmark = pytest.mark.skipif(not triton_signals.available(), reason="the triton package is not installed")



def device():
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("shape", [(1, 3, 2, 1), (9, 5, 37, 4), (20, 8, 300, 7)])  # (rows, d, V, chunk): V spans several tiles
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("logprobs_only", [False, True])
def test_triton_forward_and_backward_match_float64(shape, temperature, logprobs_only, monkeypatch):
    monkeypatch.setattr(triton_signals, "_block_size", lambda vocab, largest=4096: 16)  # many tiles: the online max moves often
    n, d, vocab, chunk = shape
    generator = torch.Generator().manual_seed(n + vocab)
    hidden = (torch.randn(n, d, generator=generator) * 2).to(device()).requires_grad_()
    weight = torch.randn(vocab, d, generator=generator).to(device()).requires_grad_()
    bias = torch.randn(vocab, generator=generator).to(device()).requires_grad_()
    targets = torch.randint(0, vocab, (n,), generator=generator).to(device())
    upstream = torch.randn(n, generator=generator).to(device())
    logprobs, sc, entropy = hidden_signals(hidden, weight, targets, bias=bias, temperature=temperature, chunk_size=chunk,
                                           logprobs_only=logprobs_only, backend="triton")
    (logprobs * upstream).sum().backward()
    assert_signals_match_float64(hidden, weight, bias, targets, upstream, temperature, logprobs, sc, entropy, logprobs_only)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_triton_frozen_head_gradient_matches_float64(temperature, monkeypatch):
    """Head frozen (LoRA): the forward turns each chunk's logits into d logp / d z with the backward kernel."""
    monkeypatch.setattr(triton_signals, "_block_size", lambda vocab, largest=4096: 16)
    generator = torch.Generator().manual_seed(11)
    n, d, vocab, chunk = 20, 8, 300, 7
    hidden = (torch.randn(n, d, generator=generator) * 2).to(device()).requires_grad_()
    weight = torch.randn(vocab, d, generator=generator).to(device())
    targets = torch.randint(0, vocab, (n,), generator=generator).to(device())
    upstream = torch.randn(n, generator=generator).to(device())
    logprobs = hidden_signals(hidden, weight, targets, temperature=temperature, chunk_size=chunk, logprobs_only=True,
                              backend="triton")[0]
    assert [tuple(t.shape) for t in logprobs.grad_fn.saved_tensors] == [(n, d)]
    (logprobs * upstream).sum().backward()
    h64 = hidden.detach().cpu().double().requires_grad_()
    ref_logprobs = reference(h64 @ weight.cpu().double().T, targets.cpu(), temperature)[0]
    (ref_logprobs * upstream.cpu().double()).sum().backward()
    assert_close(logprobs, ref_logprobs.detach(), rtol=1e-5, atol=1e-5)
    assert_close(hidden.grad, h64.grad, rtol=1e-4, atol=1e-5)

def test_triton_keeps_relative_precision_on_peaked_rows_and_ties(monkeypatch):
    monkeypatch.setattr(triton_signals, "_block_size", lambda vocab, largest=4096: 16)
    torch.manual_seed(2)
    logits = torch.randn(10, 50) * 300  # entropies down to ~1e-30
    logits[8, [3, 40]] = logits[8].max() + 1.0  # a tie at the max, in different tiles
    logits[9] = torch.arange(50.0) * 20  # the max moves in every tile
    targets = torch.cat([logits[:5].argmax(-1), torch.randint(0, 50, (5,))])
    for temperature in (1.0, 0.8):
        out = triton_signals.forward(logits.to(device()), targets.to(device()), temperature, logprobs_only=False)
        ref_logprobs, ref_sc, ref_entropy = reference_exact(logits, targets, temperature)
        assert_close(out[0], ref_logprobs, rtol=1e-5, atol=1e-37)
        assert_close(out[1], ref_sc, rtol=1e-5)
        tiny = ref_entropy < 1e-37 * 50  # below float32's normal range
        assert_close(out[2][~tiny.to(out[2].device)], ref_entropy[~tiny], rtol=1e-4)
        assert torch.equal(out[3].cpu(), logits.max(-1).values)


def test_triton_minus_inf_logits_weigh_nothing(monkeypatch):
    """-inf logits (in whole tiles, a tile's middle, the ragged end): the log-prob and the entropy are those of the
    other tokens (0 log 0 = 0), the self-certainty KL(U || p) is +inf, as the PyTorch path gives it."""
    monkeypatch.setattr(triton_signals, "_block_size", lambda vocab, largest=4096: 16)
    torch.manual_seed(0)
    logits = torch.randn(3, 50) * 3
    logits[0, [2, 30]] = -float("inf")
    logits[1, 49] = -float("inf")
    logits[2, :16] = -float("inf")
    targets = torch.tensor([1, 3, 20])
    for temperature in (1.0, 0.8):
        out = triton_signals.forward(logits.to(device()), targets.to(device()), temperature, logprobs_only=False)
        probs = torch.softmax(logits.double() / temperature, -1)
        assert_close(out[0], probs.gather(1, targets[:, None]).squeeze(1).log(), rtol=1e-5)
        assert torch.isinf(out[1]).all() and (out[1] > 0).all()
        assert_close(out[2], torch.special.entr(torch.softmax(logits.double(), -1)).sum(-1), rtol=1e-5)


def test_triton_reads_bf16_logits_without_a_float32_block():
    torch.manual_seed(3)
    logits = (torch.randn(6, 200) * 4).bfloat16()
    targets = torch.randint(0, 200, (6,))
    out = triton_signals.forward(logits.to(device()), targets.to(device()), 0.9, logprobs_only=False)
    ref_logprobs, ref_sc, ref_entropy = reference(logits.double(), targets, 0.9)
    assert_close(out[0], ref_logprobs, rtol=1e-5, atol=1e-6)
    assert_close(out[1], ref_sc, rtol=1e-4, atol=1e-6)
    assert_close(out[2], ref_entropy, rtol=1e-4, atol=1e-6)


def test_triton_default_launch_over_several_tiles_and_a_ragged_end():
    torch.manual_seed(4)
    vocab = 2 * triton_signals.FORWARD_LAUNCH[0] + 97  # lanes past the end of the row in the last tile
    logits = torch.randn(3, vocab) * 6
    logits[1, -1] = 40.0  # the row max in the ragged tile
    targets = torch.tensor([0, vocab - 1, 5])
    for temperature in (1.0, 0.8):
        out = triton_signals.forward(logits.to(device()), targets.to(device()), temperature, logprobs_only=False)
        ref_logprobs, ref_sc, ref_entropy = reference_exact(logits, targets, temperature)
        assert_close(out[0], ref_logprobs, rtol=1e-5, atol=1e-6)
        assert_close(out[1], ref_sc, rtol=1e-5)
        assert_close(out[2], ref_entropy, rtol=1e-4)
        only = triton_signals.forward(logits.to(device()), targets.to(device()), temperature, logprobs_only=True)
        assert_close(only[0], ref_logprobs, rtol=1e-5, atol=1e-6)




def test_triton_kernels_compile_for_ampere_and_hopper_without_spilling():
    """The interpreter runs the kernels as Python; bench/triton_sass.py compiles them to GPU machine code (Triton ships
    ptxas), which catches what only the real compiler rejects. The forward keeps its per-lane state in registers and
    its loop has no reduction across threads."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import triton

    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump").exists():
        pytest.skip("this triton has no NVIDIA toolchain")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    script = Path(__file__).parents[1] / "bench" / "triton_sass.py"
    launch = "x".join(map(str, triton_signals.FORWARD_LAUNCH))
    out = subprocess.run([sys.executable, str(script), "--json", "--launch", launch], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert [r["sm"] for r in rows if r["kernel"] == "backward"] == [80, 90]
    forward = [r for r in rows if r["kernel"] == "forward"]
    assert len(forward) == 8  # 2 architectures x (signals or not) x (temperature 1 or not)
    for row in rows:
        assert row["local_bytes"] == 0, row  # no register spills
    for row in forward:
        assert row["loop"]["barriers"] == 0 and row["loop"]["shuffles"] == 0, row
        # one exp per logit (two with signals at T != 1), and as many per lane of 8 logits for the rescale when its max moves
        per_thread = row["block"] // (32 * row["warps"])
        assert row["loop"]["exp2"] == (2 if row["tempered"] and row["signals"] else 1) * (per_thread + per_thread // 8), row
