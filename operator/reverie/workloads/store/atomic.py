"""Files on a local disk that appear whole or not at all: the one atomic writer.

A reader (the next phase, a resumed run, ``reverie report`` in another shell)
must see the old file or the new one, never a torn one, whatever moment a
crash or ``Ctrl-C`` picks.  On POSIX that is a temporary sibling, written and
flushed to disk, then ``os.replace`` onto the target; the temporary file is
removed when anything goes wrong before the rename.

Only the standard library is imported: the CLI's local state
(:mod:`reverie.local.state`) uses this at start-up.  A file in an object store
goes through :func:`reverie.workloads.store.store.write_text` instead (one PUT is
already whole or nothing), which calls this for a local store.  Folders
(generations, checkpoints) are assembled beside their target and renamed by
their own modules: what "complete" means differs for each.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replacing(target: Path) -> Iterator[Path]:
    """A temporary sibling of ``target`` to fill; on a clean exit it replaces ``target``, else it is removed.

    The name is unique per call (not only per process), so two threads writing
    the same file never share a temporary; the file is created with the
    process's usual permissions, like a plain ``open(target, "w")``.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_atomic(path: Path, data: str | bytes) -> None:
    """Replace ``path`` with ``data`` (text is UTF-8) so readers see the old or the new file, never a torn one."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with replacing(path) as tmp, open(tmp, "xb") as handle:
        handle.write(raw)
        handle.flush()
        os.fsync(handle.fileno())
