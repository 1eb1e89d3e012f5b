"""The study command lines' traps (issue 14), each refused or fixed; no Ray is started."""
import argparse
import re
import time
from types import SimpleNamespace

import pytest

from lsdc import __version__, cli
from lsdc.studies import BATCH_SIZE, STUDIES
from lsdc.study import SEARCH, add_optuna_flags, build_parser, main, parse_args, search_main


def test_set_on_the_studys_own_axis_fails_in_one_line_naming_it(capsys):
    assert main(BATCH_SIZE, ["--dataset", "digits", "--set", "batch_size=32", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "batch_size" in err[0] and "own axis" in err[0]


def test_set_on_a_searched_parameter_fails_in_one_line(capsys):
    assert search_main(["--dataset", "digits", "--set", "lr=0.1", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lr" in err[0] and "searched" in err[0]


@pytest.mark.parametrize("given", [["0,1,2"], ["0-2"], ["0", "1", "2"], ["0,1", "2"]])
def test_seeds_take_commas_ranges_and_spaces(given):
    assert parse_args(BATCH_SIZE, ["--seeds", *given, "--dataset", "digits"]).seeds == [0, 1, 2]


def test_search_seeds_are_all_kept(capsys):
    assert search_main(["--dataset", "digits", "--seeds", "0-2", "--dry-run"]) == 0
    assert "seeds [0, 1, 2] (each trial runs them in lock-step" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_dry_run_of_every_study_lists_its_trials_and_resources_without_ray(name, tmp_path, capsys):
    import sys
    t0 = time.perf_counter()
    assert main(STUDIES[name], ["--dry-run", "--dataset", "digits", "--seeds", "0", "--storage", str(tmp_path),
                                "--gpus-per-trial", "0", "--cpus-per-trial", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    head, rows = out[0], [line for line in out if line.startswith("  todo") or line.startswith("  done")]
    assert "dry run" in head and "0 finished already" in head and "2 CPU, 0 GPU" in head
    assert len(rows) >= 1 and all(r.startswith("  todo") and "cpu 2, gpu 0" in r for r in rows)
    assert len(rows) == int(re.search(r"(\d+) planned", head).group(1))
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
    assert not (tmp_path / name).exists()            # nothing written
    assert time.perf_counter() - t0 < 60


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(BATCH_SIZE, ["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"lsdc {__version__}"


def _parsers():
    study = build_parser(BATCH_SIZE)
    add_optuna_flags(study, searcher=True)
    search = build_parser(SEARCH)
    add_optuna_flags(search, searcher=False)
    return {"study": study, "search": search, "python -m lsdc": cli.build_parser()}


@pytest.mark.parametrize("which", ["study", "search", "python -m lsdc"])
def test_help_has_every_flag_described_once_without_markup(which):
    p = _parsers()[which]
    assert p.formatter_class is not argparse.ArgumentDefaultsHelpFormatter
    for a in p._actions:
        assert a.help, f"{a.option_strings} has no help"
        assert a.help.count("(default") <= 1 and "``" not in a.help and ":func:" not in a.help
    text = p.format_help()
    assert "(default: None)" not in text and "``" not in text and "(default: $LSDC_DATA or ./data) (default" not in text
    assert "``" not in (p.description or "")


def test_smoke_test_and_debug_are_exclusive_and_smoke_keeps_the_axes(capsys):
    a = parse_args(BATCH_SIZE, ["--smoke-test"])
    assert a.dataset == "digits" and a.seeds == [0] and a.smoke_test
    assert "batch_size" not in a.overrides and a.overrides["epochs"] == 2 and a.overrides["width"] == 0.125
    assert main(BATCH_SIZE, ["--smoke-test", "--debug"]) == 2
    assert "choose one" in capsys.readouterr().err


def test_bad_callback_and_sampler_are_refused(capsys):
    assert main(BATCH_SIZE, ["--dataset", "digits", "--callback", "nonsense", "--dry-run"]) == 2
    assert "--callback nonsense" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        search_main(["--dataset", "digits", "--sampler", "grid", "--dry-run"])


# ------------------------------------------------------------------------------ progress view
def _trial(status, epoch=0, epochs=4, variant="a", seed=0):
    return SimpleNamespace(status=status, last_result={"epoch": epoch}, trial_id=f"{variant}{seed}",
                           config={"spec": {"variant": variant, "trial": {"seed": seed, "epochs": epochs}}},
                           local_path=f"/tmp/tune/{variant}-s{seed}", path=f"/tmp/tune/{variant}-s{seed}")


def test_progress_best_is_the_last_epoch_and_elapsed_counts_from_the_command(capsys):
    from lsdc.runner.progress import Progress
    p = Progress("t", total=2, done_outside=0, quiet=False, live=False, t_start=time.time() - 125)
    t = _trial("RUNNING", 1)
    p.on_trial_result(0, [t], t, {"acc": 0.9, "epoch": 1, "time_this_iter_s": 1.0})   # a good early epoch
    t.last_result = {"epoch": 4}
    p.on_trial_result(0, [t], t, {"acc": 0.5, "epoch": 4, "trial_done": 1, "time_this_iter_s": 1.0})
    line = p.line([t, _trial("PENDING")])
    assert "best last-epoch acc 0.500" in line and "0.9" not in line.split("|")[1].split(",")[0]
    assert "elapsed 2m0" in line and "1 pending" in line


def test_progress_prints_the_error_file_of_a_failed_trial(capsys):
    from lsdc.runner.progress import Progress
    p = Progress("t", total=1, done_outside=0, live=False)
    t = _trial("ERROR")
    p.on_trial_error(0, [t], t)
    out = capsys.readouterr().out
    assert "/tmp/tune/a-s0/error.txt" in out and "1 failed" in out


def test_workers_get_the_plugins_and_the_drivers_test_hooks_only(monkeypatch):
    """What a run passes to its Ray workers' environment (also on a cluster started before it):
    the plugin modules, and lsdc's fault hooks only where the driver has them set."""
    from lsdc.runner.orchestrate import worker_env
    from lsdc.storage import TEST_HOOKS
    for k in (*TEST_HOOKS, "LSDC_PLUGINS"):
        monkeypatch.delenv(k, raising=False)
    args = SimpleNamespace(plugins=[])
    assert worker_env(args) == {}
    monkeypatch.setenv("LSDC_FAULT", "mid-epoch")
    monkeypatch.setenv("LSDC_FAULT_ENOSPC", "")                  # empty: not set
    monkeypatch.setenv("LSDC_PLUGINS", "b")
    assert worker_env(SimpleNamespace(plugins=["a", "b"])) == {"LSDC_PLUGINS": "a,b", "LSDC_FAULT": "mid-epoch"}


def test_pretraining_cpus_fit_the_nodes_and_the_free_cpus(monkeypatch):
    """Uneven nodes (8 and 2 CPUs): two backbones get 4 CPUs each (both fit on the 8-CPU node
    at once; 5 each would run them one after the other); busy CPUs are not asked for."""
    import lsdc.runner.orchestrate as orch
    nodes = [{"Alive": True, "Resources": {"CPU": 8.0}}, {"Alive": True, "Resources": {"CPU": 2.0}},
             {"Alive": False, "Resources": {"CPU": 64.0}}]
    free = {"CPU": 10.0}
    monkeypatch.setattr(orch.ray, "nodes", lambda: nodes)
    monkeypatch.setattr(orch.ray, "available_resources", lambda: free)
    assert orch.pretrain_cpus(1, 0, 2) == 4 and orch.pretrain_cpus(1, 0, 1) == 8
    assert orch.pretrain_cpus(1, 0, 20) == 1 and orch.pretrain_cpus(2, 0, 20) == 2
    assert orch.pretrain_cpus(1, 0.25, 1) == 1
    free["CPU"] = 3.0
    assert orch.pretrain_cpus(1, 0, 1) == 3


def test_searchers_that_read_every_epoch_refuse_a_sparser_evaluation(capsys):
    """--searcher optuna (Tune checks each report for ACC) and the search's ASHA compare
    metrics after every epoch: eval_every > 1 is refused in one line, before anything runs."""
    assert main(BATCH_SIZE, ["--dataset", "digits", "--searcher", "optuna", "--set", "eval_every=5", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "eval_every=5" in err[0] and "--searcher optuna" in err[0]
    assert parse_args(BATCH_SIZE, ["--dataset", "digits", "--searcher", "optuna"]).overrides["eval_every"] == 1
    assert "eval_every" not in parse_args(BATCH_SIZE, ["--dataset", "digits"]).overrides
    assert search_main(["--dataset", "digits", "--set", "eval_every=5", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ASHA" in err[0]
    assert search_main(["--dataset", "digits", "--set", "eval_every=5", "--no-asha", "--dry-run"]) == 0
