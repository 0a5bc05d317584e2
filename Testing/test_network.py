"""Unit tests of the SHMoAReg network blocks on tiny tensors."""
from __future__ import annotations

import pytest
import torch

from SHMoAReg.network import (DirectionalGate, MixtureOfAttentionHeads, NetworkConfig, SHMoARegNet,
                              SpatialHeterogeneousMoE, balance_loss, top_k_gates)
from SHMoAReg.network.windows import window_merge, window_partition
from SHMoAReg.optimise.warp import warp_image

SMALL = dict(channels=(4, 8, 8, 16), num_heads=4, top_k=2, window=2)


@pytest.mark.parametrize("size", [(17, 23, 9), (8, 8, 8), (5, 31, 12)])
@pytest.mark.parametrize("diffeomorphic", [False, True])
def test_shapes_at_odd_sizes(size, diffeomorphic):
    net = SHMoARegNet(NetworkConfig(**SMALL, diffeomorphic=diffeomorphic))
    fixed, moving = torch.rand(2, 1, *size), torch.rand(2, 1, *size)
    out = net(fixed, moving)
    assert out.displacement.shape == (2, 3, *size)
    assert (out.velocity is not None) == diffeomorphic
    assert len(out.gates) == 3 and out.gate_levels == [3, 2, 1]
    for gates, level in zip(out.gates, out.gate_levels):
        assert gates.shape == (2, 3, 3, *[-(-s // 2**level) for s in size])
    assert len(out.routing) == 4  # 2 stages x 2 blocks


def test_window_partition_round_trip():
    x = torch.randn(2, 3, 5, 7, 6)
    tokens, padded = window_partition(x, 4)
    assert tokens.shape == (2 * 2 * 2 * 2, 64, 3)
    assert torch.equal(window_merge(tokens, 4, padded, (5, 7, 6)), x)


def test_gates_sum_to_one_per_voxel_and_direction():
    gate = DirectionalGate(6, 3)
    torch.nn.init.normal_(gate.logits.weight)
    g = gate(torch.randn(1, 6, 5, 4, 3))
    assert g.shape == (1, 3, 3, 5, 4, 3)
    assert torch.allclose(g.sum(dim=2), torch.ones(1, 3, 5, 4, 3), atol=1e-6)
    assert not torch.allclose(g[:, 0], g[:, 1])  # directions are gated separately


def test_shmoe_mixes_experts_per_direction():
    block = SpatialHeterogeneousMoE(4, (3, 5, 7))
    x = torch.randn(1, 4, 9, 9, 9)
    flow, gates = block(x)
    experts = torch.stack([e(x) for e in block.experts], dim=2)
    assert torch.allclose(flow, (gates * experts).sum(dim=2))
    with torch.no_grad():  # force expert 2 for direction x only: x follows expert 2, z/y stay mixed
        block.gate.logits.bias.zero_()
        block.gate.logits.bias.view(3, 3)[2, 2] = 50.0
    flow, gates = block(x)
    assert torch.allclose(flow[:, 2], experts[:, 2, 2], atol=1e-6)
    assert torch.allclose(gates[:, 0], torch.full_like(gates[:, 0], 1 / 3), atol=1e-6)


def test_exactly_k_heads_per_token():
    layer = MixtureOfAttentionHeads(dim=8, num_heads=6, top_k=2)
    torch.nn.init.normal_(layer.router.weight)
    tokens = torch.randn(3, 27, 8)
    gates, probabilities = top_k_gates(layer.router(tokens), 2)
    assert torch.all((gates > 0).sum(dim=-1) == 2)
    assert torch.allclose(gates.sum(dim=-1), torch.ones(3, 27))
    out, stats = layer(tokens)
    assert out.shape == tokens.shape
    assert torch.isclose(stats.selection_frequency.sum(), torch.tensor(2.0))


def test_unselected_heads_do_not_contribute():
    layer = MixtureOfAttentionHeads(dim=8, num_heads=4, top_k=1)
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0, 0] = 100.0  # tokens with positive channel 0 pick head 0
    tokens = torch.randn(1, 10, 8).abs()
    before, _ = layer(tokens)
    with torch.no_grad():
        layer.output[1:].mul_(1000.0)  # change only heads that are never selected
    after, stats = layer(tokens)
    assert torch.allclose(before, after)
    assert stats.selection_frequency.tolist() == [1.0, 0.0, 0.0, 0.0]


def test_balance_loss_minimal_for_uniform_routing_and_differentiable():
    uniform = torch.full((100, 4), 0.25)
    assert torch.isclose(balance_loss(uniform), torch.tensor(1.0))
    logits = torch.randn(100, 4, requires_grad=True)
    loss = balance_loss(logits.softmax(-1))
    assert loss > 1.0
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    collapsed = torch.zeros(100, 4)
    collapsed[:, 0] = 1
    assert torch.isclose(balance_loss(collapsed), torch.tensor(4.0))


def test_gate_balance_loss_zero_for_equal_shares_and_pushes_away_from_collapse():
    torch.manual_seed(0)
    net = SHMoARegNet(NetworkConfig(**SMALL))
    images = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    assert abs(float(net(*images).gate_balance_loss)) < 1e-6  # zero-initialised gates: uniform
    gate = next(m for m in net.modules() if m.__class__.__name__ == "DirectionalGate")
    with torch.no_grad():
        gate.logits.bias.view(3, -1)[:, 0] = 6.0  # nearly every voxel picks expert 0 in every direction
    out = net(*images)
    experts = len(NetworkConfig(**SMALL).kernel_sizes)
    assert 0.3 < float(out.gate_balance_loss) <= experts - 1
    out.gate_balance_loss.backward()
    assert gate.logits.bias.grad.view(3, -1)[:, 0].gt(0).all()  # gradient descent lowers the favoured logit


def test_ablation_switches():
    plain = SHMoARegNet(NetworkConfig(**SMALL, use_moa=False, use_shmoe=False))
    out = plain(torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16))
    assert out.gates == [] and out.routing == []
    assert float(out.balance_loss) == 0.0 and float(out.gate_balance_loss) == 0.0
    assert not any(isinstance(m, MixtureOfAttentionHeads) for m in plain.modules())
    assert not any(isinstance(m, SpatialHeterogeneousMoE) for m in plain.modules())
    full = SHMoARegNet(NetworkConfig(**SMALL))
    assert any(isinstance(m, MixtureOfAttentionHeads) for m in full.modules())


def _smooth_images(count: int, size: int = 16) -> torch.Tensor:
    noise = torch.rand(count, 1, size, size, size)
    for _ in range(3):
        noise = torch.nn.functional.avg_pool3d(noise, 3, stride=1, padding=1, count_include_pad=False)
    return (noise - noise.amin()) / (noise.amax() - noise.amin())


def test_identity_pair_gives_near_zero_displacement_after_short_fit():
    """Identical inputs: the network starts near identity and a short unsupervised fit keeps it there;
    instance optimisation of the pair (which would drift under any half-voxel warping bug) stays at zero."""
    from SHMoAReg.optimise.instance_optimisation import InstanceOptimisationConfig, optimise_displacement
    from SHMoAReg.optimise.losses import smoothness_loss

    torch.manual_seed(0)
    net = SHMoARegNet(NetworkConfig(**SMALL))
    images = _smooth_images(4)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-4)
    for step in range(8):
        image = images[step % 4 : step % 4 + 1]
        out = net(image, image)
        loss = (warp_image(image, out.displacement) - image).square().mean() + smoothness_loss(out.displacement)
        optimiser.zero_grad()
        (loss + 0.01 * out.balance_loss).backward()
        optimiser.step()
    unseen = _smooth_images(1, size=24)
    with torch.no_grad():
        displacement = net.eval()(unseen, unseen).displacement
    assert displacement.abs().max() < 0.1  # voxels
    config = InstanceOptimisationConfig(iterations=60, similarity="mind")
    fitted = optimise_displacement(unseen, unseen, config, initial=displacement)
    assert fitted.abs().max() < 0.1


def test_checkpoint_round_trip(tmp_path):
    from SHMoAReg.weights import load_weights, save_weights

    net = SHMoARegNet(NetworkConfig(**SMALL)).eval()
    digest = save_weights(net, tmp_path / "tiny.pt", preset="abdomen-ct", half=False)
    loaded, info = load_weights(tmp_path / "tiny.pt")
    assert info.sha256 == digest
    x = torch.rand(1, 1, 12, 12, 12)
    with torch.no_grad():
        assert torch.allclose(net(x, x).displacement, loaded(x, x).displacement)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cpu_and_cuda_agree():
    torch.manual_seed(0)
    net = SHMoARegNet(NetworkConfig(**SMALL)).eval()
    fixed, moving = torch.rand(1, 1, 20, 18, 17), torch.rand(1, 1, 20, 18, 17)
    with torch.no_grad():
        cpu = net(fixed, moving).displacement
        gpu = net.cuda()(fixed.cuda(), moving.cuda()).displacement.cpu()
    assert torch.allclose(cpu, gpu, atol=1e-4)
