"""CUDA graphs: the mixup sampling, the mix and the fused loss (forward and backward) capture
and replay with the results of eager mode. GPU only (run by `make gpu-check`)."""

from __future__ import annotations

import pytest
import torch

import rankmixup_ops as rmx

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

B, K, C, FEATURES = 64, 3, 100, 32


def _gpu_backends():
    if not torch.cuda.is_available():
        return []
    return [name for name in ("triton", "cuda", "reference") if rmx.available_backends()[name].available]


def _capture(fn, graph=None, warmup_iters=3):
    """Warm up on a side stream (as torch.cuda.graphs requires), then capture ``fn`` into
    ``graph`` (a new one by default)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup_iters):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = graph if graph is not None else torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = fn()
    return graph, outputs


@pytest.mark.parametrize("backend", _gpu_backends())
@pytest.mark.parametrize("mode", ["mndcg", "mrl"])
def test_loss_and_mix_forward_backward_replay(backend, mode):
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(B, FEATURES, device="cuda", generator=gen)
    weight = torch.randn(FEATURES, C, device="cuda", generator=gen, requires_grad=True)
    targets = torch.randint(0, C, (B,), device="cuda", generator=gen)
    lam, index = rmx.sample_mixup(B, K, 1.0, per_sample=True, generator=gen)

    def step():
        weight.grad = None
        mixed = rmx.mix(x, lam, index, backend=backend)
        out = rmx.rankmixup_loss(x @ weight, mixed @ weight, targets, lam, index, mode=mode, backend=backend)
        out.loss.backward()
        return out.loss.detach(), weight.grad

    eager_loss, eager_grad = (t.clone() for t in step())
    graph, (graph_loss, graph_grad) = _capture(step)
    # New data in the captured input buffers, then a replay: it must follow them.
    x.copy_(torch.randn(B, FEATURES, device="cuda", generator=gen))
    graph.replay()
    fresh_loss, fresh_grad = step()
    torch.testing.assert_close(graph_loss, fresh_loss)
    torch.testing.assert_close(graph_grad, fresh_grad)
    assert not torch.equal(graph_loss, eager_loss)  # the replay did recompute


def test_sample_mixup_with_a_device_generator_replays():
    gen = torch.Generator(device="cuda").manual_seed(0)
    graph = torch.cuda.CUDAGraph()
    if not hasattr(graph, "register_generator_state"):
        pytest.skip("this torch cannot capture a custom generator in a CUDA graph")
    graph.register_generator_state(gen)
    graph, (lam, index) = _capture(lambda: rmx.sample_mixup(B, K, 1.0, per_sample=True, generator=gen), graph)
    draws = []
    for _ in range(2):
        graph.replay()
        draws.append((lam.clone(), index.clone()))
    for lam_draw, index_draw in draws:
        assert bool(((lam_draw >= 0) & (lam_draw <= 1)).all())
        assert torch.equal(index_draw.sort(dim=1).values, torch.arange(B, device="cuda").expand(K, B))
    # Each replay advances the generator: two replays draw different mixings.
    assert not torch.equal(draws[0][0], draws[1][0])
