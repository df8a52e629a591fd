"""The live view of `anglerank train`: a progress bar over steps with the latest
step's metrics, one over prompts while the angle scoring runs, and one line per
epoch, evaluation and scoring (on stderr).

It only listens: :func:`anglerank.train.loop.train` calls it with each event.
"""

from __future__ import annotations

from rich.console import Console

__all__ = ["Display"]


def _fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


class Display:
    """Live rich view: a progress bar over steps with the latest step metrics, one line per epoch."""

    def __init__(self, quiet: bool, console: Console):
        self.quiet = quiet
        self.console = console  # the command's stderr console
        self.prog = None
        self.task = None
        self.score_task = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.prog is not None:
            self.prog.stop()
            self.prog = None

    def __call__(self, kind: str, rec: dict):
        if self.quiet:
            return
        if kind == "start":
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

            dropped = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in rec["dropped"].items() if v)
            self.console.print(f"[bold]anglerank train[/] {rec['run_dir']}: {rec['model']} "
                      f"({rec['dtype']}, {rec['device']}), "
                      f"{rec['n_prompts']:,} prompts" + (f" ({dropped} left out)" if dropped else "") +
                      (f", {rec['n_eval']:,} eval" if rec["n_eval"] else "") +
                      f", {rec['epochs']} epochs x {rec['steps_per_epoch']} steps", highlight=False)
            self.prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=self.console)
            self.prog.start()
            self.task = self.prog.add_task("train", total=rec["total_steps"], completed=rec["global_step"],
                                           unit="steps", info="")
        elif kind == "scoring" and self.prog:  # angle scoring with the live weights, before or between epochs
            if self.score_task is None:
                self.score_task = self.prog.add_task("score", total=rec["total"], unit="prompts", info="")
            self.prog.update(self.score_task, completed=rec["done"])
            if rec["done"] >= rec["total"]:
                self.prog.remove_task(self.score_task)
                self.score_task = None
        elif kind == "step" and self.prog:
            info = (f"ep {rec['epoch']} loss {rec['loss']:+.4f} reward {rec['reward_mean']:.3f} "
                    f"acc {rec['accuracy']:.2f} kl {rec['kl']:.4f} len {rec['completion_len_mean']:.0f} "
                    f"{rec['tokens_per_s']:.0f} tok/s")
            if "groups_kept" in rec:  # --filter-groups: informative groups of those rolled out
                info += f" kept {rec['groups_kept']}/{rec['groups_kept'] + rec['groups_dropped']}"
            self.prog.update(self.task, completed=rec["step"], info=info)
        elif kind == "epoch":
            self._print(f"epoch {rec['epoch']}: acc {_fmt(rec['accuracy'])}  angle {_fmt(rec['angle'], '.4f')}  "
                        f"mu {_fmt(rec['mu'], '.1f')} -> {_fmt(rec['mu_next'], '.1f')}  "
                        f"mean rank {_fmt(rec['subset_mean_rank'], '.1f')}  rollout {rec['rollout_s']:.1f}s  "
                        f"update {rec['update_s']:.1f}s  rescore {rec['rescore_s']:.1f}s"
                        + (f"  eval {rec['eval_accuracy']:.3f}" if rec["eval_accuracy"] is not None else ""))
        elif kind == "eval":
            self._print(f"eval after epoch {rec['epoch']}: accuracy {rec['eval_accuracy']:.3f} on {rec['eval_n']} "
                        f"({rec['eval_s']:.1f}s)")
        elif kind == "score":
            extra = f", spearman vs previous {rec['spearman_prev']:.3f}" if rec.get("spearman_prev") is not None else ""
            self._print(f"scored {rec['n']:,} prompts in {rec['seconds']:.1f}s{extra}")
        elif kind == "log":
            self._print(f"[yellow]{rec['message']}[/]")
        elif kind == "end":
            if self.prog:
                self.prog.stop()
                self.prog = None
            acc = rec["final_eval_accuracy"]
            self.console.print(f"[bold green]done[/]: {rec['steps']} steps in {rec['elapsed_s']:.0f}s"
                      + (f", final eval accuracy {acc:.3f}" if acc is not None else "")
                      + (f"; model in {rec['checkpoint']}" if rec["checkpoint"]
                         else "; no checkpoint (no training steps)"),
                      highlight=False)

    def _print(self, msg: str):
        (self.prog.console if self.prog else self.console).print(msg, highlight=False)
