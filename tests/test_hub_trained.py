"""A DAS featurizer trained on the embedded model's test variant (``toy-tiny``), saved as a Hub
repo, then loaded by repo id from a local Hub cache in a fresh offline process, gives identical
predictions on an instance split."""

import json
import os
import subprocess
import sys
import textwrap

from test_hub import _populate_hub_cache

from ravel_bench.evaluation import evaluate_featurizer
from ravel_bench.hub import save_featurizer
from ravel_bench.instance.build import InstanceConfig, build_instance
from ravel_bench.instance.repo import save_instance
from ravel_bench.models import load_model
from ravel_bench.training import TrainConfig, train_intervention

FRESH = textwrap.dedent(
    """
    import json, sys
    import torch
    torch.set_num_threads(1)
    from ravel_bench.hub import load_intervenable

    model = load_intervenable("org/toy-tiny-das-continent", device="cpu")
    result = model.evaluate(sys.argv[1], "entity", "test")
    print(json.dumps({"base_model": model.featurizer.config.base_model,
                      "generated": [r["generated"] for r in result.rows],
                      "disentangle": result.scores["disentangle"]}))
    """
)


def test_trained_featurizer_round_trips_through_the_hub_cache(release_tgz, city, tmp_path):
    loaded = load_model("toy-tiny", release_source=release_tgz, device="cpu", show_progress=False)
    config = InstanceConfig(
        attributes=("Continent",), entities=loaded.known_entities, templates_per_split=(3, 2, 2)
    )
    instance = build_instance(
        loaded.model, loaded.tokenizer, city, config, model_id=loaded.model_id, show_progress=False
    )
    featurizer, _ = train_intervention(
        loaded.model,
        loaded.tokenizer,
        instance,
        "Continent",
        1,
        TrainConfig(method="das", k=4, epochs=2, batch_size=8, lr=1e-2),
        show_progress=False,
        model_id=loaded.model_id,
    )
    expected = evaluate_featurizer(
        loaded.model,
        loaded.tokenizer,
        instance,
        {"Continent": featurizer},
        1,
        "entity",
        "test",
        show_progress=False,
    )
    folder = save_featurizer(featurizer, tmp_path / "das", repo_id="org/toy-tiny-das-continent")
    _populate_hub_cache(tmp_path / "hub", "org/toy-tiny-das-continent", folder)
    save_instance(instance, tmp_path / "instance")
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", FRESH, str(tmp_path / "instance")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["base_model"] == loaded.model_id  # the base model was loaded by its recorded id
    assert got["generated"] == [r["generated"] for r in expected.rows]
    assert got["disentangle"] == expected.scores["disentangle"]
