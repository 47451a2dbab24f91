"""-w: the current queue's folder watched with watchdog (close-after-write and rename events)."""

from gpusaxs.io.settle import FileSettler

from .feeder import make_handler


class Watcher:
    """-w: watch the current queue's folder with watchdog (close-after-write / rename events)."""

    def __init__(self, service):
        from watchdog.observers import Observer

        self.service = service
        self.settler = FileSettler(service.file_event, settle=0.5, check_complete=False)
        self.handler = make_handler(self.settler)
        self.observer = Observer()
        self.observer.start()
        self._watch = None

    def watch(self, directory):
        if self._watch is not None:
            self.observer.unschedule(self._watch)
        self._watch = self.observer.schedule(self.handler, directory, recursive=True)

    def stop(self):
        self.observer.stop()
        self.observer.join(timeout=5)
        self.settler.stop()
