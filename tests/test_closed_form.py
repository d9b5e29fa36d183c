import torch

from eraselab.erase.closed_form import closed_form_edit


def _plain(w0, keys, targets, preserve, s_p, stats, s_c, lamb):
    """Re-derive one layer the plain way: explicit sums of outer products and an explicit inverse."""
    d = w0.shape[1]
    left, right = lamb * w0.clone(), lamb * torch.eye(d, dtype=torch.float64)
    for i in range(keys.shape[0]):
        left += torch.outer(targets[:, i], keys[i])
        right += torch.outer(keys[i], keys[i])
    for j in range(preserve.shape[0]):
        left += s_p * torch.outer(w0 @ preserve[j], preserve[j])
        right += s_p * torch.outer(preserve[j], preserve[j])
    left += s_c * w0 @ stats
    right += s_c * stats
    return left @ torch.inverse(right)


def test_batched_solver_matches_the_plain_derivation_in_any_chunks_of_layers():
    g = torch.Generator().manual_seed(0)
    layers, out, d = 5, 12, 16
    w0 = torch.randn(layers, out, d, generator=g, dtype=torch.float64)
    keys = torch.randn(3, d, generator=g, dtype=torch.float64)
    targets = torch.randn(layers, out, 3, generator=g, dtype=torch.float64)
    preserve = torch.randn(7, d, generator=g, dtype=torch.float64)
    corpus = torch.randn(40, d, generator=g, dtype=torch.float64)
    stats = corpus.T @ corpus
    edited = closed_form_edit(w0, keys, targets, preserve, 0.5, stats, 0.05, lamb=0.1)
    chunked = closed_form_edit(w0, keys, targets, preserve, 0.5, stats, 0.05, lamb=0.1, chunk=2)  # 2 + 2 + 1 layers
    for layer in range(layers):
        expected = _plain(w0[layer], keys, targets[layer], preserve, 0.5, stats, 0.05, 0.1)
        assert torch.allclose(edited[layer], expected, atol=1e-9)
        assert torch.allclose(chunked[layer], expected, atol=1e-9)


def test_edit_maps_keys_to_targets_and_keeps_preserved_outputs():
    g = torch.Generator().manual_seed(1)
    w0 = torch.randn(2, 8, 32, generator=g)
    keys = torch.randn(2, 32, generator=g)
    targets = torch.randn(2, 8, 2, generator=g)
    preserve = torch.randn(4, 32, generator=g)
    edited = closed_form_edit(w0, keys, targets, preserve, preserve_scale=1e4, lamb=1e-4)
    assert edited.dtype == torch.float32
    assert torch.allclose(edited @ keys.T, targets, atol=1e-2)
    assert torch.allclose(edited @ preserve.T, w0 @ preserve.T, atol=1e-2)
