"""saxsdog --scheduler: the run's frames integrated on a Dask cluster."""

from gpusaxs.clients.saxsdog_parser import err
from gpusaxs.distributed import DaskPipeline, connect, dashboard_link


def dask_pipeline(args, dog, integrator):
    """--scheduler: a Dask client and a DaskPipeline that feeds the run's frames to it."""
    client = connect(args.scheduler)
    link = dashboard_link(client)
    if not args.silent:
        n = len(client.scheduler_info().get("workers", {}))
        err(
            f"Dask: {n} workers at {client.scheduler.address}"
            + (f", dashboard {link}" if link else "")
        )
    extras = dog.hdf5 is not None or args.svg
    pipe = DaskPipeline(
        client,
        integrator,
        frames_per_task=args.frames_per_task,
        batch_size=args.batch_size,
        write_chi="chi" in dog.formats,
        client_writer=(lambda i, o, q, I, e: dog.write(i, o, q, I, e, chi=False))
        if extras
        else None,
        on_done=dog.on_done,
        on_error=dog.on_error,
        backend=args.backend,
        threads=1 if args.scheduler.startswith("local:") else None,
    )
    return client, pipe
