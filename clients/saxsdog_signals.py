"""saxsdog's signal handling: Ctrl-C (SIGINT) and SIGTERM end a run gracefully."""

import signal
import threading


def install_signal_handlers():
    """Ctrl-C (SIGINT) and SIGTERM stop the run gracefully (KeyboardInterrupt in main).

    Installed explicitly: a shell starts background jobs with SIGINT ignored, and a watching
    saxsdog must still stop on it.  Returns a dict that receives the signal number.
    """
    caught = {}
    if threading.current_thread() is not threading.main_thread():
        return caught

    def handler(signum, frame):
        caught.setdefault("signum", signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return caught
