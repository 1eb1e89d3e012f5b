"""The SLURM template's logic on one node: the SLURM variables set by the test, srun, ray and
scontrol replaced by stubs that log their arguments."""
import os
import stat
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "slurm", "lsdc-study.sbatch")


def _stub(path, body):
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_slurm_script_starts_head_then_workers_then_the_study(tmp_path):
    log = tmp_path / "log"
    env = dict(os.environ, SLURM_JOB_NODELIST="n[1-3]", SLURM_CPUS_PER_TASK="8", SLURM_GPUS_PER_TASK="2",
               RAY_HEAD_WAIT="0.3", RAY_WORKER_WAIT="0.3",
               SCONTROL=_stub(tmp_path / "scontrol", 'echo "scontrol $*" >> %s; printf "n1\\nn2\\nn3\\n"\n' % log),
               SRUN=_stub(tmp_path / "srun", 'echo "srun $*" >> %s\n'
                          'while [[ $# -gt 0 && $1 == -* ]]; do case $1 in -w) shift 2;; *) shift;; esac; done\n'
                          '[[ $1 == hostname ]] && { echo 10.1.2.3; exit 0; }\nexec "$@"\n' % log),
               RAY=_stub(tmp_path / "ray", 'echo "ray $*" >> %s\n' % log),
               PYTHON=_stub(tmp_path / "python", 'echo "python $*" >> %s\n' % log))
    out = subprocess.run(["bash", SCRIPT, "studies/batch_size.py", "--dataset", "cifar10", "--storage", "/shared/r"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = log.read_text().splitlines()
    rays = [line for line in lines if line.startswith("ray ")]
    assert "srun --nodes=1 --ntasks=1 -w n1 hostname --ip-address" in lines
    assert rays[0].startswith("ray start --head --node-ip-address=10.1.2.3 --port=6379 --num-cpus=8 --num-gpus=2")
    assert sorted(rays[1:]) == ["ray start --address=10.1.2.3:6379 --num-cpus=8 --num-gpus=2 --block"] * 2
    assert any(line.startswith("srun --nodes=1 --ntasks=1 -w n3 ") for line in lines)
    assert lines.index(rays[-1]) < len(lines) - 1 and lines[-1] == "python -u studies/batch_size.py --address 10.1.2.3:6379 --dataset cifar10 --storage /shared/r"


def test_slurm_script_outside_an_allocation_says_so(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    out = subprocess.run(["bash", SCRIPT, "studies/batch_size.py"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0 and "SLURM allocation" in out.stderr
