"""Separable attributes of the toy: attribute subspaces and the factorized entity embedding."""

import pytest
import torch

from ravel_bench.toy_attributes import FactorizedEntityEmbedding, attribute_basis, swap_projections


def test_basis_rows_are_orthonormal_and_seeded() -> None:
    basis = attribute_basis(d_model=32, n_attributes=3, attribute_dim=4, seed=0)
    assert basis.shape == (3, 4, 32)
    rows = basis.reshape(12, 32)
    torch.testing.assert_close(rows @ rows.T, torch.eye(12), atol=1e-6, rtol=0)
    assert torch.equal(basis, attribute_basis(32, 3, 4, seed=0))
    assert not torch.equal(basis, attribute_basis(32, 3, 4, seed=1))
    with pytest.raises(ValueError, match="do not fit"):
        attribute_basis(d_model=8, n_attributes=3, attribute_dim=4, seed=0)


def test_swap_projections_are_identity_then_attribute_projectors() -> None:
    basis = attribute_basis(16, 2, 3, seed=5)
    projections = swap_projections(basis)
    assert projections.shape == (3, 16, 16)
    assert torch.equal(projections[0], torch.eye(16))
    for j in (1, 2):
        p = projections[j]
        torch.testing.assert_close(p @ p, p, atol=1e-6, rtol=0)  # a projector
        torch.testing.assert_close(torch.trace(p), torch.tensor(3.0), atol=1e-5, rtol=0)
    # attribute subspaces are orthogonal: swapping one leaves the other's coordinates alone
    torch.testing.assert_close(
        projections[1] @ projections[2], torch.zeros(16, 16), atol=1e-6, rtol=0
    )


def _factorized(seed: int = 0) -> FactorizedEntityEmbedding:
    with torch.random.fork_rng(devices=[]):  # leave the global RNG to the other tests
        torch.manual_seed(seed)
        embedding = torch.nn.Embedding(10, 16)
    # entities are tokens 3..6; attribute 0 values [0, 0, 1, 1], attribute 1 values [0, 1, 2, 0]
    value_index = torch.tensor([[0, 0, 1, 1], [0, 1, 2, 0]])
    basis = attribute_basis(16, 2, 3, seed=0)
    return FactorizedEntityEmbedding(
        embedding, torch.arange(3, 7), value_index, basis, torch.Generator().manual_seed(seed)
    )


def test_entities_sharing_a_value_share_its_coordinates() -> None:
    factorized = _factorized()
    basis = factorized.basis
    vectors = factorized(torch.arange(10)[None])[0]  # [vocab, d_model]
    coords = torch.einsum("vd,akd->avk", vectors, basis)  # [attribute, token, attribute_dim]
    torch.testing.assert_close(coords[0, 3], coords[0, 4])  # attribute 0: tokens 3, 4 share 0
    torch.testing.assert_close(coords[0, 5], coords[0, 6])
    assert not torch.allclose(coords[0, 3], coords[0, 5])
    torch.testing.assert_close(coords[1, 3], coords[1, 6])  # attribute 1: tokens 3, 6 share 0
    assert not torch.allclose(coords[1, 3], coords[1, 4])
    # other tokens embed as the plain table
    plain = factorized.embedding.weight
    torch.testing.assert_close(vectors[:3], plain[:3])
    torch.testing.assert_close(vectors[7:], plain[7:])
    # the entities keep a free part of their own outside the attribute subspaces
    assert not torch.allclose(vectors[3], vectors[4])


def test_materialize_gives_the_plain_table_the_same_embeddings() -> None:
    factorized = _factorized()
    ids = torch.tensor([[0, 3, 5, 9], [6, 4, 4, 1]])
    with torch.no_grad():
        expected = factorized(ids)
    table = factorized.materialize()
    assert isinstance(table, torch.nn.Embedding)
    torch.testing.assert_close(table(ids), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(factorized(ids), expected, atol=1e-6, rtol=0)  # idempotent


def test_codes_and_free_parts_are_trained() -> None:
    factorized = _factorized()
    factorized(torch.tensor([[3, 1]])).sum().backward()
    assert factorized.codes[0].grad[0].abs().sum() > 0  # token 3's value of attribute 0
    assert factorized.codes[0].grad[1].abs().sum() == 0
    assert factorized.embedding.weight.grad[3].abs().sum() > 0
    assert factorized.embedding.weight.grad[1].abs().sum() > 0


def test_value_index_shape_is_checked() -> None:
    with pytest.raises(ValueError, match="value_index"):
        FactorizedEntityEmbedding(
            torch.nn.Embedding(10, 16),
            torch.arange(3, 7),
            torch.zeros(3, 4, dtype=torch.long),
            attribute_basis(16, 2, 3, seed=0),
            torch.Generator(),
        )
