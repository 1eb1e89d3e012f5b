"""Fault injection: a killed driver, Ctrl-C, a lost node, divergence, bad input, torn writes,
hostile files, a killed search (and the search completed and extended), and a 40-trial soak.
Each test would fail without the behaviour it names."""
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from fault_study import ARGS, STUDY   # this folder is on sys.path: pytest imports its test files so
from lsdc.records import read_records
from lsdc.storage import Storage
from lsdc.study import Study, Variant, main
from lsdc.tables import render

HERE = os.path.dirname(os.path.abspath(__file__))
FAULT_STUDY = os.path.join(HERE, "fault_study.py")
TINY = ["--dataset", "digits", "--pretrain-epochs", "1", "--set", "width=0.125", "--set", "batch_size=256", "--quiet"]


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ")
    except OSError:
        return b""


def ray_pids() -> set[int]:
    out = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            cmd = cmdline(int(pid))
            if b"raylet" in cmd or b"gcs_server" in cmd or cmd.startswith(b"ray::") or b"ray/dashboard" in cmd:
                out.add(int(pid))
    return out


def children(pid: int) -> set[int]:
    kids = set()
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                kids.add(int(p))
    return kids


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def wait_for(cond, timeout, what):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def records_of(storage):
    return {r["key"]: r for r in read_records(Storage(storage), ["faults"])[0]}


def unfinished_checkpoints(storage, min_epoch=0):
    """The lsdc checkpoint metas (key -> meta.json) of the trials with a checkpoint of epoch >=
    min_epoch but no record yet."""
    import json
    base = os.path.join(storage, "faults", "checkpoints")
    done = set(records_of(storage))
    out = {}
    if os.path.isdir(base):
        for key in os.listdir(base):
            try:
                with open(os.path.join(base, key, "meta.json")) as f:
                    meta = json.load(f)
                epoch = meta["epoch"]
            except (OSError, ValueError, KeyError):
                continue
            if epoch >= min_epoch and key not in done:
                out[key] = meta
    return out


def checkpointed_unfinished(storage, min_epoch=0):
    """Keys of the trials with an lsdc checkpoint (of epoch >= min_epoch) but no record yet."""
    return list(unfinished_checkpoints(storage, min_epoch))


def start(storage, *extra):
    return subprocess.Popen([sys.executable, FAULT_STUDY, "--storage", storage, *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_killed_driver_resumes_without_rerunning_finished_trials(tmp_path, shared_address, join, capsys):
    storage = str(tmp_path / "res")
    args = ("--epochs", "5", "--seeds", "0", "--set", "pretrain=none")
    proc = start(storage, *args, "--address", shared_address)
    try:
        wait_for(lambda: len(records_of(storage)) >= 1 and checkpointed_unfinished(storage, 2), 240,
                 "a finished trial and a checkpointed unfinished one")
        proc.send_signal(signal.SIGKILL)                 # the driver only: no chance to clean up
        proc.wait(timeout=30)
    finally:
        kill_group(proc)                                  # Ray's orphaned agents of the killed session
    before = {k: r["finished_at"] for k, r in records_of(storage).items()}
    assert 1 <= len(before) < 3
    join()                                                # the same command again, here in-process
    code = main(STUDY, ARGS + ["--storage", storage, *args])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert "continue from their lsdc checkpoints" in out
    recs = records_of(storage)
    assert len(recs) == 3                                 # every trial, once
    for k, t in before.items():
        assert recs[k]["finished_at"] == t                # finished trials were not rerun
    resumed = [r for r in recs.values() if r["restarts"] >= 1]
    assert resumed, f"no trial continued from a checkpoint: {[(r['variant'], r['seed'], r['restarts']) for r in recs.values()]}"
    for r in resumed:
        assert [h["epoch"] for h in r["history"]] == list(range(1, r["epochs_done"] + 1))
    # divergence: the 'wild' trials stopped at once, recorded as diverged with their epoch
    wild = [r for r in recs.values() if r["variant"] == "wild"]
    assert wild and all(r["status"] == "diverged" and r["diverged_epoch"] >= 1 for r in wild)
    assert all(r["final"]["acc"] is None for r in wild)
    assert all(r["status"] == "finished" for r in recs.values() if r["variant"] != "wild")
    text, _ = render(Storage(storage), str(tmp_path / "t.md"))
    assert "diverged" in text


@pytest.mark.exclusive    # counts Ray's processes on the machine: no other Ray test beside it
def test_ctrl_c_stops_cleanly_says_how_to_resume_and_leaves_no_ray_processes(tmp_path):
    storage = str(tmp_path / "res")
    before = ray_pids()
    proc = start(storage, "--epochs", "30", "--seeds", "0", "--set", "pretrain=none")
    try:
        wait_for(lambda: checkpointed_unfinished(storage), 240, "a running trial with a checkpoint")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        kill_group(proc)
    assert proc.returncode == 130, out[-3000:]
    assert "Resume with the same command" in out
    time.sleep(2)
    assert ray_pids() - before == set()


def test_reap_waits_for_exiting_processes_and_kills_stragglers():
    """What RayHandle.close does after ray.shutdown: a process that exits on its own within the
    wait is left to exit; one still there at the deadline is killed; a pid whose start time
    differs (a new process reusing it) is not touched."""
    from lsdc.runner.cluster import _start_time, reap
    gone = subprocess.Popen(["sleep", "0.2"])
    t0 = time.monotonic()
    reap({gone.pid: _start_time(gone.pid)}, timeout=30.0)   # exited (a zombie until waited for): no wait to the end
    assert time.monotonic() - t0 < 15 and gone.wait(5) == 0
    quick = subprocess.Popen(["sleep", "0.2"])
    stuck = subprocess.Popen(["sleep", "60"])
    other = subprocess.Popen(["sleep", "60"])
    try:
        procs = {p.pid: _start_time(p.pid) for p in (quick, stuck)}
        procs[other.pid] = "0"       # not the process that was recorded under this pid
        t0 = time.monotonic()
        reap(procs, timeout=5.0)
        took = time.monotonic() - t0
        assert quick.wait(5) == 0                        # exited by itself
        assert stuck.wait(5) == -signal.SIGKILL          # killed at the deadline
        assert 4.9 < took < 15
        assert other.poll() is None                      # left alone
    finally:
        for p in (quick, stuck, other):
            p.kill()
            p.wait()


@pytest.mark.exclusive    # counts Ray's processes on the machine: no other Ray test beside it
def test_normal_exit_leaves_no_ray_processes_nor_session_folder_and_a_plugin_reaches_the_workers(tmp_path, monkeypatch):
    """A study on the local Ray that lsdc starts itself: after a normal exit no Ray process and no
    session folder is left. Its labeler is a user's module named by --plugin (``toy_plugin``,
    importable through PYTHONPATH as a user's would be): lsdc puts LSDC_PLUGINS in the runtime
    environment of the Ray it starts, the workers register it, and its record says so."""
    import glob
    sessions = set(glob.glob("/tmp/ray/session_2*"))
    before = ray_pids()
    from lsdc.runner import cluster
    seen = []
    real = cluster.ray_processes

    def spy():                                     # what close() will wait for, with command lines
        procs = real()
        seen.append([cmdline(p) for p in procs])
        return procs
    monkeypatch.setattr(cluster, "ray_processes", spy)
    monkeypatch.setenv("PYTHONPATH", HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.syspath_prepend(HERE)
    study = Study(name="plugged", title="a plugin labeler", variants=(Variant("toy", {"labeler": "toy_dot"}),))
    storage = str(tmp_path / "store")
    try:
        assert main(study, TINY + ["--epochs", "2", "--seeds", "0", "--set", "pretrain=none", "--storage", storage,
                                   "--plugin", "toy_plugin"]) == 0
    finally:
        from lsdc import registry
        from lsdc.registry import LABELERS
        if "toy_dot" in LABELERS:
            LABELERS.remove("toy_dot")
        sys.modules.pop("toy_plugin", None)
        registry._PLUGINS_LOADED.discard("toy_plugin")
    assert len(seen) == 1
    assert any(b"gcs_server" in c for c in seen[0]) and any(b"raylet" in c for c in seen[0]), seen
    assert any(c.startswith(b"ray::") for c in seen[0]), seen       # the workers too
    assert ray_pids() - before == set()
    assert set(glob.glob("/tmp/ray/session_2*")) - sessions == set()     # lsdc's local cluster: removed
    records, bad = read_records(Storage(storage), ["plugged"])
    assert not bad and len(records) == 1
    r = records[0]
    assert r["config"]["labeler"] == "toy_dot" and r["effective"]["toy_dot_threshold"] == 0.8
    assert r["status"] == "finished" and len(r["history"]) == 2


def test_lost_node_trial_restarts_from_checkpoint_elsewhere(tmp_path, capsys):
    """On one ray.cluster_utils.Cluster (a head without CPUs, two 1-CPU worker nodes): the device
    checks of a cluster given by --address ask the cluster, not the driver's machine (here
    without GPU either way); a study spreads its trials over both nodes (two run at once, their
    checkpoints written on each node), a worker node is lost mid-trial, its trial restarts from
    its checkpoint on the other node, and every record is collected."""
    import ray
    from ray.cluster_utils import Cluster

    from lsdc.planning import StudyError
    from lsdc.runner.cluster import check_resources
    from lsdc.runner.orchestrate import check_cluster_device
    from lsdc.study import parse_args
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    storage = str(tmp_path / "res")
    try:
        # --address: a CUDA device or GPU fractions asked of a cluster without GPUs: one line, exit 2,
        # nothing written (the driver's own machine is not what is checked: see the GPU node below)
        for extra, message in ((["--set", "device=cuda"], "--set device=cuda: the Ray cluster has no GPU"),
                               (["--gpus-per-trial", "0.5"], "--gpus-per-trial 0.5: the Ray cluster has no GPU")):
            code = main(STUDY_DEV,
                        TINY + ["--epochs", "1", "--seeds", "0", "--storage", storage, "--address", cluster.address,
                                *extra])
            err = capsys.readouterr().err.strip()
            assert code == 2 and len(err.splitlines()) == 1 and message in err, err
            assert not os.path.exists(storage) and not ray.is_initialized()
        # the driver in-process; a thread removes a node once two trials run with checkpoints
        removed, errors, ended, lock, running_on = [], [], threading.Event(), threading.Lock(), {}

        def remove_a_node():
            try:
                wait_for(lambda: ended.is_set() or len(checkpointed_unfinished(storage)) >= 2, 240,
                         "two trials running on the two nodes")
                with lock:
                    if not ended.is_set():
                        running_on.update({key: meta["ray_node_id"]      # where their checkpoints were written
                                           for key, meta in unfinished_checkpoints(storage).items()})
                        cluster.remove_node(workers[0], allow_graceful=False)
                        removed.append(time.time())
            except Exception as e:          # reported by the test, not lost in the thread
                errors.append(e)
        remover = threading.Thread(target=remove_a_node, daemon=True)
        remover.start()
        try:
            code = main(STUDY, ARGS + ["--storage", storage, "--epochs", "10", "--seeds", "0", "--set", "pretrain=none",
                                       "--address", cluster.address, "--max-failures", "3"])
        finally:
            with lock:
                ended.set()
            remover.join(timeout=10)
        assert not remover.is_alive() and not errors, errors
        out = capsys.readouterr().out
        assert removed, "the study ended before two trials ran at once: " + out[-3000:]
        assert set(running_on.values()) == {w.node_id for w in workers}, running_on   # spread over both nodes
        assert code == 0, out[-4000:]
        # a node that declares a GPU: the same checks pass from this GPU-less driver with --address,
        # while without --address the driver's machine is checked (and has no CUDA device here)
        cluster.add_node(num_cpus=1, num_gpus=1)
        cluster.wait_for_nodes()
        parse_args(STUDY_DEV, TINY + ["--set", "device=cuda", "--address", cluster.address])   # accepted
        if not torch.cuda.is_available():
            with pytest.raises(StudyError, match="this machine has no CUDA device"):
                parse_args(STUDY_DEV, TINY + ["--set", "device=cuda"])
        ray.init(address=cluster.address, logging_level="error", log_to_driver=False)
        try:
            check_cluster_device("cuda")
            check_resources(0.5, 1)
        finally:
            ray.shutdown()
    finally:
        cluster.shutdown()
    found, bad = read_records(Storage(storage), ["faults"])
    recs = {r["key"]: r for r in found}
    assert not bad and len(recs) == 3 and len(found) == 3
    lost = {k for k, node in running_on.items() if node == workers[0].node_id}
    assert {k for k, r in recs.items() if r["restarts"] >= 1} == lost, "not exactly the lost trial resumed"
    assert all(recs[k]["ray_node_id"] == workers[1].node_id for k in lost)   # ... on the surviving node


STUDY_DEV = Study(name="dev", title="t", variants=(Variant("a"),))


@pytest.mark.parametrize("argv,message", [
    (["--set", "mixing=cutmix"], "mixing: unknown 'cutmix'; allowed: ricap, mixup, none"),
    (["--set", "labeler=spectral"], "labeler: unknown 'spectral'"),
    (["--set", "bogus=1"], "bogus: unknown config field"),
    (["--set", "cosine_tau=2"], "cosine_tau: must be >= -1.0 and <= 1.0"),
    (["--set", "sne_temperature=0"], "sne_temperature: must be > 0.0"),
    (["--set", "lam=-1"], "lam: must be >= 0.0"),
    (["--set", "rampup=-2"], "rampup: must be >= 0"),
    (["--set", "knn_k=500"], r"knn_k: must be < batch_size \(256\)"),
    (["--set", "batch_size=1"], "batch_size: must be >= 2"),
    (["--seeds", "3,3"], "--seeds: duplicate seed 3"),
    (["--seeds", ","], "--seeds: empty list"),
    (["--dataset", "cifar10", "--data-root", "/nonexistent-data"],
     "dataset 'cifar10': not found under data root '/nonexistent-data'.*cifar-10-batches-py/data_batch_1.*--download"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, argv, message):
    store = tmp_path / "store"
    code = main(Study(name="bad", title="t", variants=(Variant("a"),)),
                TINY + ["--epochs", "1", "--storage", str(store)] + argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and re.search(message, err), err
    assert not store.exists()


def test_gpus_on_a_cpu_cluster_fail_in_seconds(joined, tmp_path, capsys):
    store = tmp_path / "store"
    t0 = time.time()
    code = main(Study(name="bad", title="t", variants=(Variant("a"),)),
                TINY + ["--epochs", "1", "--storage", str(store), "--gpus-per-trial", "0.25"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--gpus-per-trial 0.25: the Ray cluster has no GPU" in err and len(err.splitlines()) == 1
    assert time.time() - t0 < 60 and not store.exists()


def test_unwritable_storage_is_refused_before_anything(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code = main(Study(name="bad", title="t", variants=(Variant("a"),)),
                TINY + ["--epochs", "1", "--storage", str(blocker / "results")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: storage: cannot write to") and "is not a directory" in err


def test_hooks_travel_with_the_work_and_leave_a_reused_worker_as_it_was(monkeypatch):
    """What a trial, pretraining or k-means task does with the driver's hooks: set for its
    duration, then the environment as before (a worker Ray reuses for another run keeps none);
    anything but lsdc's hooks is ignored."""
    from lsdc.storage import active_hooks, fault_armed, hooks_applied
    monkeypatch.delenv("LSDC_FAULT", raising=False)
    monkeypatch.setenv("LSDC_FAULT_ENOSPC", "/before")
    monkeypatch.delenv("PATH_NOT_A_HOOK", raising=False)
    with hooks_applied({"LSDC_FAULT": "mid-epoch", "LSDC_FAULT_ENOSPC": "/during", "PATH_NOT_A_HOOK": "x"}):
        assert fault_armed("mid-epoch") and os.environ["LSDC_FAULT_ENOSPC"] == "/during"
        assert "PATH_NOT_A_HOOK" not in os.environ
        assert active_hooks() == {"LSDC_FAULT": "mid-epoch", "LSDC_FAULT_ENOSPC": "/during"}
    assert "LSDC_FAULT" not in os.environ and os.environ["LSDC_FAULT_ENOSPC"] == "/before"
    with pytest.raises(RuntimeError):
        with hooks_applied({"LSDC_FAULT": "record-write"}):
            raise RuntimeError("a trial that fails")
    assert "LSDC_FAULT" not in os.environ


def test_records_are_written_atomically(tmp_path, monkeypatch):
    s = Storage(str(tmp_path))
    s.write_json("st/records/a.json", {"schema": 1})
    real = os.replace

    def crash(src, dst):
        raise OSError("simulated crash before the rename")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        s.write_json("st/records/b.json", {"schema": 1, "big": list(range(1000))})
    monkeypatch.setattr(os, "replace", real)
    assert sorted(os.listdir(tmp_path / "st" / "records")) == ["a.json"]
    # a temporary file left by a killed process is never read as a record
    (tmp_path / "st" / "records" / ".tmp-123-c.json").write_text('{"schema": 1, "conf')
    assert s.list("st/records", ".json") == ["a.json"]


def test_configs_are_data_never_code(tmp_path, capsys):
    marker = tmp_path / "pwned"
    code = main(Study(name="bad", title="t", variants=(Variant("a"),)),
                TINY + ["--storage", str(tmp_path / "s"), "--set", f"lr=__import__('os').system('touch {marker}')"])
    assert code == 2 and "lr: must be a finite number" in capsys.readouterr().err
    assert not marker.exists()


def test_no_dashboard_by_default_and_localhost_only_when_asked():
    from lsdc.runner.cluster import ray_init_kwargs
    kw = ray_init_kwargs(None)
    assert kw["include_dashboard"] is False and kw["address"] == "local"
    kw = ray_init_kwargs(None, dashboard=True)
    assert kw["include_dashboard"] is True and kw["dashboard_host"] == "127.0.0.1"
    assert "include_dashboard" not in ray_init_kwargs("ray://head:10001")   # joining: the cluster's own settings


@pytest.mark.exclusive    # counts Ray's processes on the machine: no other Ray test beside it
def test_soak_forty_trials_every_record_and_resources_return(tmp_path, monkeypatch):
    """Issue 6's soak: a digits study of 40 short trials on a local Ray completes with every
    record, and the driver's memory and the number of processes return to where they started.
    One local Ray (this process's, as a notebook's would be) serves a warm-up run and the soak,
    so that the comparison starts after the imports and the first workers; what lsdc does with
    a Ray it starts itself is the normal-exit test's subject."""
    import ray
    from lsdc.runner.cluster import ray_env, ray_init_kwargs
    monkeypatch.setenv("LSDC_TEST_SECRET", "s3cr3t-t0ken-value")
    soak = Study(name="soak", title="soak", variants=(Variant("knn", {"labeler": "knn"}),
                                                      Variant("cos", {"labeler": "cosine"})))
    argv = TINY + ["--epochs", "1", "--set", "pretrain=none", "--set", "batch_size=512",   # short: 4 steps
                   "--storage", str(tmp_path / "s"), "--checkpoint-every", "1"]
    with ray_env():                                               # lsdc's own settings for a local Ray
        ray.init(**ray_init_kwargs(None, num_cpus=2))
    try:
        assert main(soak, argv + ["--seeds", "100"]) == 0          # warm-up: imports, workers
        time.sleep(2)

        def working():       # Ray's processes less its pool of idle workers (kept up to num_cpus, any pids)
            return {p for p in ray_pids() if not cmdline(p).startswith(b"ray::IDLE")}
        kids0, rss0, ray0 = children(os.getpid()), rss_mb(), working()
        assert main(soak, argv + ["--seeds", "0-19"]) == 0         # 2 x 20 = 40 trials
        wait_for(lambda: working() <= ray0, 20, "Ray's processes (idle workers aside) back to those before the soak")
        assert children(os.getpid()) == kids0
        assert rss_mb() - rss0 < 150, f"driver memory grew by {rss_mb() - rss0:.0f} MB"
    finally:
        ray.shutdown()
    recs, bad = read_records(Storage(str(tmp_path / "s")), ["soak"])
    assert not bad and len(recs) == 42
    assert all(r["status"] == "finished" and r["config"]["batch_size"] == 512 for r in recs)
    for name in os.listdir(tmp_path / "s" / "soak" / "records"):
        assert "s3cr3t-t0ken-value" not in (tmp_path / "s" / "soak" / "records" / name).read_text()


class Evil:
    """Unpickling it creates the marker file."""
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant_pickles(root, marker):
    """tuner.pkl, an experiment state and a pickled checkpoint in every folder a restore could read."""
    import pickle
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "tuner.pkl"), "wb") as f:
        pickle.dump(Evil(marker), f)
    with open(os.path.join(root, "experiment_state-2026-01-01_00-00-00.json"), "w") as f:
        f.write('{"trial_data": [], "runner_data": {}}')
    ck = os.path.join(root, "trial_0", "checkpoint_000000")
    os.makedirs(ck, exist_ok=True)
    torch.save({"model": Evil(marker)}, os.path.join(ck, "trial.pt"))
    with open(os.path.join(ck, "meta.json"), "w") as f:
        f.write('{"restarts": 0, "epoch": 1}')


@pytest.mark.timeout(1200)   # several study runs
def test_planted_pickles_never_execute_and_bad_records_are_quarantined(tmp_path, joined, capsys):
    """Finding 1 (code execution from the storage) and 2 (records trusted by file name), on one
    storage: a first run with pickles planted everywhere a restore would look, then a re-run
    after a record was truncated and another copied over a third's file."""
    import hashlib
    import json
    from lsdc.pretrain import backbone_path
    from lsdc.runner.orchestrate import experiment_name
    from lsdc.study import parse_args, plan, planned_device_type
    storage, marker = str(tmp_path / "res"), tmp_path / "pwned"
    argv = ["--epochs", "2", "--seeds", "0"]          # in-process, on the shared cluster
    args = parse_args(STUDY, ARGS + ["--storage", storage, *argv])
    planned = plan(STUDY, args.dataset, args.seeds, args.overrides, [], args.env, planned_device_type(args))
    name = experiment_name(STUDY, planned)
    for suffix in ("", "-r1", "-r2"):
        plant_pickles(os.path.join(storage, "faults", "tune", name + suffix), marker)
    p = planned[1]                                     # a pickled lsdc checkpoint, its hash made to match
    ck = os.path.join(storage, "faults", "checkpoints", p.key)
    os.makedirs(ck)
    torch.save({"model": Evil(marker)}, os.path.join(ck, "trial-1.pt"))
    sha = hashlib.sha256(open(os.path.join(ck, "trial-1.pt"), "rb").read()).hexdigest()
    with open(os.path.join(ck, "meta.json"), "w") as f:
        json.dump({"key": p.key, "epoch": 1, "restarts": 0, "file": "trial-1.pt", "sha256": sha}, f)
    bb = backbone_path(p.cfg, storage, p.fingerprint)  # a pickled cached backbone
    os.makedirs(os.path.dirname(bb))
    torch.save({"state_dict": Evil(marker), "meta": {}}, bb)
    code = main(STUDY, ARGS + ["--storage", storage, *argv])
    out = "".join(capsys.readouterr())
    assert code == 0, out[-4000:]
    assert not marker.exists()
    assert "warning: backbone checkpoint" in out and "pretraining it again" in out
    recs = records_of(storage)
    assert len(recs) == 3 and recs[p.key]["restarts"] == 0             # the planted checkpoint was not used
    assert not os.path.exists(ck)                                       # finished: its checkpoint is gone
    # finding 2: a truncated record, and one seed's record copied over another trial's file
    keys = sorted(recs)
    rdir = os.path.join(storage, "faults", "records")
    with open(os.path.join(rdir, keys[0] + ".json"), "r+") as f:
        f.truncate(300)
    with open(os.path.join(rdir, keys[1] + ".json"), "w") as f:
        json.dump(recs[keys[2]], f)
    code = main(STUDY, ARGS + ["--storage", storage, *argv])
    out = "".join(capsys.readouterr())
    assert code == 0, out[-4000:]
    assert "nothing to do" not in out and out.count("quarantined record") == 2, out[-3000:]
    assert len(os.listdir(os.path.join(storage, "faults", "quarantine"))) == 2
    after = records_of(storage)
    assert sorted(after) == keys and after[keys[2]]["finished_at"] == recs[keys[2]]["finished_at"]
    assert not marker.exists()


@pytest.mark.timeout(1200)   # several study runs
def test_killed_at_named_points_full_disk_then_rerun_completes(tmp_path, joined, monkeypatch, capsys):
    """Finding 4: a trial killed mid-epoch, during a checkpoint write and during a record write
    (LSDC_FAULT, once each), then a run on a full disk (ENOSPC), then space freed: the same
    command completes, every trial once, with a consistent history, and no manual rm. The
    hooks are set in the driver's environment only, and the driver is this process, joined to
    the shared cluster (a Ray its caller initialized, started without them): lsdc sends them with
    the trials to the workers."""
    storage, once = str(tmp_path / "res"), str(tmp_path / "once")
    argv = ARGS + ["--storage", storage, "--epochs", "2", "--seeds", "0", "--set", "pretrain=none", "--max-failures", "0"]
    monkeypatch.setenv("LSDC_FAULT", "mid-epoch,checkpoint-write,record-write")
    monkeypatch.setenv("LSDC_FAULT_ONCE", once)
    assert main(STUDY, argv) != 0
    assert sorted(os.listdir(once)) == ["checkpoint-write", "mid-epoch", "record-write"]
    assert len(records_of(storage)) < 3
    monkeypatch.delenv("LSDC_FAULT")
    monkeypatch.delenv("LSDC_FAULT_ONCE")
    full = tmp_path / "full"
    full.write_text("")
    monkeypatch.setenv("LSDC_FAULT_ENOSPC", str(full))
    try:
        code = main(STUDY, argv)
    except OSError as e:                        # a full disk is not bad input: it may end the run as it comes
        code, _ = 1, print(e)
    assert code != 0 and "No space left" in "".join(capsys.readouterr())
    full.unlink()                                                         # space freed
    monkeypatch.delenv("LSDC_FAULT_ENOSPC")
    assert main(STUDY, argv) == 0, "".join(capsys.readouterr())[-4000:]
    recs = records_of(storage)
    assert len(recs) == 3
    for r in recs.values():
        assert [h["epoch"] for h in r["history"]] == list(range(1, r["epochs_done"] + 1))
    leftovers = [f for d, _, fs in os.walk(storage) for f in fs if f.startswith(".tmp-")]
    assert leftovers == []
    assert not {k for k in os.environ if k.startswith("LSDC_FAULT")}


@pytest.mark.timeout(1200)   # several study runs
def test_killed_at_random_moments_then_the_same_command_completes(tmp_path, join, capsys):
    """Finding 4, at moments nobody chose: the study's whole process group (driver, its local
    Ray, the trials) is killed with SIGKILL, as by a lost machine, twice at seeded random
    moments (start-up, pretraining, training, checkpoint or record writes: wherever they fall);
    each killed run starts its own local Ray (the second after the first was killed). Then the
    same study (here in-process, on the shared cluster: what the killed runs left in the storage
    is the subject) completes with every trial once, verified, with a consistent history and no
    temporary file left. LSDC_TEST_SEED draws other moments."""
    import glob
    import random
    import shutil
    sessions = set(glob.glob("/tmp/ray/session_2*"))
    seed = int(os.environ.get("LSDC_TEST_SEED", "20261127"))
    rng = random.Random(seed)
    storage = str(tmp_path / "res")
    args = ("--epochs", "4", "--seeds", "0")
    moments = []
    for _ in range(2):
        delay = rng.uniform(3.0, 25.0)
        proc = start(storage, *args)
        try:
            proc.communicate(timeout=delay)               # it may finish first: then nothing is killed
            moments.append(f"{delay:.1f} s (finished first)")
        except subprocess.TimeoutExpired:
            moments.append(f"{delay:.1f} s")
        finally:
            kill_group(proc)
            proc.wait(timeout=30)
    join()
    code = main(STUDY, ARGS + ["--storage", storage, *args])
    what = f"LSDC_TEST_SEED={seed}, killed at {moments}"
    assert code == 0, what + "\n" + "".join(capsys.readouterr())[-4000:]
    recs, bad = read_records(Storage(storage), ["faults"])
    assert not bad and len(recs) == 3 and len({r["key"] for r in recs}) == 3, what
    for r in recs:
        assert [h["epoch"] for h in r["history"]] == list(range(1, r["epochs_done"] + 1)), what
        assert r["status"] in ("finished", "diverged"), what
    leftovers = [f for d, _, fs in os.walk(storage) for f in fs if f.startswith(".tmp-")]
    assert leftovers == [], what
    for d in set(glob.glob("/tmp/ray/session_2*")) - sessions:   # the killed runs' Ray session folders
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.timeout(1200)   # several search runs
def test_killed_search_resumes_completes_extends_and_never_restores_a_pickle(tmp_path, shared_address, join, capfd):
    """The search end to end. Finding 4 (a search killed in the middle of a journal line:
    UpdateFinishedTrialError, stale RUNNING trials) and 1 (a planted tuner.pkl in the search's
    predictable run folders), and 6 (checkpoints pruned): the killed command (a child process
    on the shared cluster), then the same command here, in-process, completes it with the best
    configuration written; asked for more trials it runs only the new ones, with the rank
    correlation of the stored trials; asked again, nothing."""
    import json

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from scipy.stats import spearmanr

    from lsdc.study import search_main
    storage, marker = str(tmp_path / "res"), tmp_path / "pwned"
    search = os.path.join(os.path.dirname(os.path.dirname(HERE)), "studies", "search.py")
    args = ["--storage", storage, "--dataset", "digits", "--set", "width=0.125", "--set", "batch_size=256",
            "--set", "pretrain=none", "--epochs", "2", "--max-concurrent", "2", "--objective", "label_free", "--quiet"]
    run = subprocess.run([sys.executable, search, *args, "--trials", "2", "--address", shared_address],
                         capture_output=True, text=True, timeout=600, env=dict(os.environ, LSDC_FAULT="journal-write"))
    assert run.returncode == 137, (run.stdout + run.stderr)[-3000:]  # killed in the middle of a journal line
    folder = os.path.join(storage, "search")
    journal = next(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".journal"))
    name = os.path.basename(journal)[:-len(".journal")]
    for n in (1, 2, 3):
        plant_pickles(os.path.join(folder, "tune", f"{name}-r{n}"), marker)
    join()
    code = search_main(args + ["--trials", "2"])
    out = "".join(capfd.readouterr())       # file descriptors: also what Ray's and Tune's loggers write
    assert code == 0, out[-4000:]
    assert "UpdateFinishedTrialError" not in out and "torn or corrupt line" in out
    assert "0/2 trials done" in out and "best configuration:" in out
    assert not marker.exists()
    study = optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(journal)))
    states = [t.state.name for t in study.trials]
    assert "RUNNING" not in states and states.count("COMPLETE") >= 2
    assert not os.path.exists(os.path.join(folder, "checkpoints"))
    best_file = os.path.join(folder, f"best-{name}.json")
    assert [f for f in os.listdir(folder) if f.startswith("best-")] == [os.path.basename(best_file)]
    best = json.load(open(best_file))
    assert best["n_trials"] == 2 and best["objective"] == "label_free"
    assert set(best["best"]["params"]) == {"knn_k", "lam", "rampup", "lr"}
    assert best["best_config"]["knn_k"] == best["best"]["params"]["knn_k"]
    # more trials asked for: only the new one runs
    assert search_main(args + ["--trials", "3"]) == 0
    out = "".join(capfd.readouterr())
    assert "2/3 trials done" in out and "UpdateFinishedTrialError" not in out
    best = json.load(open(best_file))
    assert best["n_trials"] == 3
    # the reported rank correlation is the one of the stored trials (recomputed here)
    table = json.load(open(os.path.join(folder, f"{name}-trials.json")))
    pairs = [(t["objective"], t["acc"]) for t in table.values()
             if t.get("objective") is not None and t.get("acc") is not None and not t["diverged"]]
    rho = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic if len(pairs) >= 3 else None
    if rho is None or rho != rho:
        assert best["spearman_vs_acc"] is None
    else:
        assert best["spearman_vs_acc"] == round(float(rho), 3)
    assert search_main(args + ["--trials", "3"]) == 0            # nothing left: no new trials
    assert json.load(open(best_file))["n_trials"] == 3 and not marker.exists()
