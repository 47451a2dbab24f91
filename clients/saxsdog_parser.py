"""saxsdog's command line: its options (``build_parser``, the ``--help`` text) and its one-line
messages on stderr (``err``)."""

import argparse
import sys

from gpusaxs.robust_curves import add_average_arguments

PROG = "saxsdog"

EPILOG = """\
options in detail:
  -c FILE        calibration file (JSON, section 3 of the specification) or a pyFAI
                 .poni file.  Required.
                   saxsdog -c cal.json data/      saxsdog -c detector.poni data/
  -t N           number of reader threads (image decoding); integration is one batched
                 engine call per group of frames, writing runs in its own thread.
                   saxsdog -c cal.json -t 4 data/
  -m             live plot window showing the latest curve (needs a display).
  -w             after the initial walk keep watching the folders, recursively and including
                 new subfolders; a file still being written is waited for (size stable and
                 decodable, at most --wait-timeout seconds after its last change), then
                 integrated once.  Stop with Ctrl-C.
                   saxsdog -c cal.json -w data/
  -r             resume: skip frames whose curve already exists and was made with the same
                 calibration (its calibration key, on the .chi title line or the HDF5 file's
                 calibration_key attribute); a curve made with another calibration, or
                 without a key, is redone.
                   saxsdog -c cal.json -r data/
  -o DIR         output folder (default ./out); the tree below each input folder is
                 mirrored there: data/a/x.tif -> DIR/a/x.chi.
                   saxsdog -c cal.json -o curves/ data/
  -i             write the curves in place, beside the images: data/a/x.tif -> data/a/x.chi.
  -s             also write an SVG plot of each curve (x.svg beside x.chi).
  -p             also write a PNG picture of each frame (x.png beside x.chi).
  -P             print where the time went (read, integrate, write) at the end.
  -S             silent: no progress bar, no summary (errors are still printed).
  -n             no initial walk: only files that appear later are integrated (with -w).
                   saxsdog -c cal.json -w -n data/
  -D             walk the input folders (and their top-level subfolders) in parallel.
  --format F     chi (default), hdf5, both (chi + hdf5), nexus or chi+nexus.
                 nexus: one NXazint1d file per image folder, <outfolder>/<foldername>.nxs
                 (curves, calibration, units, program, input files; docs/tools.md).
                   saxsdog -c cal.json --format nexus data/
                 hdf5: one HDF5 file per image folder,
                 <outfolder>/<foldername>.h5 with /entry/data/q (1/nm), I (frames x bins),
                 errors, frame_names and the calibration JSON in /entry/calibration.
                   saxsdog -c cal.json --format both data/
  --backend B    auto (default: GPU when present), numpy or cupy.
  --no-cache     do not use the on-disk matrix cache.  By default the integration matrix
                 of a calibration is built once and kept in $GPUSAXS_CACHE_DIR (default
                 $XDG_CACHE_HOME/gpusaxs or ~/.cache/gpusaxs, at most $GPUSAXS_CACHE_MAX_MB,
                 default 2048 MB, least recently used files removed first), so the next run
                 with the same calibration starts in a fraction of a second.
  --scheduler A  send the work to a Dask cluster (pip install "gpusaxs[dask]"): A is a
                 scheduler address, or local:N for N worker processes on this machine.
                 Each worker writes its .chi files; HDF5 files and -s plots are written
                 here from the curves the workers send back.  Not with -w, -p or -m.
                   saxsdog -c cal.json --scheduler tcp://head:8786 -o curves/ data/
                   saxsdog -c cal.json --scheduler local:2 data/
  --frames-per-task N  frames per Dask task (default 200).

Multi-frame files: EIGER master files (with their data files, bslz4 compressed), any HDF5
dataset named as FILE.h5::/path/to/data, multi-page TIFF and multi-frame EDF give one curve per
frame, <name>_<index>.chi (index from 0, 5 digits):
  saxsdog -c cal.json scan_master.h5        ->  out/scan_master_00000.chi, ...
The EIGER pixel_mask is applied on top of the calibration's mask.  A file named on the
command line that holds no readable frame is an error (exit status 1).

Bad files (truncated, not an image, wrong size) are reported on stderr with their name and
the reason; the others are still integrated.  Every output is written under a temporary name
and renamed, so no half-written file is ever visible.  Ctrl-C finishes and writes the frames
in flight, prints a summary and exits with status 130.

Errors found at the start stop the run before any frame is read: an output folder that
cannot be written (or is a file), a calibration that is invalid or too large to build (the
error names the field and the limit).  No image in the inputs (without -w): a warning, exit 1.

exit status: 0 all frames written, 1 some frames failed or no image found, 2 usage or
calibration error, 130 interrupted.
"""


def build_parser():
    """The argument parser (options of section 2.1 plus --format, --backend)."""
    p = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s [options] -c CALIBRATION FOLDER_OR_IMAGE [...]",
        description="Integrate folders of detector images to curves I(q), one .chi per image.",
        epilog=EPILOG,
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="FOLDER_OR_IMAGE",
        help="folders to walk (recursively) and/or image files (HDF5/EIGER master, "
        "FILE.h5::/dataset, multi-frame TIFF/EDF: one curve per frame)",
    )
    p.add_argument(
        "-c",
        "--calibration",
        metavar="FILE",
        required=True,
        help="calibration file (JSON) or pyFAI .poni file",
    )
    p.add_argument(
        "-t",
        "--threads",
        metavar="N",
        type=int,
        default=2,
        help="number of reader threads (default 2)",
    )
    p.add_argument(
        "-m", "--plotmonitor", action="store_true", help="show a live updating plot window"
    )
    p.add_argument(
        "-w",
        "--watch",
        action="store_true",
        help="watch the folders for new images (recursive, new subfolders too)",
    )
    p.add_argument(
        "-r", "--resume", action="store_true", help="skip frames whose curve already exists"
    )
    p.add_argument(
        "-o",
        "--out",
        metavar="OUTDIR",
        default="out",
        help="output folder, input tree mirrored below it (default ./out)",
    )
    p.add_argument("-i", "--inplace", action="store_true", help="write curves beside the images")
    p.add_argument("-s", "--svg", action="store_true", help="write an SVG plot per curve")
    p.add_argument("-p", "--png", action="store_true", help="write a PNG picture per frame")
    p.add_argument(
        "-P", "--profile", action="store_true", help="print a read/integrate/write time profile"
    )
    p.add_argument("-S", "--silent", action="store_true", help="less output")
    p.add_argument(
        "-n",
        "--nowalk",
        action="store_true",
        help="do not integrate files already there, only watch (with -w)",
    )
    p.add_argument("-D", "--walkdirinthreads", action="store_true", help="walk folders in parallel")
    p.add_argument(
        "--format",
        choices=("chi", "hdf5", "both", "nexus", "chi+nexus"),
        default="chi",
        help="curve output: chi (default), hdf5 (one HDF5 file per folder), both "
        "(chi + hdf5), nexus (one NXazint1d file per folder), chi+nexus",
    )
    p.add_argument(
        "--backend",
        choices=("auto", "numpy", "cupy"),
        default="auto",
        help="integration backend (default auto)",
    )
    p.add_argument(
        "--no-cache", action="store_true", help="do not read or write the on-disk matrix cache"
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="Dask scheduler (tcp://host:8786) or local:N worker processes",
    )
    p.add_argument(
        "--frames-per-task",
        metavar="N",
        type=int,
        default=200,
        help="with --scheduler: frames per Dask task (default 200)",
    )
    p.add_argument(
        "--batch-size",
        metavar="N",
        type=int,
        default=16,
        help="most frames per engine call (default 16)",
    )
    add_average_arguments(p)
    p.add_argument(
        "--wait-timeout",
        metavar="S",
        type=float,
        default=30.0,
        help="watch mode: seconds an incomplete file is waited for after its last "
        "change before it is reported (default 30)",
    )
    return p


def err(msg):
    """One line ``saxsdog: msg`` on stderr."""
    sys.stderr.write(f"{PROG}: {msg}\n")
    sys.stderr.flush()
