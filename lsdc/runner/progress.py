"""The live progress view of a study or a search: a Ray Tune callback."""
from __future__ import annotations

import math
import time

from ray import tune


def _fmt_s(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress(tune.Callback):
    """One concise status line: trials done / running / pending, best and latest ACC, ETA.

    Its state is only what was known when the experiment was created (it is pickled with
    the experiment and comes back on restore); everything else is read from ``trials``."""

    def __init__(self, study: str, total: int, done_outside: int, every_s: float = 15.0, quiet: bool = False,
                 epochs: int = 0):
        self.study, self.total, self.done_outside, self.epochs = study, total, done_outside, epochs
        self.every_s, self.quiet = every_s, quiet
        self._last = 0.0
        self._t0: float | None = None
        self._best = float("nan")
        self._latest = ""
        self._iter_s: list[float] = []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "acc" in result:
            self._best = result["acc"] if not self._best >= result["acc"] else self._best
            name, epochs = self._describe(trial)
            self._latest = f"{result['acc']:.3f} ({name}, ep {result.get('epoch', '?')}/{epochs})"
        if "time_this_iter_s" in result:
            self._iter_s.append(float(result["time_this_iter_s"]))
        if time.time() - self._last >= self.every_s:
            self._print(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._print(trials)

    def _describe(self, trial) -> tuple[str, int]:
        sp = trial.config.get("spec")
        if sp is None:  # a search trial: its config is the sampled parameters
            return trial.trial_id, self.epochs
        return f"{sp['variant']}/s{sp['trial']['seed']}", sp["trial"]["epochs"]

    def on_trial_error(self, iteration, trials, trial, **info):
        self._print(trials, note=f"trial {self._describe(trial)[0]} failed (will resume from its checkpoint "
                    f"if retries remain)")

    def line(self, trials) -> str:
        if self._t0 is None:
            self._t0 = time.time()
        st = [t.status for t in trials]
        done = st.count("TERMINATED") + self.done_outside
        running, pending, errored = st.count("RUNNING"), st.count("PENDING"), st.count("ERROR")
        remaining_epochs = 0
        for t in trials:
            if t.status in ("RUNNING", "PENDING"):
                ep = self._describe(t)[1]
                remaining_epochs += ep - int((t.last_result or {}).get("epoch", 0) or 0)
        per_epoch = sum(self._iter_s[-50:]) / len(self._iter_s[-50:]) if self._iter_s else float("nan")
        eta = remaining_epochs * per_epoch / max(running, 1)
        parts = [f"[{self.study}] {done}/{self.total} done", f"{running} running", f"{pending} pending"]
        if errored:
            parts.append(f"{errored} errored")
        acc = "" if math.isnan(self._best) else f" | best acc {self._best:.3f}, latest {self._latest}"
        return ", ".join(parts) + acc + f" | elapsed {_fmt_s(time.time() - self._t0)}, ETA {_fmt_s(eta)}"

    def _print(self, trials, note: str = "") -> None:
        self._last = time.time()
        if not self.quiet:
            print(self.line(trials) + (f" -- {note}" if note else ""), flush=True)
