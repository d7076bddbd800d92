"""One suite run in a fresh process, as tunebench.harness starts it:

    python -m tunebench.training.worker CONFIG RUN_DIR RESULT META

CONFIG is the run's composed config (YAML), RESULT where its result goes, META (JSON) what the harness records
about it. Not through the CLI: a run loads only the code it measures with, so a later change to the CLI, the
API, the harness or the planner leaves its result current (harness.stale_reason judges a result by the sources
its run loaded). Exit status: 0 ok, 1 the run failed (the result says why), 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import json
import signal
import sys


def interrupt_on_signals() -> None:
    """Ctrl-C and SIGTERM stop a run. The KeyboardInterrupt raised here can be lost (Python drops exceptions
    raised inside a __del__ during garbage collection), so the flag the loop checks each step is set too."""

    def handler(signum, frame):
        run = sys.modules.get("tunebench.training.run")
        if run is not None:
            if run.finishing.is_set():
                return  # the run is writing how it ended, and ends by itself
            run.stop_requested.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def main(argv: list[str]) -> int:
    interrupt_on_signals()
    config, run_dir, result_path, meta = argv
    # lazy, after the handler: torch and the loop load in seconds, and a signal meanwhile must still stop the run
    from tunebench.config import run_config
    from tunebench.errors import UserError
    from tunebench.quiet import quiet

    try:
        with quiet(False):  # building the config imports the methods, and with them peft and bitsandbytes
            cfg = run_config(config=config, out=run_dir)
            from tunebench.training.run import train

            result = train(cfg, run_dir, result_path, meta=json.loads(meta))
    except UserError as exc:
        print(f"tunebench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tunebench: interrupted", file=sys.stderr)
        return 130
    if result["status"] != "ok":
        print(f"tunebench: run {result['status']}: {result['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
