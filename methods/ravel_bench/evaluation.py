"""Score featurizers on an instance split with interchange interventions (DESIGN.md section 4).

For each pair, the base prompt is run with the featurizer's intervention at the entity's last
token (source vector from the source prompt, same layer), and 3 tokens are generated greedily.
Every pair is scored once per target attribute: as a cause row when it queries the target
(expected: ``inv_label``), as an isolate row otherwise (expected: ``label``). Expected tokens are
the label's first 3 tokens tokenized in context (``prompt + label``). Scores come from
:func:`ravel_bench.scoring.disentangle_score` (the ``ravel_disentangle`` metric's logic).
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn
from transformers import PreTrainedTokenizerBase

from ravel_bench.engine.blocks import layer_name, site_name
from ravel_bench.engine.interchange import intervened_generate, source_vectors
from ravel_bench.errors import ConfigError
from ravel_bench.featurizers.base import Featurizer
from ravel_bench.instance.build import RavelInstance, label_token_ids
from ravel_bench.scoring import disentangle_score, token_match

logger = logging.getLogger(__name__)

MAX_NEW_TOKENS = 3


@dataclass
class EvalResult:
    """Scores of one featurizer (or one per target) at one layer, setting and split.

    Args:
        scores: the :func:`~ravel_bench.scoring.disentangle_score` result.
        rows: one dict per (pair, target attribute): prompts, entities, attributes, expected and
            generated text, correct.
        config: what was evaluated (layer, site, setting, split, featurizer, model, instance).
    """

    scores: dict
    rows: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The result in SAEBench's layout (``eval_result_metrics.ravel``)."""
        s = self.scores
        return {
            "eval_type_id": "ravel",
            "eval_config": self.config,
            "eval_result_metrics": {
                "ravel": {
                    "disentanglement_score": s["disentangle"],
                    "cause_score": s["cause"],
                    "isolation_score": s["isolate"],
                }
            },
            "eval_result_details": [
                {
                    "attribute": attribute,
                    "disentanglement_score": d["disentangle"],
                    "cause_score": d["cause"],
                    "isolation_score": d["isolate"],
                    "n_cause": d["n_cause"],
                    "n_isolate": d["n_isolate"],
                }
                for attribute, d in s["per_attribute"].items()
            ],
            "warnings": s["warnings"],
        }


def evaluate_featurizer(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    instance: RavelInstance,
    featurizers: Featurizer | Mapping[str, Featurizer],
    layer: int,
    setting: str,
    split: str,
    *,
    batch_size: int = 64,
    show_progress: bool = True,
    config: dict | None = None,
) -> EvalResult:
    """Evaluate featurizers on one instance split.

    Args:
        model, tokenizer: the instance's model, in eval mode.
        instance: from :func:`ravel_bench.instance.build.build_instance` or ``load_instance``.
        featurizers: one featurizer for every target attribute, or ``{attribute: featurizer}``
            (targets without one are skipped).
        layer: intervention site (``-1`` = embeddings, else the block index).
        setting, split: ``entity``/``context`` (or ``train``) and ``val``/``test``.
        batch_size: prompts per forward pass.
        config: extra fields recorded in the result's ``eval_config``.

    Returns:
        An :class:`EvalResult`.
    """
    pairs = instance.split(setting, split)
    if not pairs:
        raise ConfigError(
            f"the instance has no {setting}/{split} pairs to evaluate",
            hint="build the instance with more entities or templates (see its README.md)",
        )
    targets = instance.attributes
    if isinstance(featurizers, Featurizer):
        per_target = dict.fromkeys(targets, featurizers)
    else:
        per_target = {a: f for a, f in featurizers.items() if a in targets}
    base_t = [p["base_template"] for p in pairs]
    base_e = [p["entity"] for p in pairs]
    source = source_vectors(
        model,
        tokenizer,
        [p["source_template"] for p in pairs],
        [p["source_entity"] for p in pairs],
        layer,
        batch_size=batch_size,
        show_progress=show_progress,
    )  # [pairs, d_model]
    inputs = [p["input"] for p in pairs]
    label_ids = label_token_ids(tokenizer, inputs, [p["label"] for p in pairs], MAX_NEW_TOKENS)
    inv_ids = label_token_ids(tokenizer, inputs, [p["inv_label"] for p in pairs], MAX_NEW_TOKENS)

    # A featurizer shared by several targets is run (and decoded) once.
    generated_by_featurizer: dict[int, tuple[list[list[int]], list[str]]] = {}
    predictions, references, target_col, queried_col, template_col, rows = [], [], [], [], [], []
    for target, featurizer in per_target.items():
        key = id(featurizer)
        if key not in generated_by_featurizer:
            featurizer = featurizer.to(source.device).eval()
            tokens = intervened_generate(
                model,
                tokenizer,
                base_t,
                base_e,
                layer,
                featurizer.intervene,
                source,
                max_new_tokens=MAX_NEW_TOKENS,
                batch_size=batch_size,
                show_progress=show_progress,
            )
            generated_by_featurizer[key] = (
                tokens.tolist(),
                tokenizer.batch_decode(tokens, skip_special_tokens=True),
            )
        generated, texts = generated_by_featurizer[key]
        for i, pair in enumerate(pairs):
            cause = pair["attribute"] == target
            expected = inv_ids[i] if cause else label_ids[i]
            predictions.append(generated[i])
            references.append(expected)
            target_col.append(target)
            queried_col.append(pair["attribute"])
            template_col.append(pair["base_template"])
            rows.append(
                {
                    **pair,
                    "target_attribute": target,
                    "kind": "cause" if cause else "isolate",
                    "expected": pair["inv_label"] if cause else pair["label"],
                    "generated": texts[i],
                    "correct": token_match(generated[i], expected),
                }
            )
    scores = disentangle_score(predictions, references, target_col, queried_col, template_col)
    result_config = {
        "layer": layer_name(layer),
        "site": site_name(layer),
        "position": "entity_last",
        "setting": setting,
        "split": split,
        "n_pairs": len(pairs),
        "model_id": instance.metadata.get("model_id", ""),
        "entity_type": instance.metadata.get("entity_type", ""),
        **(config or {}),
    }
    logger.info(
        "evaluated %s at %s on %s/%s: disentangle %s",
        result_config.get("featurizer", "featurizer"),
        site_name(layer),
        setting,
        split,
        scores["disentangle"],
    )
    return EvalResult(scores=scores, rows=rows, config=result_config)
