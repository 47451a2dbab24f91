"""saxsdog -w: watch the input folders (recursively, new subfolders too) and offer every file
that appears or changes to the run (which waits until it is complete)."""

import os
from pathlib import Path

from gpusaxs.clients.saxsdog_state import is_temp


def start_watch(dog, roots):
    """Start watchdog observers on the input folders (recursive); return the observer."""
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    class Handler(FileSystemEventHandler):
        def __init__(self, root):
            self.root = root

        def _file(self, path):
            try:
                dog.offer(Path(path), self.root, check_complete=True)
            except Exception as exc:  # never kill the observer thread
                dog.report(path, exc)

        def on_created(self, event):
            if event.is_directory:
                # files created before the new folder was watched: scan it (dedupe after)
                for dp, dn, fn in os.walk(event.src_path):
                    dn[:] = [d for d in dn if not is_temp(d)]
                    for n in fn:
                        self._file(os.path.join(dp, n))
            else:
                self._file(event.src_path)

        def on_modified(self, event):
            if not event.is_directory:
                self._file(event.src_path)

        def on_closed(self, event):
            if not event.is_directory:
                self._file(event.src_path)

        def on_moved(self, event):
            if event.is_directory:
                self.on_created(
                    type("E", (), {"is_directory": True, "src_path": event.dest_path})()
                )
            else:
                self._file(event.dest_path)

    observer = Observer()
    for folder, root in roots:
        if folder.is_dir():
            observer.schedule(Handler(root), str(folder), recursive=True)
    observer.daemon = True
    observer.start()
    return observer
