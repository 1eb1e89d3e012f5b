"""Golden keys: a change that would orphan stored results fails here. The configs are
built field by field (not from presets, which may change) with fixed fingerprints."""
import pytest

from lsdc.config import TrialConfig
from lsdc.keys import effective, kmeans_key, legacy_v1_key, trial_key

FP = "0123456789abcdef"
GOLDEN = {
    # name: (config, trial key, k-means key)
    "cifar10": (dict(dataset="cifar10", precision="fp32"), "4870ad3e17555db3", "km-8d5610214b50d761"),
    "digits_sne_b256": (dict(dataset="digits", labeler="sne", batch_size=256, sne_temperature=3.0, width=0.25,
                             precision="fp32"), "6c571de587e897e2", "km-243495c054ec4a7a"),
    "mnist_bf16_mixup": (dict(dataset="mnist", mixing="mixup", weight_decay=1e-4, cosine_tau=None, sne_tau=None,
                              sne_temperature=None, knn_k=10, precision="bf16", seed=3),
                         "d1a98b286c3f69c8", "km-8dea4ddaa0e51d21"),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_keys(name):
    fields, key, km = GOLDEN[name]
    cfg = TrialConfig(**fields)
    assert trial_key(cfg, FP) == key
    assert kmeans_key(cfg, FP) == km


def test_key_ignores_execution_settings_and_unused_parameters():
    cfg = TrialConfig(dataset="cifar10", precision="fp32")
    key = trial_key(cfg, FP)
    assert trial_key(cfg.replace(device="cpu", compile=True, eval_every=5), FP) == key
    assert trial_key(cfg.replace(sne_tau=0.05, cosine_tau=0.5), FP) == key       # another labeler's parameters
    assert trial_key(cfg.replace(mixing="none", ricap_target="corrected", mix_beta=1.0), FP) == \
        trial_key(cfg.replace(mixing="none"), FP)                                # no mixing: its parameters unused
    assert trial_key(cfg.replace(knn_k=10), FP) != key
    assert trial_key(cfg.replace(seed=1), FP) != key
    assert trial_key(cfg.replace(precision="bf16"), FP) != key
    assert trial_key(cfg, "another-data") != key


def test_key_needs_a_resolved_precision():
    with pytest.raises(ValueError, match="resolve 'auto'"):
        trial_key(TrialConfig(dataset="cifar10", precision="auto"), FP)


def test_effective_config_drops_what_the_choices_do_not_read():
    eff = effective(TrialConfig(dataset="cifar10", precision="fp32", use_mse=False, optimizer="adam", lr=1e-3,
                                lr_steps=()))
    assert "lam" not in eff and "rampup" not in eff and "momentum" not in eff and "lr_gamma" not in eff
    assert eff["knn_k"] == 20 and "sne_tau" not in eff and "device" not in eff


def test_legacy_v1_key_is_lsdc_0_1s_hash_of_every_field():
    # a record of lsdc 0.1 (tests/fixtures/store_v1) keeps its key
    import json
    import os
    path = os.path.join(os.path.dirname(__file__), "..", "fixtures", "store_v1", "losses", "records",
                        "24f6383dbc76e177.json")
    rec = json.load(open(path))
    assert legacy_v1_key(rec["config"]) == "24f6383dbc76e177" == rec["key"]
