"""The live progress view of a study or a search: a Ray Tune callback.

On a terminal (tqdm): one bar over all the epochs still to run (trials done / running /
pending, ETA from the recent epoch rate) and one bar per running trial's epochs. Elsewhere
(a log file, CI): a plain line every ``every_s`` seconds and when a trial ends. "best" is the
best *last-epoch* ACC of the finished trials, what the tables use; elapsed time counts from
``t_start`` (the start of the command). A failed trial prints the path of its ``error.txt``
(full traceback) and of its Tune trial directory (its stdout/stderr)."""
from __future__ import annotations

import math
import os
import sys
import time

from ray import tune


def _fmt_s(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def error_file(trial) -> str:
    """Where a failed trial's full traceback is kept: ``error.txt`` in its trial folder in the
    study's storage (Tune syncs it there from the driver's temporary copy)."""
    base = getattr(trial, "path", None) or getattr(trial, "local_path", None) or ""
    return os.path.join(str(base), "error.txt")


class Progress(tune.Callback):
    """Trials done / running / pending, a bar per running trial, best last-epoch ACC, ETA.

    Its state is only what was known when the experiment was created (it is pickled with
    the experiment and comes back on restore); everything else is read from ``trials``."""


    def __init__(self, study: str, total: int, done_outside: int, every_s: float = 15.0, quiet: bool = False,
                 epochs: int = 0, t_start: float | None = None, live: bool | None = None):
        self.study, self.total, self.done_outside, self.epochs = study, total, done_outside, epochs
        self.every_s, self.quiet = every_s, quiet
        self.t_start = time.time() if t_start is None else t_start   # wall clock: survives pickling
        self.live = live
        self._last = 0.0
        self._best = float("nan")
        self._latest = ""
        self._iter_s: list[float] = []
        self._bars: dict = {}
        self._main = None

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_bars"], d["_main"] = {}, None
        return d

    def __setstate__(self, d):
        # a callback unpickled from an experiment written by an older lsdc lacks the newer fields
        self.__dict__.update({"t_start": None, "live": None, "_bars": {}, "_main": None, **d})

    # ------------------------------------------------------------------ Tune's hooks
    def on_trial_result(self, iteration, trials, trial, result, **info):
        name, epochs = self._describe(trial)
        if "acc" in result:
            self._latest = f"{result['acc']:.3f} ({name}, ep {result.get('epoch', '?')}/{epochs})"
            if result.get("trial_done") and not self._best >= result["acc"]:
                self._best = result["acc"]          # the last epoch of a finished trial
        if "time_this_iter_s" in result:
            self._iter_s.append(float(result["time_this_iter_s"]))
        if self._is_live():
            self._draw(trials, trial, result)
        elif time.time() - self._last >= self.every_s:
            self._print(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self._is_live():
            self._close_bar(trial)
            self._draw(trials)
        else:
            self._print(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        note = (f"trial {self._describe(trial)[0]} failed; full traceback: {error_file(trial)} "
                f"(its output: {os.path.dirname(error_file(trial))}; Ray's logs: /tmp/ray/session_latest/logs)")
        if self._is_live():
            self._close_bar(trial)
            self._write(f"[{self.study}] {note}")
            self._draw(trials)
        else:
            self._print(trials, note=note)

    def on_experiment_end(self, trials, **info):
        for t in list(self._bars):
            self._close_bar(t)
        if self._main is not None:
            self._draw(trials)
            self._main.close()
            self._main = None
        if self._is_live():
            print(self.line(trials), flush=True)

    # ------------------------------------------------------------------ helpers
    def _is_live(self) -> bool:
        if self.quiet:
            return False
        if self.live is None:
            self.live = sys.stdout.isatty()
        return self.live

    def _describe(self, trial) -> tuple[str, int]:
        sp = trial.config.get("spec")
        if sp is None:  # a search trial: its config is the sampled parameters
            return trial.trial_id, self.epochs
        return f"{sp['variant']}/s{sp['trial']['seed']}", sp["trial"]["epochs"]

    def counts(self, trials) -> tuple[int, int, int, int]:
        st = [t.status for t in trials]
        return (st.count("TERMINATED") + self.done_outside, st.count("RUNNING"), st.count("PENDING"),
                st.count("ERROR"))

    def eta_s(self, trials) -> float:
        running = self.counts(trials)[1]
        remaining = 0
        for t in trials:
            if t.status in ("RUNNING", "PENDING"):
                remaining += self._describe(t)[1] - int((t.last_result or {}).get("epoch", 0) or 0)
        per_epoch = sum(self._iter_s[-50:]) / len(self._iter_s[-50:]) if self._iter_s else float("nan")
        return remaining * per_epoch / max(running, 1)

    def line(self, trials) -> str:
        done, running, pending, errored = self.counts(trials)
        parts = [f"[{self.study}] {done}/{self.total} done", f"{running} running", f"{pending} pending"]
        if errored:
            parts.append(f"{errored} failed")
        acc = "" if math.isnan(self._best) else f" | best last-epoch acc {self._best:.3f}"
        latest = f", latest {self._latest}" if self._latest else ""
        start = self.t_start if self.t_start is not None else time.time()
        return (", ".join(parts) + acc + latest + f" | elapsed {_fmt_s(time.time() - start)}, "
                f"ETA {_fmt_s(self.eta_s(trials))}")

    def _print(self, trials, note: str = "") -> None:
        self._last = time.time()
        if not self.quiet:
            print(self.line(trials) + (f" -- {note}" if note else ""), flush=True)

    def _write(self, text: str) -> None:
        from tqdm import tqdm
        tqdm.write(text)

    def _close_bar(self, trial) -> None:
        bar = self._bars.pop(trial, None) if not isinstance(trial, str) else None
        if bar is not None:
            bar.close()

    def _draw(self, trials, trial=None, result=None) -> None:
        from tqdm import tqdm
        done, running, pending, errored = self.counts(trials)
        if self._main is None:
            self._main = tqdm(total=self.total, initial=done, position=0, unit="trial", dynamic_ncols=True,
                              bar_format="{desc} {bar} {n_fmt}/{total_fmt} trials")
            self._main.start_t = self.t_start           # elapsed from the start of the command
        self._main.n = done
        best = "" if math.isnan(self._best) else f", best last-epoch acc {self._best:.3f}"
        self._main.set_description_str(f"[{self.study}] {done} done, {running} running, {pending} pending"
                                       f"{f', {errored} failed' if errored else ''}{best}", refresh=False)
        eta = self.eta_s(trials)
        self._main.bar_format = ("{desc} {bar} {n_fmt}/{total_fmt} trials [elapsed {elapsed}, ETA "
                                 + _fmt_s(eta) + "]")
        self._main.refresh()
        if trial is not None and result is not None and trial.status == "RUNNING" and not result.get("trial_done"):
            name, epochs = self._describe(trial)
            bar = self._bars.get(trial)
            if bar is None:
                bar = self._bars[trial] = tqdm(total=epochs, desc=f"  {name}", unit="ep", leave=False,
                                               dynamic_ncols=True,
                                               bar_format="{desc} {bar} ep {n_fmt}/{total_fmt}{postfix}")
            bar.n = int(result.get("epoch", 0) or 0)
            if "acc" in result:
                bar.set_postfix_str(f"acc {result['acc']:.3f}", refresh=False)
            bar.refresh()
        elif trial is not None and result is not None and result.get("trial_done"):
            self._close_bar(trial)
