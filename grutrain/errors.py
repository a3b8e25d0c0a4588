"""The one exception type that carries a message meant for the user, and how a message shows a value."""


def escaped(text) -> str:
    """`text` with every character a terminal would act on shown as its escape: a newline as \\n, ESC as
    \\x1b, a bidi override as \\u202e (what str.isprintable calls unprintable), so a path or value echoed
    in a message keeps the message on one line and cannot move the cursor or recolour the terminal."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class GrutrainError(Exception):
    """A problem the user can fix (bad config, data or checkpoint).

    The library raises it; only the CLI turns it into a message on stderr and an exit code.
    The message should name the problem and the fix in one or two lines.
    """

    exit_code = 1


class Interrupted(GrutrainError):
    """SIGINT or SIGTERM arrived outside the training loop (reading data, building the model): nothing was
    saved. `message` says what was left on disk, where the default does not."""

    def __init__(self, signum: int, message: str | None = None):
        import signal

        self.signum, self.exit_code = signum, 128 + signum
        super().__init__(message or f"interrupted by {signal.Signals(signum).name} before a checkpoint was written; "
                         "no run was changed, start it again")


class TrainingInterrupted(GrutrainError):
    """SIGINT or SIGTERM arrived and a checkpoint of the current step was written.

    Exits with 128 + the signal number (130 for SIGINT, 143 for SIGTERM), as shells expect.
    """

    def __init__(self, signum: int, run_dir, step: int, during: str | None = None):
        import signal

        self.signum, self.run_dir, self.step = signum, run_dir, step
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        if during:  # after the last checkpoint, e.g. in the final evaluation: the checkpoints stand
            message = (f"interrupted by {name} during {during} (step {step}); the run's checkpoints are kept: "
                       f"finish it with --resume (run dir {escaped(run_dir)}), or evaluate its "
                       "checkpoints/best.pt with grutrain eval")
        else:
            message = (f"interrupted by {name} at step {step}; checkpoint saved, "
                       f"continue with --resume (run dir {escaped(run_dir)})")
        super().__init__(message)
