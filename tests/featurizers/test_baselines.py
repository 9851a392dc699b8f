"""Featurizer contract for the baselines: exact no-op and full swap, orthonormal random subspace."""

import pytest
import torch

from ravel_bench.errors import ConfigError
from ravel_bench.featurizers import (
    IdentityFeaturizer,
    RotationFeaturizer,
    parse_featurizer_spec,
    random_subspace,
)


@pytest.mark.parametrize("spec", ["noop", "full", "random:4", "random:16"])
def test_intervening_a_vector_with_itself_returns_it_exactly(spec):
    featurizer = parse_featurizer_spec(spec, 16, seed=3)
    h = torch.randn(5, 16)
    assert torch.equal(featurizer.intervene(h, h), h)


def test_noop_and_full_are_exact():
    base, source = torch.randn(4, 8), torch.randn(4, 8)
    assert torch.equal(IdentityFeaturizer.noop(8).intervene(base, source), base)
    assert IdentityFeaturizer.full(8).config.k == 8 and IdentityFeaturizer.noop(8).config.k == 0
    assert torch.equal(IdentityFeaturizer.full(8).intervene(base, source), source)


def test_random_subspace_is_orthonormal_and_seeded():
    a, b = random_subspace(32, 6, seed=7), random_subspace(32, 6, seed=7)
    assert a.directions.shape == (6, 32)
    assert torch.equal(a.directions, b.directions)
    torch.testing.assert_close(a.directions @ a.directions.T, torch.eye(6), atol=1e-6, rtol=0)
    assert not torch.equal(a.directions, random_subspace(32, 6, seed=8).directions)


def test_rotation_swaps_only_the_subspace():
    featurizer = random_subspace(16, 3, seed=0)
    r = featurizer.directions
    base, source = torch.randn(2, 16), torch.randn(2, 16)
    out = featurizer.intervene(base, source)
    torch.testing.assert_close(out @ r.T, source @ r.T, atol=1e-5, rtol=0)  # inside: the source
    complement = torch.eye(16) - r.T @ r
    torch.testing.assert_close(out @ complement, base @ complement, atol=1e-5, rtol=0)


def test_full_rank_rotation_is_a_bijection():
    featurizer = random_subspace(8, 8, seed=0)
    h = torch.randn(3, 8)
    torch.testing.assert_close(
        featurizer.unfeaturize(featurizer.featurize(h)), h, atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("spec", ["random:0", "random:x", "random:99", "pca", "full:3"])
def test_bad_specs(spec):
    with pytest.raises(ConfigError):
        parse_featurizer_spec(spec, 16)


def test_too_many_directions():
    with pytest.raises(ConfigError, match="k=5 directions cannot be orthonormal in d_model=4"):
        RotationFeaturizer.from_directions(torch.randn(5, 4))


@pytest.mark.parametrize("spec", ["noop", "full", "random:5"])
def test_save_and_load_round_trip(spec, tmp_path):
    featurizer = parse_featurizer_spec(spec, 16, seed=2)
    featurizer.save_pretrained(tmp_path / spec)
    loaded = type(featurizer).from_pretrained(tmp_path / spec)
    assert loaded.config == featurizer.config
    h, s = torch.randn(3, 16), torch.randn(3, 16)
    assert torch.equal(loaded.intervene(h, s), featurizer.intervene(h, s))
    assert (tmp_path / spec / "model.safetensors").is_file()
