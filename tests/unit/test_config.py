import pytest

from lsdc.config import ConfigError, TrialConfig, make_config, parse_override, presets


def test_presets_follow_supplement_table_1():
    c = make_config("cifar10")
    assert (c.epochs, c.lr_steps, c.lr, c.lam, c.rampup, c.cosine_tau, c.sne_tau, c.sne_temperature, c.knn_k) == \
        (220, (140, 180), 0.1, 5.0, 100, 0.9, 0.01, 1.0, 20)
    c = make_config("cifar100-20")
    assert (c.epochs, c.lr_steps, c.lam, c.rampup, c.cosine_tau, c.sne_temperature, c.knn_k) == \
        (200, (170,), 25.0, 150, 0.95, 0.5, 10)
    assert make_config("mnist").knn_k == 10 and make_config("mnist").epochs == 15
    r = make_config("reuters10k")
    assert (r.optimizer, r.lr, r.epochs, r.lam, r.knn_k, r.pretrain, r.mixing) == ("adam", 0.001, 75, 25.0, 5, "none", "none")
    assert set(presets()) >= {"cifar10", "cifar100-20", "stl10", "mnist", "reuters10k", "digits"}


def test_missing_table_1_value_is_an_error_not_a_guess():
    with pytest.raises(ConfigError, match="sne_tau: supplement Table 1 gives no value for 'mnist'"):
        make_config("mnist", labeler="sne")
    assert make_config("mnist", labeler="sne", sne_tau=0.01, sne_temperature=1.0).labeler == "sne"


@pytest.mark.parametrize("overrides,message", [
    (dict(labeler="spectral"), "labeler: unknown 'spectral'; allowed: cosine, sne, knn"),
    (dict(mixing="cutmix"), "mixing: unknown 'cutmix'; allowed: ricap, mixup, none"),
    (dict(batch_size=1), "batch_size: must be >= 2, got 1"),
    (dict(knn_k=128), r"knn_k: must be < batch_size \(128\), got 128"),
    (dict(knn_k=0), "knn_k: must be >= 1"),
    (dict(cosine_tau=1.5), "cosine_tau: must be >= -1.0 and <= 1.0"),
    (dict(sne_temperature=0.0), "sne_temperature: must be > 0.0"),
    (dict(lam=-1.0), "lam: must be >= 0.0"),
    (dict(rampup=-5), "rampup: must be >= 0"),
    (dict(freeze_from=5), "freeze_from: must be >= 0 and <= 4"),
    (dict(lr=float("nan")), "lr: must be a finite number"),
    (dict(lr_steps=(10, 5)), "lr_steps: must be strictly increasing"),
    (dict(device="tpu"), "device: unknown 'tpu'"),
    (dict(split="test"), "split: unknown 'test'; allowed: all"),
    (dict(epochs=0), "epochs: must be >= 1"),
    (dict(learning_rate=0.1), "learning_rate: unknown config field"),
])
def test_invalid_configs_fail_with_one_line_naming_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message) as e:
        make_config("digits", **overrides)
    assert "\n" not in str(e.value)


def test_ricap_needs_images_and_vectors_need_no_pretraining():
    with pytest.raises(ConfigError, match="mixing: 'ricap' needs images"):
        make_config("reuters10k", mixing="ricap")
    with pytest.raises(ConfigError, match="pretrain: 'rotnet' needs images and 'reuters10k' holds vectors"):
        make_config("reuters10k", pretrain="rotnet")
    with pytest.raises(ConfigError, match="freeze_from: must be >= 0 and <= 3"):
        make_config("reuters10k", freeze_from=4)


def test_shortening_epochs_rescales_the_schedule():
    c = make_config("cifar10", epochs=22)
    assert c.lr_steps == (14, 18) and c.rampup == 10
    c = make_config("cifar10", epochs=22, lr_steps=(5,), rampup=3)
    assert c.lr_steps == (5,) and c.rampup == 3
    c = make_config("cifar10", epochs=22, scale_schedule=False)
    assert c.lr_steps == (140, 180) and c.rampup == 100


def test_shortening_epochs_shrinks_a_presets_evaluation_interval():
    """digits evaluates every 5 of its 40 epochs; a shorter run evaluates as often or more
    (every epoch of a 2-epoch run), a longer one keeps 5, and an explicit value wins."""
    assert make_config("digits").eval_every == 5
    assert [make_config("digits", epochs=e).eval_every for e in (1, 2, 3, 10, 16, 60)] == [1, 1, 1, 1, 2, 5]
    assert make_config("digits", epochs=10, eval_every=1).eval_every == 1
    assert make_config("cifar10", epochs=22).eval_every == 1


def test_mixup_gets_the_supplement_weight_decay():
    assert make_config("cifar10", mixing="mixup").weight_decay == 1e-4
    assert make_config("cifar10", mixing="mixup", weight_decay=5e-4).weight_decay == 5e-4
    assert make_config("cifar10").weight_decay == 5e-4


def test_key_depends_on_the_seed_and_roundtrips():
    a = make_config("digits", seed=1, precision="fp32")
    b = make_config("digits", seed=2, precision="fp32")
    assert a.key("fp") != b.key("fp")
    assert TrialConfig.from_dict(a.to_dict()) == a and TrialConfig.from_dict(a.to_dict()).key("fp") == a.key("fp")
    with pytest.raises(ConfigError, match="bogus: unknown config field"):
        TrialConfig.from_dict({**a.to_dict(), "bogus": 1})


def test_parse_override():
    assert parse_override("lr=0.05") == ("lr", 0.05)
    assert parse_override("mixing=none") == ("mixing", "none")
    assert parse_override("use-mse=false") == ("use_mse", False)
    assert parse_override("lr_steps=[3,5]") == ("lr_steps", [3, 5])
    with pytest.raises(ConfigError, match="nope: unknown config field"):
        parse_override("nope=1")
