"""PCA, SAE and RLAP featurizers: contract, fitting, L1 selection, activation cache, training."""

import dataclasses

import pytest
import torch

from helpers import ENTITIES, tiny_model, word_tokenizer
from ravel_bench.activations import collect_activations, collect_attribute_activations
from ravel_bench.data import EntityTypeRelease
from ravel_bench.errors import ConfigError, DataFormatError
from ravel_bench.featurizers import RotationFeaturizer
from ravel_bench.featurizers.pca import PCAFeaturizer, fit_pca, train_pca
from ravel_bench.featurizers.registry import featurizer_class
from ravel_bench.featurizers.rlap import (
    RLAPTrainConfig,
    fantope_projection,
    fit_rlap,
    probe_accuracy,
    train_rlap,
)
from ravel_bench.featurizers.sae import SAEFeaturizer, SAETrainConfig, fit_sae, train_sae
from ravel_bench.featurizers.selection import l1_feature_mask, select_attribute_features
from ravel_bench.instance.build import RavelInstance

D = 16
FAST_SAE = SAETrainConfig(expansion=2, steps=60, batch_size=64, log_every=20)
FAST_RLAP = RLAPTrainConfig(steps=150, batch_size=128, eval_every=50)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matrices run faster on one thread (and a loaded 2-core runner starves on two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def planted(n: int = 300, d: int = D, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Vectors whose projection on one spread-out direction encodes a binary label.

    Returns ``(x [n, d], y [n])``; neurons have different scales and offsets, like activations.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    u = torch.ones(d) / d**0.5  # [d]
    x = torch.randn(n, d, generator=g) + 4.0 * (2.0 * y[:, None] - 1.0) * u  # [n, d]
    scales = torch.linspace(0.5, 3.0, d)
    return x * scales + torch.arange(d, dtype=torch.float32), y


@pytest.fixture(scope="module")
def fitted() -> dict[str, object]:
    """One masked featurizer of each method, fitted on the planted data."""
    x, y = planted()
    pca = select_attribute_features(fit_pca(x), x, y, C=0.05)
    sae = select_attribute_features(fit_sae(x, FAST_SAE, show_progress=False), x, y, k=3)
    directions = fit_rlap(x, y, 2, FAST_RLAP, show_progress=False)
    rlap = RotationFeaturizer.from_directions(directions, method="rlap")
    return {"pca": pca, "sae": sae, "rlap": rlap, "x": x, "y": y, "directions": directions}


# --- the featurizer contract ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["pca", "sae", "rlap"])
def test_intervening_a_vector_with_itself_returns_it_exactly(fitted, method):
    h = fitted["x"][:7]
    assert torch.equal(fitted[method].intervene(h, h), h)


def test_pca_is_a_bijection(fitted):
    pca = fitted["pca"]
    assert pca.config.n_features == D and pca.components.shape == (D, D)
    h = planted(50, seed=1)[0]
    torch.testing.assert_close(pca.unfeaturize(pca.featurize(h)), h, atol=1e-5, rtol=0)
    torch.testing.assert_close(pca.components @ pca.components.T, torch.eye(D), atol=1e-5, rtol=0)


def test_pca_swaps_only_the_masked_components(fitted):
    pca = fitted["pca"]
    base, source = planted(5, seed=2)[0], planted(5, seed=3)[0]
    f_out, f_base, f_source = (
        pca.featurize(v) for v in (pca.intervene(base, source), base, source)
    )
    mask = pca.mask
    torch.testing.assert_close(f_out[:, mask], f_source[:, mask], atol=1e-4, rtol=0)
    torch.testing.assert_close(f_out[:, ~mask], f_base[:, ~mask], atol=1e-4, rtol=0)


def test_sae_without_the_reconstruction_error_returns_the_decoded_mix(fitted):
    sae = fitted["sae"]
    reference = SAEFeaturizer(dataclasses.replace(sae.config, keep_reconstruction_error=False))
    reference.load_state_dict(sae.state_dict(), strict=True)
    h = fitted["x"][:4]
    assert torch.equal(reference.intervene(h, h), sae.unfeaturize(sae.featurize(h)))
    assert not torch.allclose(reference.intervene(h, h), h)  # an SAE is not a bijection


@pytest.mark.parametrize("method", ["pca", "sae", "rlap"])
def test_save_and_load_round_trip(fitted, method, tmp_path):
    featurizer = fitted[method]
    featurizer.save_pretrained(tmp_path / method)
    loaded = featurizer_class(method).from_pretrained(tmp_path / method, strict=True)
    assert type(loaded) is type(featurizer) and loaded.config == featurizer.config
    base, source = planted(6, seed=4)[0], planted(6, seed=5)[0]
    assert torch.equal(loaded.intervene(base, source), featurizer.intervene(base, source))
    assert (tmp_path / method / "model.safetensors").is_file()


def test_registry_names():
    assert featurizer_class("pca") is PCAFeaturizer
    assert featurizer_class("sae") is SAEFeaturizer
    assert featurizer_class("rlap") is RotationFeaturizer


def test_pca_needs_full_rank():
    with pytest.raises(ConfigError, match="must equal d_model"):
        PCAFeaturizer(dataclasses.replace(fit_pca(planted(20)[0]).config, n_features=4, k=0))


# --- fitting and selection -------------------------------------------------------------------


def test_l1_selection_picks_the_planted_feature():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(400, 10, generator=g) * torch.linspace(0.1, 10, 10)  # [400, 10]
    labels = (features[:, 3] > 0).long()
    assert l1_feature_mask(features, labels, C=0.05).nonzero().flatten().tolist() == [3]
    labels = (features[:, 3] > 0).long() + 2 * (features[:, 7] > 0).long()  # 4 classes
    assert l1_feature_mask(features, labels, C=0.05).nonzero().flatten().tolist() == [3, 7]
    assert l1_feature_mask(features, labels, k=1, C=0.05).sum() == 1


def test_pca_selection_finds_the_label_component(fitted):
    # The planted direction has the largest variance: it is the first principal component.
    assert fitted["pca"].mask.nonzero().flatten().tolist() == [0]
    assert fitted["pca"].config.k == 1


def test_same_seed_same_weights():
    x, y = planted()
    a, b = fit_sae(x, FAST_SAE, seed=3, show_progress=False), fit_sae(x, FAST_SAE, seed=3)
    assert all(
        torch.equal(p, q)
        for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert not torch.equal(a.W_enc, fit_sae(x, FAST_SAE, seed=4, show_progress=False).W_enc)
    assert torch.equal(fit_pca(x).components, fit_pca(x).components)
    r1 = fit_rlap(x, y, 1, FAST_RLAP, seed=3, show_progress=False)
    assert torch.equal(r1, fit_rlap(x, y, 1, FAST_RLAP, seed=3, show_progress=False))


def test_sae_training_lowers_its_loss():
    x, _ = planted()
    logs = []
    config = dataclasses.replace(FAST_SAE, steps=200, log_every=10)
    sae = fit_sae(x, config, show_progress=False, on_log=logs.append)
    assert logs[-1]["loss"] < 0.5 * logs[0]["loss"]
    assert sae.W_enc.shape == (2 * D, D) and sae.W_dec.shape == (D, 2 * D)
    assert sae.config.n_features == 2 * D and sae.config.k == 0 and not sae.training


def test_fantope_projection():
    g = torch.Generator().manual_seed(0)
    p = fantope_projection(torch.randn(8, 8, generator=g), 3)
    eigenvalues = torch.linalg.eigvalsh(p)
    assert torch.allclose(p, p.T) and abs(float(eigenvalues.sum()) - 3) < 1e-4
    assert eigenvalues.min() > -1e-5 and eigenvalues.max() < 1 + 1e-5


def test_rlap_directions_are_orthonormal_and_erase_the_attribute(fitted):
    x, y, r = fitted["x"], fitted["y"], fitted["directions"]
    assert r.shape == (2, D)
    torch.testing.assert_close(r @ r.T, torch.eye(2), atol=1e-5, rtol=0)
    before = probe_accuracy(x, y)
    after = probe_accuracy(x - (x @ r.T) @ r, y)
    assert before > 0.95 and after < 0.7


# --- activations and training from a model --------------------------------------------------

CONTINENT = {
    "Paris": "Europe",
    "Tokyo": "Asia",
    "Rome": "Europe",
    "Lima": "America",
    "Oslo": "Europe",
    "Cairo": "Africa",
    "Delhi": "Asia",
    "Quito": "America",
}
COUNTRY = dict(
    zip(ENTITIES, "France Japan Italy Peru Norway Egypt India Ecuador".split(), strict=True)
)
TEMPLATES = {
    "%s is a city in the country of": ("Country", "train"),
    "The city %s is in": ("Continent", "train"),
    "%s is a city in the continent of": ("Continent", "train"),
    "The people of %s live in the country of": ("Country", "test"),
}


@pytest.fixture(scope="module")
def toy():
    """A tiny model, its tokenizer, a hand-made instance and release for it."""
    entity_split = {e: ("train" if i < 6 else "test") for i, e in enumerate(ENTITIES)}
    release = EntityTypeRelease(
        entity_type="city",
        attributes=("Country", "Continent"),
        entity_attributes={e: {"Country": COUNTRY[e], "Continent": CONTINENT[e]} for e in ENTITIES},
        attribute_templates={
            a: [t for t, (ta, _) in TEMPLATES.items() if ta == a] for a in ("Country", "Continent")
        },
        template_split={t: s for t, (_, s) in TEMPLATES.items()},
        entity_split=entity_split,
        wikipedia={},
    )
    metadata = {
        "model_id": "tiny-llama",
        "model_revision": None,
        "entity_type": "city",
        "attributes": ["Country", "Continent"],
        "entities": entity_split,
        "templates": {
            t: {"attribute": a, "split": s, "accuracy": 1.0} for t, (a, s) in TEMPLATES.items()
        },
    }
    return tiny_model("llama", n_layers=2), word_tokenizer(), RavelInstance(metadata), release


def test_activations_are_cached_and_reused(toy, tmp_path, monkeypatch):
    model, tokenizer, instance, release = toy
    acts = collect_attribute_activations(
        model, tokenizer, instance, release, 0, cache_dir=tmp_path, show_progress=False
    )
    assert acts.vectors.shape == (18, 32) and acts.vectors.dtype == torch.float32
    assert acts.entities[:6] == ENTITIES[:6] and set(acts.templates) == set(list(TEMPLATES)[:3])
    assert acts.labels["Continent"][:3] == ["Europe", "Asia", "Europe"]
    assert len(list(tmp_path.rglob("*.safetensors"))) == 1
    assert len(list(tmp_path.rglob("*.json"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr("ravel_bench.activations.source_vectors", fail)
    again = collect_activations(
        model, tokenizer, acts.templates, acts.entities, 0, model_id="tiny-llama",
        entity_type="city", cache_dir=tmp_path, show_progress=False,
    )  # fmt: skip
    assert torch.equal(again, acts.vectors)
    with pytest.raises(AssertionError, match="cache was not used"):  # another layer: no hit
        collect_activations(
            model, tokenizer, acts.templates, acts.entities, 1, model_id="tiny-llama",
            entity_type="city", cache_dir=tmp_path, show_progress=False,
        )  # fmt: skip


def test_train_functions_fill_the_config(toy, tmp_path):
    model, tokenizer, instance, release = toy
    acts = collect_attribute_activations(
        model, tokenizer, instance, release, 1, use_cache=False, show_progress=False
    )
    common = {"seed": 0, "show_progress": False, "activations": acts}
    featurizers = [
        train_pca(model, tokenizer, instance, release, "Continent", 1, C=1.0, **common),
        train_sae(
            model, tokenizer, instance, release, "Continent", 1, k=4, train_config=FAST_SAE,
            keep_reconstruction_error=False, **common,
        ),
        train_rlap(
            model, tokenizer, instance, release, "Continent", 1, train_config=FAST_RLAP, **common
        ),
    ]  # fmt: skip
    for featurizer, method in zip(featurizers, ["pca", "sae", "rlap"], strict=True):
        config = featurizer.config
        assert (config.method, config.layer, config.site) == (method, 1, "blocks.1.resid_post")
        assert (config.entity_type, config.attribute, config.base_model) == (
            "city",
            "Continent",
            "tiny-llama",
        )
        assert config.n_layers == 2 and config.d_model == 32
        assert config.k == int(featurizer.feature_mask.sum())
        h = acts.vectors[:3]
        assert torch.equal(featurizer.intervene(h, h), h) or method == "sae"
    assert featurizers[1].config.k <= 4 and not featurizers[1].config.keep_reconstruction_error
    assert featurizers[2].config.k == 1  # d_model // 32
    with pytest.raises(ConfigError, match="not in the instance"):
        train_pca(model, tokenizer, instance, release, "Language", 1, **common)


def test_an_entity_without_a_label_is_a_data_error(toy):
    model, tokenizer, instance, release = toy
    values = {e: dict(v) for e, v in release.entity_attributes.items()}
    values["Rome"]["Continent"] = ""
    broken = dataclasses.replace(release, entity_attributes=values)
    with pytest.raises(DataFormatError, match="'Rome'.*'Continent'"):
        collect_attribute_activations(model, tokenizer, instance, broken, 0, use_cache=False)
