"""A labeler registered in the test itself runs a debug trial and is planned in a study,
without any edit to lsdc; validation, --set, the search space and Table 1 read it."""
import pytest
import torch

from lsdc.config import ConfigError, make_config
from lsdc.planning import Study, Variant, plan
from lsdc.registry import LABELERS, Param, RegistryError
from lsdc.study import main


def toy(feats: torch.Tensor, threshold: float) -> torch.Tensor:
    """Pairs whose features' dot product (normalised) exceeds a threshold."""
    f = torch.nn.functional.normalize(feats.float(), dim=1)
    return (f @ f.T > threshold).float()


TOY = dict(params=[Param("toy_threshold", float, lo=-1.0, hi=1.0, arg="threshold",
                         search=("float", 0.0, 0.9, False))],
           presets={"digits": {"toy_threshold": 0.8}}, label="toy")


@pytest.fixture
def registered():
    with LABELERS.registered("toy", toy, **TOY) as entry:
        yield entry
    assert "toy" not in LABELERS.names()


def test_toy_labeler_validates_from_presets_and_overrides(registered):
    cfg = make_config("digits", labeler="toy")
    assert cfg.param("toy_threshold") == 0.8 and dict(cfg.extra) == {"toy_threshold": 0.8}
    assert make_config("digits", labeler="toy", toy_threshold=0.5).param("toy_threshold") == 0.5
    with pytest.raises(ConfigError, match=r"toy_threshold: must be >= -1.0 and <= 1.0, got 3"):
        make_config("digits", labeler="toy", toy_threshold=3)
    with pytest.raises(ConfigError, match="toy_threshold: supplement Table 1 gives no value for 'cifar10'"):
        make_config("cifar10", labeler="toy")
    # the key holds the toy's parameter, not the other labelers'
    from lsdc.keys import effective
    eff = effective(make_config("digits", labeler="toy", precision="fp32"))
    assert eff["toy_threshold"] == 0.8 and "knn_k" not in eff


@pytest.mark.pipeline
def test_toy_labeler_runs_a_debug_trial_and_plans_a_study(registered, debug_store, capsys):
    study = Study(name="toy_study", title="toy", variants=(Variant("toy", {"labeler": "toy"}),
                                                            Variant("kNN", {"labeler": "knn"})))
    assert main(study, ["--debug", "--epochs", "1", "--storage", debug_store]) == 0
    out = capsys.readouterr().out
    assert "variant 'toy'" in out and "[debug] done in" in out
    planned = plan(study, "digits", seeds=[0, 1])
    assert [p.cfg.labeler for p in planned] == ["toy", "toy", "knn", "knn"]
    assert len({p.key for p in planned}) == 4


def test_registry_feeds_search_space_table1_and_the_labeler_study(registered):
    from lsdc.studies import STUDIES
    from lsdc.tables import table1
    assert "toy" in [v.overrides.get("labeler") for v in STUDIES["labeler"].variants]
    assert "toy threshold" in table1().splitlines()[0]
    import optuna

    from lsdc.runner.search import search_space
    trial = optuna.trial.FixedTrial({"toy_threshold": 0.3, "lam": 2.0, "rampup": 3, "lr": 0.01})
    search_space(trial, make_config("digits", labeler="toy").to_dict())
    assert trial.params["toy_threshold"] == 0.3


def test_unknown_names_and_clashing_registrations_are_refused():
    with pytest.raises(ConfigError, match="labeler: unknown 'spectral'; allowed: cosine, sne, knn"):
        make_config("digits", labeler="spectral")
    with pytest.raises(RegistryError, match="already registered"):
        LABELERS.register("knn")(toy)
