"""Output guards: every command that writes declares its outputs through `check_output_file` /
`check_output_dir` before any work starts. An output that exists is refused with a line saying how to continue
(`--resume`) or replace it (`--overwrite`), an output that cannot be written (a directory where a file is meant, a
file where a directory is meant, a read-only place, the command's own input) is refused at once, and the files
themselves are written atomically (`edgevit.utils.writes`), so nothing that exists is lost."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Optional, Sequence

from ..errors import OutputError
from ..utils.inputs import is_within
from ..utils.locks import lock_output
from ..utils.writes import check_name_fits, unmarked_entries


def _writable_dir(path: Path, flag: str, shown: Optional[Path] = None) -> None:
    """The nearest existing ancestor of `path` must be a directory this process can create files in
    (`shown`: the output as the user gave it, for the message)."""
    shown = shown or path
    anc = path
    while not anc.exists():
        if anc.parent == anc:
            break
        anc = anc.parent
    if not anc.is_dir():
        raise OutputError(f"{flag} {shown}: {anc} is a file, not a directory")
    try:  # a real probe: os.access says yes to root on a read-only file system
        fd, probe = tempfile.mkstemp(prefix=".edgevit-probe-", dir=anc)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{flag} {shown}: cannot write in {anc} ({e.strerror})") from None


def check_output_file(path: str | os.PathLike, flag: str, overwrite: bool = False,
                      inputs: Iterable[Optional[str | os.PathLike]] = ()) -> Path:
    """Refuse, before any work, an output file that exists (unless `overwrite`), is a directory, is one of
    the command's `inputs`, lies where nothing can be written, or that another command is writing (the lock
    taken here is held until the command ends)."""
    p = Path(path)
    if str(path) in ("", "-"):
        raise OutputError(f"{flag}: expected a file name")
    check_name_fits(p, flag)
    if p.is_dir():
        raise OutputError(f"{flag} {p}: is a directory; expected a file name")
    _writable_dir(p.parent if p.parent != Path("") else Path("."), flag, shown=p)
    lock_output(p, flag, distinct=True)  # (also refuses a file that is another of the command's outputs)
    for src in inputs:
        if src and Path(src).exists() and p.exists() and os.path.samefile(src, p):
            raise OutputError(f"{flag} {p}: is the input {src}; choose another output file")
    if p.exists() and not overwrite:
        raise OutputError(f"{flag} {p}: exists; choose a new file name, or replace it with --overwrite")
    return p


def check_output_dir(path: str | os.PathLike, flag: str, overwrite: bool = False,
                     holds: Optional[Iterable[str]] = None, resume: bool = False,
                     inputs: Iterable[tuple[str, Optional[str | os.PathLike]]] = ()) -> Path:
    """Refuse, before any work, an output directory that holds something (or, with `holds`, one of those
    names: a run's checkpoints) unless `overwrite` (or, for a run, `resume`); that is a file, cannot be
    written, is (or lies inside) one of the command's input directories (`inputs`: (flag, path)), or that
    another command is writing (the lock taken here is held until the command ends).

    Without `holds`, `overwrite` replaces the whole directory: it is refused where that would delete what
    this package did not write (a directory without `replace_dir`'s marker that holds anything, the current
    directory or one above it) or one of the command's `inputs` (files too)."""
    p = Path(path)
    if str(path) == "":
        raise OutputError(f"{flag}: expected a directory name")
    check_name_fits(p, flag)
    inputs = list(inputs)
    for in_flag, src in inputs:
        if src and Path(src).is_dir() and is_within(p, src):
            same = os.path.realpath(p) == os.path.realpath(src)
            raise OutputError(f"{flag} {p}: is {'' if same else 'inside '}{in_flag} {src}; "
                              "choose a directory outside the data")
    if p.exists() and not p.is_dir():
        raise OutputError(f"{flag} {p}: is a file; expected a directory")
    main_rank = os.environ.get("RANK", "0") == "0"
    # under torchrun only rank 0 decides and locks: the others may start after it has begun writing the new
    # run (if rank 0 refuses, it exits and torchrun stops the whole group)
    _writable_dir(p, flag)
    if main_rank:
        lock_output(p, flag)
    if p.is_dir() and main_rank:
        present = sorted(e.name for e in p.iterdir() if (holds is None and not e.name.endswith(".lock"))
                         or (holds is not None and e.name in set(holds)))
        if present and not (overwrite or resume):
            shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
            if holds is None:
                how = "choose a new directory, or replace it with --overwrite"
            elif (p / "last.pth").is_file():
                how = "continue that run with --resume auto, or start it again with --overwrite"
            else:
                how = ("it has no last.pth to continue from: choose a new directory (its weights can start a new "
                       "run there), or start it again with --overwrite")
            raise OutputError(f"{flag} {p}: already holds {shown}; {how}")
        if present and overwrite and holds is None:
            _check_replaceable(p, flag, inputs)
    return p


def _check_replaceable(p: Path, flag: str, inputs) -> None:
    """`p` is to be replaced whole: refuse where that deletes what must stay (see check_output_dir)."""
    if is_within(os.getcwd(), p):
        same = os.path.realpath(p) == os.path.realpath(os.getcwd())
        raise OutputError(f"{flag} {p}: is the current directory{'' if same else ' or holds it'}; "
                          "--overwrite replaces the whole directory: choose a directory of its own")
    for in_flag, src in inputs:
        if src and Path(src).exists() and is_within(src, p):
            raise OutputError(f"{flag} {p}: holds {in_flag} {src}, which --overwrite would delete with the "
                              "whole directory: choose another output directory, or move the input out")
    foreign = unmarked_entries(p)
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise OutputError(f"{flag} {p}: holds {shown}, not written by edgevit; --overwrite replaces the whole "
                          "directory and would delete them: choose a new directory")


def check_export_output(args, inputs: Sequence, sidecar: bool = False):
    """`-o` of an export for `--format`: a file name with the runtime's suffix, and it and its companions (OpenVINO's
    and ncnn's .bin; `sidecar`: FILE.json) writable without replacing anything unless --overwrite; before any work.
    Returns the runtime's record."""
    from ..deploy import runtimes
    from ..errors import ConfigError

    rt = runtimes.by_format(args.format)
    check_output_file(args.output, "-o", overwrite=args.overwrite, inputs=inputs)
    if not str(args.output).lower().endswith(rt.suffixes):
        raise ConfigError(f"-o {args.output}: expected a {' or '.join(rt.suffixes)} file name for --format "
                          f"{args.format}")
    for companion in rt.files(args.output)[1:]:  # (written with -o, refused alike)
        check_output_file(companion, "-o", overwrite=args.overwrite, inputs=inputs)
    if sidecar:
        from ..deploy.metadata import sidecar_path

        check_output_file(sidecar_path(args.output), "-o's sidecar", overwrite=args.overwrite, inputs=inputs)
    rt.require(writing=True)
    return rt


def emit_results(args, doc: dict, table: str, csv_text: Optional[str] = None) -> None:
    """What a command that reports numbers gives: with `--json` and no file, the document on stdout; otherwise
    the table, and the document written to `--json FILE`; the rows to `--csv FILE` (both atomically)."""
    from ..utils.writes import print_json, write_json_atomic, write_text_atomic

    if args.json == "-":
        print_json(doc)
    else:
        print(table)
        if args.json:
            write_json_atomic(args.json, doc)
            print(f"wrote {args.json}", file=sys.stderr)
    if getattr(args, "csv", None) and csv_text is not None:
        write_text_atomic(args.csv, csv_text)
        print(f"wrote {args.csv}", file=sys.stderr)
