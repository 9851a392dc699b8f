"""Training of DAS, MDAS, DBM and MDBM on the tiny random city model."""

import dataclasses

import pytest
import torch

from ravel_bench.errors import ConfigError, DataFormatError
from ravel_bench.featurizers import IdentityFeaturizer, RotationFeaturizer
from ravel_bench.featurizers.mask import TrainableMask
from ravel_bench.training import (
    TrainConfig,
    teacher_forced_batch,
    train_intervention,
    training_examples,
)

ATTRIBUTE = "Country"  # the tiny instance's train pairs all query Country


def _train(tiny_city, method: str, **overrides):
    model, tokenizer, instance, _ = tiny_city
    config = TrainConfig(
        method=method, k=4, epochs=4, batch_size=4, lr=1e-2, log_every=1, **overrides
    )
    return train_intervention(
        model,
        tokenizer,
        instance,
        ATTRIBUTE,
        0,
        config,
        show_progress=False,
        model_id="tiny-random",
    )


@pytest.mark.parametrize("method", ["das", "mdas"])
def test_rotation_rows_stay_orthonormal_and_loss_drops(tiny_city, method):
    featurizer, history = _train(tiny_city, method)
    assert isinstance(featurizer, RotationFeaturizer)
    r = featurizer.directions
    assert r.shape == (4, 32)
    torch.testing.assert_close(r @ r.T, torch.eye(4), atol=1e-5, rtol=0)
    # Mean loss over the same examples: the first epoch against the last.
    first = [h["loss"] for h in history if h["epoch"] == 0]
    last = [h["loss"] for h in history if h["epoch"] == history[-1]["epoch"]]
    assert sum(last) / len(last) < sum(first) / len(first)
    config = featurizer.config
    assert (config.method, config.attribute, config.layer, config.site) == (
        method,
        ATTRIBUTE,
        0,
        "blocks.0.resid_post",
    )
    assert config.base_model == "tiny-random" and config.n_layers == 2


def test_training_is_deterministic(tiny_city):
    a, _ = _train(tiny_city, "das")
    b, _ = _train(tiny_city, "das")
    assert torch.equal(a.directions, b.directions)
    c, _ = _train(tiny_city, "das", seed=1)
    assert not torch.equal(a.directions, c.directions)


@pytest.mark.parametrize("method", ["dbm", "mdbm"])
def test_masks_are_evaluated_hard(tiny_city, method):
    featurizer, history = _train(tiny_city, method)
    assert isinstance(featurizer, IdentityFeaturizer)
    assert featurizer.mask.dtype == torch.bool
    base, source = torch.randn(3, 32), torch.randn(3, 32)
    expected = torch.where(featurizer.mask, source, base)  # hard: each neuron all or nothing
    assert torch.equal(featurizer.intervene(base, source), expected)
    assert featurizer.config.k == int(featurizer.mask.sum())


def test_trainable_mask_soft_then_hard():
    mask = TrainableMask(4)
    with torch.no_grad():
        mask.logits.copy_(torch.tensor([2.0, -1.0, 0.5, -3.0]))
    mask.set_progress(0.0)
    assert torch.allclose(mask.soft_mask(), torch.sigmoid(mask.logits))
    mask.set_progress(1.0)
    assert mask.temperature == pytest.approx(0.01)
    assert mask.hard_mask().tolist() == [True, False, True, False]
    exported = mask.export("dbm")
    assert exported.mask.tolist() == [True, False, True, False]


def test_a_feature_budget_keeps_the_largest_positive_logits():
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0, 0.5])

    def mask(max_features):
        trainable = TrainableMask(5, max_features=max_features)
        with torch.no_grad():
            trainable.logits.copy_(logits)
        return trainable

    assert mask(2).hard_mask().tolist() == [True, False, False, True, False]
    # Ties go to the lower index; a budget above the positive count changes nothing.
    assert mask(3).hard_mask().tolist() == [True, False, True, True, False]
    assert mask(10).hard_mask().tolist() == mask(None).hard_mask().tolist()
    assert mask(1).export("dbm").mask.tolist() == [False, False, False, True, False]
    with pytest.raises(ConfigError, match="max_features=0 must be >= 1"):
        TrainConfig(method="dbm", max_features=0)


def test_multitask_examples_mix_isolate_rows(tiny_city):
    _, _, instance, _ = tiny_city
    das = training_examples(instance, ATTRIBUTE, TrainConfig(method="das"))
    assert {e.kind for e in das} == {"cause"}
    pairs = instance.split("train", "train")
    assert len(das) == sum(p["attribute"] == ATTRIBUTE for p in pairs)
    assert all(
        e.target == p["inv_label"]
        for e, p in zip(das, [p for p in pairs if p["attribute"] == ATTRIBUTE], strict=True)
    )


def test_bad_config_and_missing_attribute(tiny_city):
    _, _, instance, _ = tiny_city
    with pytest.raises(ConfigError, match="TrainConfig.method='pca'"):
        TrainConfig(method="pca")
    with pytest.raises(ConfigError, match="TrainConfig.k=0"):
        TrainConfig(k=0)
    with pytest.raises(ConfigError, match="no train pairs querying 'Timezone'"):
        training_examples(instance, "Timezone", TrainConfig())


def test_example_without_label_tokens_is_refused(tiny_city):
    """An empty target would make the loss NaN; the batch builder names the example instead."""
    _, tokenizer, instance, _ = tiny_city
    good = training_examples(instance, ATTRIBUTE, TrainConfig(method="das"))[0]
    empty = dataclasses.replace(good, target="")
    teacher_forced_batch(tokenizer, [good])  # a real example is fine
    with pytest.raises(DataFormatError, match=f"{empty.entity!r}.*no token after the prompt"):
        teacher_forced_batch(tokenizer, [good, empty])


def test_trainable_rotation_is_seeded_and_leaves_the_global_rng_alone():
    from ravel_bench.featurizers.rotation import TrainableRotation

    state = torch.get_rng_state()
    first = TrainableRotation(16, 4, torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)  # another global state gives the same directions
    second = TrainableRotation(16, 4, torch.Generator().manual_seed(0))
    assert torch.equal(first.directions, second.directions)


@pytest.mark.parametrize("kind", ["rotation", "mask"])
def test_the_regularization_term_is_made_on_the_trainables_device(kind):
    """Adding it to the loss then copies nothing from the host (on a GPU such a copy waits)."""
    from ravel_bench.featurizers.rotation import TrainableRotation

    trainable = (
        TrainableRotation(16, 4, torch.Generator().manual_seed(0))
        if kind == "rotation"
        else TrainableMask(16)
    ).to("meta")
    assert trainable.regularization().device.type == "meta"
